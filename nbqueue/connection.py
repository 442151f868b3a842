"""Choosing a broker by URL: ``nbqueue.connect(url)`` and ``NBQUEUE_BROKER_URL``.

This sits above the core: it is the only place that knows which module serves which scheme.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from typing import Any
from urllib.parse import urlsplit

from .broker import Broker, set_broker
from .common import redact_url
from .errors import BrokerUnavailable

__all__ = ["broker_from_url", "connect", "default_broker"]

logger = logging.getLogger("nbqueue.connection")

#: scheme -> (module, class, extra)
_SCHEMES: dict[str, tuple[str, str, str]] = {
    "redis": ("nbqueue.brokers.redis", "RedisBroker", "redis"),
    "rediss": ("nbqueue.brokers.redis", "RedisBroker", "redis"),
    "unix": ("nbqueue.brokers.redis", "RedisBroker", "redis"),
    "amqp": ("nbqueue.brokers.rabbitmq", "RabbitmqBroker", "rabbitmq"),
    "amqps": ("nbqueue.brokers.rabbitmq", "RabbitmqBroker", "rabbitmq"),
}


def default_broker() -> Broker:
    """Return the broker ``get_broker()`` creates when nothing was set.

    ``NBQUEUE_BROKER_URL`` chooses it when set; otherwise it is the in-memory broker, which never
    touches the network.
    """
    url = os.environ.get("NBQUEUE_BROKER_URL", "").strip()
    return broker_from_url(url or "memory://")


def _memory_broker() -> Broker:
    from .brokers.stub import StubBroker
    from .live import Live
    from .middleware import AsyncIO, default_middleware
    from .results import Results
    from .results.backends import StubBackend

    # The embedded broker stores results by default: in a notebook, a result that was thrown away
    # is the surprise, and they live only in this process and expire after result_ttl. Live comes
    # last, so that it runs right around the actor (status, output, abort).
    middleware = [m() for m in default_middleware]
    middleware += [AsyncIO(), Results(backend=StubBackend(), store_results=True), Live()]
    return StubBroker(middleware=middleware)


def broker_from_url(url: str, **options: Any) -> Broker:
    """Create a broker for ``url`` without making it global.

    Parameters:
      url: ``memory://``, ``redis://``, ``rediss://``, ``amqp://`` or ``amqps://``.
      options: passed to the broker's constructor.

    Raises:
      BrokerUnavailable: an unknown scheme, or the extra that serves it is not installed.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        if options:
            raise BrokerUnavailable(
                f"The in-memory broker takes no options, got {sorted(options)}; "
                "create StubBroker(...) yourself for a custom one."
            )
        return _memory_broker()
    if scheme not in _SCHEMES:
        raise BrokerUnavailable(
            f"Unknown broker URL scheme {scheme!r} in {redact_url(url)!r}; "
            "use memory://, redis://, rediss://, amqp:// or amqps://."
        )
    module_name, class_name, extra = _SCHEMES[scheme]
    if importlib.util.find_spec(module_name) is None:
        raise BrokerUnavailable(
            f"This version of nbqueue has no {class_name} yet; use memory:// for now."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BrokerUnavailable(
            f"{class_name} needs the {extra} extra: pip install 'nbqueue[{extra}]' ({e})."
        ) from None
    broker: Broker = getattr(module, class_name)(url=url, **options)
    return broker


def connect(url: str | None = None, **options: Any) -> Broker:
    """Create the broker for ``url`` and make it the global broker.

    Parameters:
      url: a broker URL; defaults to ``NBQUEUE_BROKER_URL``, then ``memory://``.
      options: passed to the broker's constructor.

    Returns:
      The new global broker.
    """
    url = url or os.environ.get("NBQUEUE_BROKER_URL", "").strip() or "memory://"
    broker = broker_from_url(url, **options)
    set_broker(broker)
    logger.info("Connected to %s.", redact_url(url))
    return broker
