"""Where a broker's live channel lives: asked of its result backend, else of the broker.

A ``StubBackend`` keeps it in this process (``memory.py``); a ``RedisBackend`` in Redis
(``nbqueue._redis.live``), under the RedisBroker's key namespace, or the backend's own with any
other broker (RabbitMQ, the in-memory broker). A RedisBroker without a Results middleware, or
with one whose server cannot carry the channel (a ``MemcachedBackend``), lends its own
connection. Each answers through ``nbqueue.services.Services.live_transport``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..results import Results
from .transport import Transport

if TYPE_CHECKING:
    from ..broker import Broker
    from ..results import ResultBackend

__all__ = ["ResultsCache", "find_results", "resolve_transport"]


def find_results(broker: Broker) -> Results | None:
    """Return the broker's first Results middleware, if any."""
    return next((m for m in broker.middleware if isinstance(m, Results)), None)


class ResultsCache:
    """The broker's Results middleware, looked up again only when its middleware list changes
    (as ``Broker._hooks_for`` does): the lookup would otherwise cost every send."""

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._results: Results | None = None

    def get(self, broker: Broker) -> Results | None:
        key = (id(broker.middleware), len(broker.middleware))
        if key != self._key:
            self._results, self._key = find_results(broker), key
        return self._results


def resolve_transport(
    broker: Broker,
    backend: ResultBackend | None = None,
    *,
    namespace: str | None = None,
    max_events: int = 1000,
) -> Transport | None:
    """Return the transport for ``broker``: from ``backend``, else its Results backend, else
    the broker's own server (also when the backend's server offers none).

    Parameters:
      namespace: the key namespace; defaults to the broker's (``live_namespace()``), then the
        backend's.

    Returns:
      The transport, or ``None`` when nothing on the broker can carry the live channel.
    """
    if backend is None:
        results = find_results(broker)
        backend = results.backend if results is not None else None
    namespace = namespace or broker.live_namespace()
    if backend is not None:
        transport = backend.live_transport(namespace=namespace, max_events=max_events)
        if transport is not None:
            return transport
    # No backend, or one whose server cannot carry the channel (memcached): the broker's own.
    return broker.live_transport(namespace=namespace, max_events=max_events)
