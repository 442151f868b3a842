"""The shared store of published notebook actors and of which workers can run what.

One store per broker, reached through the broker's own server: ``store_for(broker)`` asks the
broker for its ``code_store()`` (see ``nbqueue.services``):

* memory (``StubBroker``): dictionaries in this process (``MemoryCodeStore``);
* Redis (``RedisBroker``): keys under the broker's namespace (``nbqueue._redis.code_store``);
* RabbitMQ (``RabbitmqBroker``): queues, since RabbitMQ has no key-value store
  (``nbqueue._rabbitmq.code_store``).

The store keeps, per content hash, the signed envelope (``nbqueue.remote.signing``); an index of
the latest version per (queue, actor), used only to find the queues a worker must consume (the
index is unsigned: a forged entry can at most make a worker listen to a queue, never run code);
and capability registrations: which live workers can run which actor on which queue, where the
actor ``"*"`` means "any published notebook actor of that queue".
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from ..services import ANY_ACTOR, CodeStore, MemoryCodeStore, Published

if TYPE_CHECKING:
    from ..broker import Broker

__all__ = ["ANY_ACTOR", "CodeStore", "MemoryCodeStore", "Published", "set_store", "store_for"]

_stores: weakref.WeakKeyDictionary[Broker, CodeStore] = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def set_store(broker: Broker, store: CodeStore) -> None:
    """Use ``store`` for ``broker`` from now on (e.g. a RabbitMQ store with its own prefix)."""
    with _stores_lock:
        _stores[broker] = store


def store_for(broker: Broker) -> CodeStore:
    """Return the store of ``broker``: one set with ``set_store``, else the broker's own.

    Raises:
      TypeError: the broker's server offers no store (the in-memory, Redis and RabbitMQ
        brokers each have one).
    """
    with _stores_lock:
        store = _stores.get(broker)
    if store is None:
        store = broker.code_store()
    if store is None:
        raise TypeError(
            f"Notebook actors need a broker whose server can store code, and "
            f"{type(broker).__name__} offers none; connect with memory://, redis://... or "
            f"amqp://..."
        )
    return store
