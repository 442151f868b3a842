"""Choosing a broker by URL: ``nbqueue.connect(url)`` and ``NBQUEUE_BROKER_URL``.

This sits above the core: it is the only place that knows which module serves which scheme.

A broker chosen by URL (``connect()``, ``NBQUEUE_BROKER_URL``, ``nbqueue worker --broker``) gets
one middleware stack, so that a notebook and a worker on another machine agree on where results
and live status live (``add_standard_middleware``): the default middleware, then ``AsyncIO``,
then, when there is a Redis store, ``Results`` with a ``RedisBackend`` and ``Live`` last. The
Redis store is the broker's own server for ``redis://`` URLs; for ``amqp://`` URLs it is the
``redis://`` URL in ``NBQUEUE_RESULTS_URL`` (which, when set, also wins for ``redis://``
brokers). An ``amqp://`` broker without ``NBQUEUE_RESULTS_URL`` stores no results and has no
live channel across processes. ``memory://`` keeps both in the process, and stores every
result by default (``store_results=True``).

Tracing is off unless asked for: ``NBQUEUE_TRACING=opentelemetry`` puts the ``OpenTelemetry``
middleware (the ``opentelemetry`` extra) first in the stack of every broker built from a URL
(``add_tracing``); ``nbqueue worker --tracing`` adds it to whichever broker the worker serves.

This is the composition root: the one module that names the servers (``_SCHEMES``) and builds
the standard middleware stack, for ``connect()``, the default broker, ``nbqueue worker --broker``
and ``%nbqueue connect``.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any
from urllib.parse import urlsplit

from ._opentelemetry import OpenTelemetry
from .broker import Broker, set_broker
from .brokers.stub import StubBroker
from .common import redact_url
from .errors import BrokerUnavailable
from .live import Live
from .live.retention import Retention
from .middleware import AsyncIO, Middleware
from .results import Results
from .results.backends.stub import StubBackend
from .services import StartCounter

__all__ = [
    "REDIS_SCHEMES",
    "RESULTS_URL_ENV",
    "TRACING_ENV",
    "add_standard_middleware",
    "add_tracing",
    "broker_from_url",
    "connect",
    "default_broker",
    "results_url_for",
    "start_counter_for",
    "tracing_from_environment",
]

#: The ``redis://`` URL where results and live status go when the broker is not Redis.
RESULTS_URL_ENV = "NBQUEUE_RESULTS_URL"

#: The URL that chooses the global broker.
BROKER_URL_ENV = "NBQUEUE_BROKER_URL"

#: The schemes of Redis URLs (a broker's own store; what NBQUEUE_RESULTS_URL accepts).
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")

#: Turns tracing on for brokers built from a URL: ``opentelemetry``; unset (or ``none``) is off.
TRACING_ENV = "NBQUEUE_TRACING"

_TRACING_OFF = ("", "none", "off", "0", "false", "no")

logger = logging.getLogger("nbqueue.connection")

#: scheme -> (module, class, extra): the one place that names the servers.
_SCHEMES: dict[str, tuple[str, str, str]] = {
    "redis": ("nbqueue._redis.broker", "RedisBroker", "redis"),
    "rediss": ("nbqueue._redis.broker", "RedisBroker", "redis"),
    "unix": ("nbqueue._redis.broker", "RedisBroker", "redis"),
    "redis+sentinel": ("nbqueue._redis.broker", "RedisBroker", "redis"),
    "rediss+sentinel": ("nbqueue._redis.broker", "RedisBroker", "redis"),
    "amqp": ("nbqueue._rabbitmq.broker", "RabbitmqBroker", "rabbitmq"),
    "amqps": ("nbqueue._rabbitmq.broker", "RabbitmqBroker", "rabbitmq"),
}


def _url_from_environment() -> str:
    return os.environ.get(BROKER_URL_ENV, "").strip() or "memory://"


def default_broker() -> Broker:
    """Return the broker ``get_broker()`` creates when nothing was set.

    ``NBQUEUE_BROKER_URL`` chooses it when set; otherwise it is the in-memory broker, which never
    touches the network.
    """
    return broker_from_url(_url_from_environment())


def broker_from_url(url: str, **options: Any) -> Broker:
    """Create a broker for ``url``, with the standard middleware, without making it global.

    Parameters:
      url: ``memory://``, ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
        ``rediss+sentinel://``, ``amqp://`` or ``amqps://``.
      options: passed to the broker's constructor.

    Raises:
      BrokerUnavailable: an unknown scheme, or the extra that serves it is not installed.
    """
    scheme = urlsplit(url).scheme.lower()
    broker: Broker
    if scheme == "memory":
        if options:
            raise BrokerUnavailable(
                f"The in-memory broker takes no options, got {sorted(options)}; "
                "create StubBroker(...) yourself for a custom one."
            )
        broker = StubBroker()
    elif scheme in _SCHEMES:
        module_name, class_name, extra = _SCHEMES[scheme]
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise BrokerUnavailable(
                f"{class_name} needs the {extra} extra: pip install 'nbqueue[{extra}]' ({e})."
            ) from None
        broker = getattr(module, class_name)(url=url, **options)
    else:
        raise BrokerUnavailable(
            f"Unknown broker URL scheme {scheme!r} in {redact_url(url)!r}; "
            "use memory://, redis://, rediss://, redis+sentinel://, amqp:// or amqps://."
        )
    add_standard_middleware(broker, url)
    return broker


def results_url_for(url: str) -> str | None:
    """Return the ``redis://`` URL where a broker at ``url`` keeps results and live status, or
    ``None`` when there is none (``memory://`` keeps them in the process)."""
    override = os.environ.get(RESULTS_URL_ENV, "").strip()
    if override:
        if urlsplit(override).scheme.lower() not in REDIS_SCHEMES:
            raise BrokerUnavailable(
                f"{RESULTS_URL_ENV} must be a redis:// (or redis+sentinel://) URL, got "
                f"{redact_url(override)!r}; "
                f"point it at the Redis server that keeps results."
            )
        return override
    if urlsplit(url).scheme.lower() in REDIS_SCHEMES:
        return url.split(";")[0]
    return None


def _results(url: str) -> Results | None:
    """A new Results middleware for a broker at ``url``, or ``None`` when it has no store."""
    if urlsplit(url).scheme.lower() == "memory":
        # The embedded broker stores results by default: in a notebook, a result that was
        # thrown away is the surprise. They live only in this process, expire after
        # result_ttl, and a Retention bounds how many finished jobs they keep.
        return Results(
            backend=StubBackend(retention=Retention.from_environment()), store_results=True
        )
    store = results_url_for(url)
    if store is None:
        return None
    from ._redis.results import RedisBackend  # the redis extra, needed only with a Redis store

    return Results(backend=RedisBackend(url=store))


def start_counter_for(redis: Any, prefix: str | None, timeout: float) -> StartCounter:
    """Return start counters on the Redis server ``redis``, for ``CrashLimit(redis=...)``
    (installed as ``nbqueue.middleware.crash_limit.redis_counter_factory``).

    Parameters:
      redis: a ``redis://`` URL, or a ``redis.Redis`` used as is and never closed.
      prefix: the start of every counter's key; ``None`` for ``nbqueue:__nbq__:crashes:``.
      timeout: the deadline of each call on a connection made from a URL, in seconds.

    Raises:
      ImportError: the redis package is not installed.
    """
    from ._redis.counters import RedisStartCounter  # the redis extra, needed only here

    return RedisStartCounter.at(redis, prefix=prefix, timeout=timeout)


def tracing_from_environment() -> bool:
    """Return whether ``NBQUEUE_TRACING`` asks for OpenTelemetry tracing.

    Raises:
      BrokerUnavailable: ``NBQUEUE_TRACING`` holds another value.
    """
    value = os.environ.get(TRACING_ENV, "").strip().lower()
    if value in _TRACING_OFF:
        return False
    if value in ("opentelemetry", "otel"):
        return True
    raise BrokerUnavailable(
        f"{TRACING_ENV} must be 'opentelemetry', got {value!r}; set it to opentelemetry to trace "
        f"messages, or unset it."
    )


def add_tracing(broker: Broker) -> bool:
    """Put an ``OpenTelemetry`` middleware first on ``broker``, unless it has one already.

    First, so that its span covers what the other middleware do around the actor and sees the
    messages that ``AgeLimit`` skips.

    Returns:
      Whether a middleware was added.

    Raises:
      BrokerUnavailable: opentelemetry-api is not installed (the error names the extra).
    """
    if any(isinstance(m, OpenTelemetry) for m in broker.middleware):
        return False
    try:
        middleware = OpenTelemetry()
    except ImportError as e:
        raise BrokerUnavailable(str(e)) from e
    first = broker.middleware[0] if broker.middleware else None
    broker.add_middleware(middleware, before=type(first) if first is not None else None)
    return True


def add_standard_middleware(broker: Broker, url: str) -> list[str]:
    """Give a broker built from ``url`` the middleware every URL-built broker has.

    Adds ``AsyncIO``, and with a results store (see the module docstring) ``Results`` and
    ``Live``, each unless the broker already has one of that type. ``Live`` comes last, so that
    it runs right around the actor (status, output, abort). With ``NBQUEUE_TRACING`` set,
    ``OpenTelemetry`` goes first (``add_tracing``).

    Returns:
      The names of the middleware added.

    Raises:
      BrokerUnavailable: ``NBQUEUE_RESULTS_URL`` is not a Redis URL, ``NBQUEUE_TRACING`` holds
        an unknown value, or it asks for tracing and opentelemetry-api is not installed.
    """
    tracing = tracing_from_environment()
    present = {type(m) for m in broker.middleware}
    has_store = urlsplit(url).scheme.lower() == "memory" or results_url_for(url) is not None
    added: list[Middleware] = []
    if AsyncIO not in present:
        added.append(AsyncIO())
    if has_store and Results not in present:
        results = _results(url)
        assert results is not None
        added.append(results)
    if has_store and Live not in present:
        added.append(Live())
    for middleware in added:
        broker.add_middleware(middleware)
    names = [type(m).__name__ for m in added]
    if tracing and add_tracing(broker):
        names.insert(0, OpenTelemetry.__name__)
    return names


def connect(url: str | None = None, **options: Any) -> Broker:
    """Create the broker for ``url`` and make it the global broker.

    Parameters:
      url: a broker URL; defaults to ``NBQUEUE_BROKER_URL``, then ``memory://``.
      options: passed to the broker's constructor.

    The broker gets the standard middleware of URL-built brokers (``add_standard_middleware``):
    with Redis, results and live status go to Redis, where ``nbqueue worker`` processes write
    them too.

    Returns:
      The new global broker.
    """
    url = url or _url_from_environment()
    broker = broker_from_url(url, **options)
    set_broker(broker)
    logger.info("Connected to %s.", redact_url(url))
    return broker
