"""The worker registry on RabbitMQ, on the notebook-actor store's connection and I/O thread.

RabbitMQ has no key-value store, so the registry is a queue, ``<prefix>.workers`` (the code
store's prefix, ``nbqueue`` unless given): durable, at most ``MAX_RECORDS`` messages (the oldest
dropped first). Each heartbeat publishes the worker's record (``WorkerInfo`` as JSON, with a
sequence number) as a message that expires after the record's ttl, one confirmed publish; a
clean stop publishes a tombstone. Nothing consumes the queue: a read takes every message with
``basic_get`` and puts them all back (``basic_nack`` with requeue), keeps the newest message of
each worker, and drops tombstones and records older than their ttl by this machine's clock
(RabbitMQ expires messages only at the head of a queue, so a short-lived record may wait
behind a longer-lived one). Keep the clocks of the machines in sync, as for Dramatiq's Redis
heartbeats.

Readers hold the messages while they read, so two reading at once would each see part of the
queue: a reader first takes ``<prefix>.workers.lock``, an exclusive queue (RabbitMQ refuses it
to a second connection, and drops it with its connection), and waits up to ``LOCK_WAIT``
seconds for it.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]

from ..common import current_millis
from ..errors import BrokerError
from ..services import WorkerInfo, WorkerRegistry, sort_workers
from .code_store import RabbitmqCodeStore

__all__ = ["LOCK_WAIT", "MAX_RECORDS", "RabbitmqWorkerRegistry"]

#: How many messages the registry queue keeps (each live worker holds about three).
MAX_RECORDS = 10000

#: How long a read waits for another reader to finish, in seconds.
LOCK_WAIT = 3.0

_RESOURCE_LOCKED = 405


class RabbitmqWorkerRegistry(WorkerRegistry):
    """The registry in ``store``'s queues and on its connection (see the module docstring)."""

    def __init__(self, store: RabbitmqCodeStore) -> None:
        self.store = store
        self.queue = f"{store.prefix}.workers"
        self.lock_queue = f"{store.prefix}.workers.lock"
        self._sequence = itertools.count(1)
        self._declared = 0  # the store connection generation the queue was declared on
        self._ttls: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"RabbitmqWorkerRegistry(queue={self.queue!r})"

    def _declare(self) -> None:
        if self._declared != self.store.generation:
            self.store.ops.queue_declare(
                self.queue, durable=True, arguments={"x-max-length": MAX_RECORDS}
            )
            self._declared = self.store.generation

    def _publish(self, record: dict[str, Any], ttl: int) -> None:
        body = json.dumps(record, separators=(",", ":")).encode()
        properties = pika.BasicProperties(content_type="application/json", expiration=str(ttl))

        def publish() -> None:
            self._declare()
            self.store.ops.basic_publish("", self.queue, body, properties, mandatory=True)

        self.store.call(publish)

    def beat(self, info: WorkerInfo) -> None:
        """Publish ``info``; see ``WorkerRegistry.beat``."""
        self._ttls[info.id] = info.ttl
        self._publish({**info.to_dict(), "seq": next(self._sequence)}, info.ttl)

    def remove(self, worker_id: str) -> None:
        """Publish a tombstone for ``worker_id``; see ``WorkerRegistry.remove``."""
        ttl = self._ttls.pop(worker_id, None)
        if ttl is None:
            return  # never published here: nothing to hide
        self._publish({"id": worker_id, "gone": True, "seq": next(self._sequence)}, ttl)

    def workers(self) -> list[WorkerInfo]:
        """Return the live workers; see ``WorkerRegistry.workers``."""
        newest: dict[str, dict[str, Any]] = {}
        for body in self.store.call(self._read):
            try:
                data = json.loads(body)
                worker_id, seq = str(data["id"]), int(data["seq"])
            except (ValueError, KeyError, TypeError):
                continue  # a message someone else wrote badly describes no worker of ours
            if worker_id not in newest or int(newest[worker_id]["seq"]) < seq:
                newest[worker_id] = data
        now = current_millis()
        found = []
        for data in newest.values():
            if data.get("gone"):
                continue
            try:
                info = WorkerInfo.from_dict(data)
            except (ValueError, KeyError, TypeError):
                continue
            if info.last_seen + info.ttl > now:
                found.append(info)
        return sort_workers(found)

    def _read(self) -> list[bytes]:
        store = self.store
        self._lock()
        try:
            if store.passive(self.queue) is None:
                return []
            return store.peek_all(self.queue)
        finally:
            store.ops.queue_delete(self.lock_queue)

    def _lock(self) -> None:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                self.store.ops.queue_declare(self.lock_queue, exclusive=True, auto_delete=True)
                return
            except pika.exceptions.ChannelClosedByBroker as e:
                if e.reply_code != _RESOURCE_LOCKED:
                    raise
                self.store.reopen()
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"Another process kept the worker registry's lock {self.lock_queue!r} for "
                    f"{LOCK_WAIT} s; retry, or delete that queue if its holder hangs."
                )
            self.store.pump(0.05)
