"""Where a broker's live channel lives: chosen from its result backend.

A ``StubBackend`` keeps it in this process (``memory.py``); a ``RedisBackend`` in Redis
(``redis.py``), under the RedisBroker's key namespace, or the backend's own with any other broker
(RabbitMQ, the in-memory broker). A RedisBroker without a Results middleware lends its own
connection.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

from .memory import memory_transport_for
from .transport import Transport

if TYPE_CHECKING:
    from ..broker import Broker
    from ..results import ResultBackend, Results

__all__ = ["ResultsCache", "find_results", "resolve_transport"]

_redis_lock = threading.Lock()


def _redis_transport(connection: Any, namespace: str, max_events: int) -> Transport:
    """Return the Redis transport of a connection and namespace, shared by every user of the
    connection in this process (kept on the connection, so it goes away with it)."""
    from .redis import RedisTransport

    with _redis_lock:
        by_namespace: dict[str, Transport] = connection.__dict__.setdefault("_nbq_live", {})
        transport = by_namespace.get(namespace)
        if transport is None:
            transport = by_namespace[namespace] = RedisTransport(
                connection, namespace, max_events=max_events
            )
        return transport


def find_results(broker: Broker) -> Results | None:
    """Return the broker's first Results middleware, if any."""
    from ..results import Results

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
    """Return the transport for ``broker``: from ``backend``, else its Results backend.

    A ``StubBackend`` gives the in-memory transport (this process); a ``RedisBackend`` gives
    the Redis transport, under the RedisBroker's namespace (or the backend's with any other
    broker). With no Results middleware, a ``RedisBroker``'s own connection serves.

    Returns:
      The transport, or ``None`` when nothing on the broker can carry the live channel.
    """
    from ..results.backends.stub import StubBackend

    if backend is None:
        results = find_results(broker)
        backend = results.backend if results is not None else None
    redis_backends = sys.modules.get("nbqueue.results.backends.redis")
    redis_brokers = sys.modules.get("nbqueue.brokers.redis")
    broker_namespace = None
    if redis_brokers is not None and isinstance(broker, redis_brokers.RedisBroker):
        broker_namespace = broker.namespace
    if isinstance(backend, StubBackend):
        return memory_transport_for(backend, max_events=max_events)
    if redis_backends is not None and isinstance(backend, redis_backends.RedisBackend):
        ns = namespace or broker_namespace or backend.namespace
        return _redis_transport(backend.connection, ns, max_events)
    if backend is None and broker_namespace is not None:
        connection = broker.connection  # type: ignore[attr-defined]
        return _redis_transport(connection, namespace or broker_namespace, max_events)
    return None
