"""The shared store of published notebook actors and of which workers can run what.

One store per broker, reached through the broker's own server (``store_for(broker)``):

* memory (``StubBroker``): dictionaries in this process;
* Redis (``RedisBroker``): keys under the broker's namespace, see ``redis_store``;
* RabbitMQ (``RabbitmqBroker``): queues, since RabbitMQ has no key-value store, see
  ``rabbitmq_store``.

The store keeps, per content hash, the signed envelope (``nbqueue.remote.signing``); an index of
the latest version per (queue, actor), used only to find the queues a worker must consume (the
index is unsigned: a forged entry can at most make a worker listen to a queue, never run code);
and capability registrations: which live workers can run which actor on which queue, where the
actor ``"*"`` means "any published notebook actor of that queue".
"""

from __future__ import annotations

import abc
import dataclasses
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..broker import Broker

__all__ = ["ANY_ACTOR", "CodeStore", "MemoryCodeStore", "Published", "set_store", "store_for"]

#: The capability of a worker that runs any published notebook actor of a queue.
ANY_ACTOR = "*"


@dataclasses.dataclass(frozen=True)
class Published:
    """An index entry: the latest version of an actor, by content hash (ms timestamps)."""

    queue_name: str
    actor_name: str
    code_hash: str
    published_at: int


class CodeStore(abc.ABC):
    """What the loader, the publisher and the capability registry need from a broker's server.

    Every method that talks to a server has a deadline and raises ``BrokerConnectionError``
    (or ``BrokerError``) when the server does not answer in time.
    """

    @abc.abstractmethod
    def put(self, envelope: bytes, entry: Published) -> None:
        """Store a signed envelope under ``entry.code_hash`` and make it the actor's latest."""

    @abc.abstractmethod
    def get(self, code_hash: str) -> bytes | None:
        """Return the envelope stored under ``code_hash``, or ``None`` when there is none."""

    @abc.abstractmethod
    def published(self) -> list[Published]:
        """Return the latest entry of every published actor."""

    @abc.abstractmethod
    def register(self, worker_id: str, capabilities: set[tuple[str, str]], ttl: int) -> None:
        """Record that ``worker_id`` can run these (queue, actor) pairs for ``ttl`` ms more.

        Called again before the ttl passes (the heartbeat); a worker that stops calling it stops
        counting once the ttl has passed.
        """

    @abc.abstractmethod
    def unregister(self, worker_id: str) -> None:
        """Forget every capability of ``worker_id`` now (a clean shutdown)."""

    @abc.abstractmethod
    def capable(self, queue_name: str, actor_names: Iterable[str], *, exclude: str) -> int:
        """Return how many live workers other than ``exclude`` registered one of these actors
        on ``queue_name``."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the store's connections."""


class MemoryCodeStore(CodeStore):
    """The store of the in-memory broker: shared by everything in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._code: dict[str, bytes] = {}
        self._latest: dict[tuple[str, str], Published] = {}
        self._capabilities: dict[tuple[str, str], dict[str, float]] = {}

    def put(self, envelope: bytes, entry: Published) -> None:
        with self._lock:
            self._code[entry.code_hash] = envelope
            self._latest[(entry.queue_name, entry.actor_name)] = entry

    def get(self, code_hash: str) -> bytes | None:
        with self._lock:
            return self._code.get(code_hash)

    def published(self) -> list[Published]:
        with self._lock:
            return list(self._latest.values())

    def register(self, worker_id: str, capabilities: set[tuple[str, str]], ttl: int) -> None:
        expiry = time.monotonic() + ttl / 1000
        with self._lock:
            for capability in capabilities:
                self._capabilities.setdefault(capability, {})[worker_id] = expiry

    def unregister(self, worker_id: str) -> None:
        with self._lock:
            for workers in self._capabilities.values():
                workers.pop(worker_id, None)

    def capable(self, queue_name: str, actor_names: Iterable[str], *, exclude: str) -> int:
        now = time.monotonic()
        live: set[str] = set()
        with self._lock:
            for actor_name in actor_names:
                workers = self._capabilities.get((queue_name, actor_name), {})
                live |= {w for w, expiry in workers.items() if expiry > now and w != exclude}
        return len(live)


_stores: weakref.WeakKeyDictionary[Broker, CodeStore] = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def set_store(broker: Broker, store: CodeStore) -> None:
    """Use ``store`` for ``broker`` from now on (e.g. a RabbitMQ store with its own prefix)."""
    with _stores_lock:
        _stores[broker] = store


def store_for(broker: Broker) -> CodeStore:
    """Return the store of ``broker``, made on first use from the broker's own connection.

    Raises:
      TypeError: the broker is of a kind that has no store (only the in-memory, Redis and
        RabbitMQ brokers have one).
    """
    with _stores_lock:
        store = _stores.get(broker)
        if store is not None:
            return store
        kind = type(broker).__name__
        kinds = {cls.__name__ for cls in type(broker).__mro__}  # no import of redis or pika
        if "StubBroker" in kinds:
            store = MemoryCodeStore()
        elif "RedisBroker" in kinds:
            from .redis_store import RedisCodeStore

            store = RedisCodeStore(broker)  # type: ignore[arg-type]
        elif "RabbitmqBroker" in kinds:
            from .rabbitmq_store import RabbitmqCodeStore

            store = RabbitmqCodeStore(broker)  # type: ignore[arg-type]
        else:
            raise TypeError(
                f"Notebook actors need a StubBroker, RedisBroker or RabbitmqBroker, not {kind}; "
                f"connect with memory://, redis://... or amqp://..."
            )
        _stores[broker] = store
        return store
