"""The consuming side of the Redis broker: consumers, and the thread that keeps them alive.

Each ``RedisBroker`` that consumes runs one background thread (``BrokerService``). It
heartbeats and runs maintenance every ``min(1 s, heartbeat_timeout / 4)``, whatever the
traffic, and recovers the ack sets of workers whose heartbeat, by the server's clock, is older
than ``heartbeat_timeout``. Between ticks it blocks on the wake-up lists of the queues being
consumed (one connection for all of them) and wakes the matching consumers.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..broker import Consumer, MessageProxy
from ..common import q_name
from ..errors import BrokerError, DecodeError
from ..message import Message
from ._redis_keys import WAKE_CAP, WAKE_TTL

if TYPE_CHECKING:
    from .redis import RedisBroker

__all__ = ["BrokerService", "RedisConsumer"]

#: How many messages one fetch takes at most (Lua's unpack() has a limit).
FETCH_LIMIT = 500

#: How long a worker's queue registry lives without a fetch (ms): a week, like dead letters.
REGISTRY_TTL = 7 * 86400000

#: How many dead workers one tick reports, and how many expired dead letters it prunes.
DEAD_WORKERS_PER_TICK, PRUNE_PER_TICK = 64, 500

#: Longest error text stored with a dead letter.
MAX_ERROR_TEXT = 2000

Entry = tuple[str, bytes]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def redis_id(message: MessageProxy) -> str | None:
    """The id a fetched message is stored under (set at fetch; the option as a fallback)."""
    rid = getattr(message, "_redis_id", None)
    if rid is None:
        rid = message.options.get("redis_message_id")
    return rid if isinstance(rid, str) else None


class _Wakeup:
    __slots__ = ("generation", "condition")

    def __init__(self) -> None:
        self.generation = 0
        self.condition = threading.Condition()


class _AckBatcher:
    """Group commit for acks: concurrent ``ack`` calls share one script call.

    Every call returns once its id was acknowledged in Redis (or raises), so at-least-once
    holds; under load, the calls that arrive while one batch is in flight go in the next.
    """

    def __init__(self, service: BrokerService, queue: str) -> None:
        self.service = service
        self.queue = queue
        self.keys = service.broker.keys.ack(queue, service.broker.broker_id)
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._pending: list[str] = []
        self._flushing = False
        self._sent = 0  # the last batch taken by a flusher
        self._completed = 0  # the last batch finished
        self._failures: dict[int, BaseException] = {}

    def ack(self, rid: str) -> None:
        with self._lock:
            self._pending.append(rid)
            batch = self._sent + 1
            while self._completed < batch and self._flushing:
                self._done.wait()
            if self._completed >= batch:
                error = self._failures.get(batch)
                if error is not None:
                    raise error
                return
            ids, self._pending = self._pending, []
            self._flushing = True
            self._sent = batch
        error = None
        try:
            self._send(ids)
        except BaseException as e:
            error = e
        with self._lock:
            self._flushing = False
            self._completed = batch
            self._failures.pop(batch - 8, None)
            if error is not None:
                self._failures[batch] = error
            self._done.notify_all()
        if error is not None:
            raise error

    def _send(self, ids: list[str]) -> None:
        broker = self.service.broker
        with broker.connection.errors():
            lost = broker.scripts["ack"](keys=self.keys, args=[WAKE_CAP, WAKE_TTL, *ids])
        for rid in lost:
            broker.logger.warning(
                "Message %s on %r was acknowledged after this worker had been presumed dead "
                "(no heartbeat for %d ms) and it was requeued; it may have run twice.",
                _text(rid),
                self.queue,
                broker.heartbeat_timeout,
            )


class BrokerService:
    """Fetch, settle, heartbeat, recover and wake, for one ``RedisBroker``.

    The background thread runs while a consumer is open or a fetched message is unsettled;
    when nothing is left it signs off (leaves the heartbeats set) and exits.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.logger = logging.getLogger("nbqueue.RedisBroker.service")
        self.interval = min(1.0, broker.heartbeat_timeout / 4000)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._consumers: collections.Counter[str] = collections.Counter()
        self._held: dict[str, set[str]] = collections.defaultdict(set)
        self._stash: dict[str, list[Entry]] = collections.defaultdict(list)
        self._consumed: set[str] = set()
        self._listening: frozenset[str] = frozenset()
        self._wakeups: dict[str, _Wakeup] = collections.defaultdict(_Wakeup)
        self._ackers: dict[str, _AckBatcher] = {}
        self._quiet_until = 0.0

    # -- consumers ---------------------------------------------------------------------------

    def attach(self, queue: str) -> list[Entry]:
        """Register an open consumer of ``queue``; return messages stashed for it."""
        with self._lock:
            self._consumers[queue] += 1
            self._consumed.add(queue)
            stash = self._stash.pop(queue, [])
            self._ensure_thread()
            stale = queue not in self._listening
        if stale:
            self.interrupt()
        return stash

    def detach(self, queue: str, leftovers: list[Entry]) -> None:
        """Unregister a consumer; ``leftovers`` are fetched messages it could not requeue."""
        with self._lock:
            self._consumers[queue] -= 1
            if self._consumers[queue] <= 0:
                del self._consumers[queue]
            if leftovers:
                self._stash[queue].extend(leftovers)

    def hold(self, queue: str, rid: str) -> None:
        with self._lock:
            self._held[queue].add(rid)

    def release(self, queue: str, rids: Iterable[str]) -> None:
        with self._lock:
            held = self._held.get(queue)
            if held is not None:
                held.difference_update(rids)
                if not held:
                    del self._held[queue]

    def _needed(self) -> bool:
        return bool(self._consumers or self._held or self._stash) and not self._stopping

    def generation(self, queue: str) -> int:
        return self._wakeups[queue].generation

    def wait(self, queue: str, generation: int, timeout: float) -> None:
        """Block until a wake-up for ``queue`` arrives after ``generation``, or ``timeout`` (s)."""
        wakeup = self._wakeups[queue]
        with wakeup.condition:
            if wakeup.generation == generation:
                wakeup.condition.wait(timeout)

    def notify(self, queue: str) -> None:
        wakeup = self._wakeups[queue]
        with wakeup.condition:
            wakeup.generation += 1
            wakeup.condition.notify_all()

    def interrupt(self) -> None:
        """Make the thread's blocking wait return, to listen to a new queue or to stop."""
        broker = self.broker
        key = broker.keys.control(broker.broker_id)
        try:
            with broker.connection.errors():
                pipe = broker.client.pipeline(transaction=False)
                pipe.lpush(key, "1")
                pipe.pexpire(key, 10000)
                pipe.execute()
        except BrokerError:
            self.logger.debug("Could not interrupt the broker thread.", exc_info=True)

    # -- the Redis protocol ------------------------------------------------------------------

    def fetch(self, queue: str, count: int, keys: list[str]) -> list[Entry]:
        broker = self.broker
        with broker.connection.errors():
            reply = broker.scripts["fetch"](
                keys=keys, args=[count, broker.broker_id, queue, REGISTRY_TTL]
            )
        if reply[0]:
            broker.logger.warning(
                "Dropped %d ids on %r that had no message stored under them (written by a "
                "foreign producer, or flushed meanwhile).",
                int(reply[0]),
                queue,
            )
        return [(_text(rid), body) for rid, body in zip(reply[1::2], reply[2::2], strict=True)]

    def ack(self, queue: str, rid: str) -> None:
        with self._lock:
            acker = self._ackers.get(queue)
            if acker is None:
                acker = self._ackers[queue] = _AckBatcher(self, queue)
        acker.ack(rid)
        self.release(queue, (rid,))

    def nack(self, queue: str, rid: str, reason: str, error: str | None) -> None:
        broker = self.broker
        if error is not None:
            error = broker.connection.scrub(error[:MAX_ERROR_TEXT])
        why = json.dumps({"reason": reason, "error": error})
        with broker.connection.errors():
            broker.scripts["nack"](
                keys=broker.keys.nack(queue, broker.broker_id),
                args=[rid, why, WAKE_CAP, WAKE_TTL],
            )
        self.release(queue, (rid,))

    def requeue(self, queue: str, rids: list[str], worker: str | None = None) -> int:
        """Put fetched messages back; with ``worker``, recover that worker's whole ack set."""
        broker = self.broker
        mode = "all" if worker is not None else "ids"
        keys = broker.keys.requeue(queue, worker or broker.broker_id)
        with broker.connection.errors():
            moved = broker.scripts["requeue"](keys=keys, args=[WAKE_CAP, WAKE_TTL, mode, *rids])
        if worker is None:
            self.release(queue, rids)
        return int(moved)

    # -- the thread --------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name=f"nbqueue-redis-{self.broker.broker_id[:8]}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and sign off; fetched messages not yet handed out are requeued."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            stash, self._stash = dict(self._stash), collections.defaultdict(list)
        for queue, entries in stash.items():
            try:
                self.requeue(queue, [rid for rid, _ in entries])
            except BrokerError:
                self.logger.warning(
                    "Could not requeue %d fetched messages on %r; they are redelivered once "
                    "this worker's heartbeat times out.",
                    len(entries),
                    queue,
                )
        if thread is not None:
            self.interrupt()
            connection = self.broker.connection
            thread.join(connection.block_limit + (connection.socket_timeout or 5) + 1)
            try:
                with connection.errors():
                    self.broker.client.delete(self.broker.keys.control(self.broker.broker_id))
            except BrokerError:
                pass

    def _run(self) -> None:
        next_tick = 0.0
        while True:
            with self._lock:
                needed = self._needed()
            if not needed:
                self._sign_off()
                with self._lock:
                    if not self._needed():
                        self._thread = None
                        return
            try:
                now = time.monotonic()
                if now >= next_tick:
                    self.tick()
                    next_tick = now + self.interval
                self._listen(next_tick - time.monotonic())
            except Exception:
                now = time.monotonic()
                if now >= self._quiet_until:
                    self.logger.warning(
                        "The Redis broker's heartbeat failed; retrying every %.1f s.",
                        self.interval,
                        exc_info=True,
                    )
                    self._quiet_until = now + 30
                time.sleep(self.interval)
                next_tick = 0.0

    def _listen(self, timeout: float) -> None:
        broker = self.broker
        with self._lock:
            queues = sorted(self._consumers)
            self._listening = frozenset(queues)
        timeout = min(timeout, broker.connection.block_limit)
        if timeout < 0.002:
            return
        wake_keys = {broker.keys.wake(queue): queue for queue in queues}
        control = broker.keys.control(broker.broker_id)
        with broker.connection.errors():
            popped = broker.client.blpop([control, *wake_keys], timeout=round(timeout, 3))
        if popped:
            queue = wake_keys.get(_text(popped[0]))
            if queue is not None:
                self.notify(queue)

    def tick(self) -> None:
        """Heartbeat, prune expired dead letters, and recover workers that died."""
        broker = self.broker
        keys = broker.keys
        with self._lock:
            canonical = sorted({q_name(queue) for queue in self._consumed})
        script_keys = [keys.heartbeats]
        for queue in canonical:
            script_keys += keys.dead_letters(queue)
        with broker.connection.errors():
            dead = broker.scripts["tick"](
                keys=script_keys,
                args=[
                    broker.broker_id,
                    broker.heartbeat_timeout,
                    broker.dead_message_ttl,
                    DEAD_WORKERS_PER_TICK,
                    PRUNE_PER_TICK,
                ],
            )
        for worker in dead:
            self.recover(_text(worker))

    def recover(self, worker: str) -> int:
        """Requeue every message a dead worker held, then forget the worker.

        The queues come from the worker's registry (nbqueue workers), or from a SCAN of its ack
        sets (Dramatiq workers, which keep none), once per dead worker.

        Returns:
          How many messages went back to their queues.
        """
        broker = self.broker
        keys = broker.keys
        with broker.connection.errors():
            queues = {_text(q) for q in broker.client.smembers(keys.registry(worker))}
            if not queues:
                pattern = keys.ack_set_pattern(worker)
                for key in broker.client.scan_iter(match=pattern, count=1000):
                    queues.add(keys.queue_of_ack_set(worker, _text(key)))
        moved = sum(self.requeue(queue, [], worker=worker) for queue in sorted(queues))
        with broker.connection.errors():
            broker.scripts["bury"](
                keys=[keys.heartbeats, keys.registry(worker)],
                args=[worker, broker.heartbeat_timeout],
            )
        if moved:
            broker.logger.warning(
                "Worker %s stopped heartbeating for over %d ms; requeued the %d messages it held.",
                worker,
                broker.heartbeat_timeout,
                moved,
            )
        return moved

    def _sign_off(self) -> None:
        broker = self.broker
        keys = broker.keys
        with self._lock:
            consumed = sorted(self._consumed)
        ack_sets = [keys.ack_set(broker.broker_id, queue) for queue in consumed]
        try:
            with broker.connection.errors():
                broker.scripts["signoff"](
                    keys=[keys.heartbeats, keys.registry(broker.broker_id), *ack_sets],
                    args=[broker.broker_id],
                )
        except BrokerError:
            self.logger.debug("Could not sign off from the heartbeats set.", exc_info=True)


class RedisConsumer(Consumer):
    """Consumes one queue: fetches in batches, blocks on a wake-up list while idle.

    Closing requeues fetched messages that were never handed out. Messages handed out and not
    yet settled stay in this worker's ack set until they are acknowledged (through any consumer
    of the queue on this broker) or, if the process dies, recovered by another worker.
    """

    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(1, prefetch)
        self.timeout = timeout
        self.service = broker.service
        self._fetch_keys = broker.keys.fetch(queue_name, broker.broker_id)
        self._handed: set[str] = set()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._closed = False
        self._interrupted = False
        self._idle_since: float | None = None
        self._idle_generation = -1
        self._cache: collections.deque[Entry] = collections.deque(self.service.attach(queue_name))

    def __next__(self) -> MessageProxy | None:
        deadline = time.monotonic() + self.timeout / 1000
        service, queue = self.service, self.queue_name
        poll = self.broker.poll_interval / 1000
        while True:
            if self._interrupted:
                return None
            if self._cache:
                proxy = self._deliver(*self._cache.popleft())
                if proxy is not None:
                    return proxy
                continue
            with self._lock:
                room = self.prefetch - len(self._handed)
                if room <= 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._room.wait(remaining)
                    continue
            generation = service.generation(queue)
            since = self._idle_since
            if (
                since is None
                or generation != self._idle_generation
                or time.monotonic() - since >= poll
            ):
                entries = service.fetch(queue, min(room, FETCH_LIMIT), self._fetch_keys)
                if entries:
                    self._idle_since = None
                    self._cache.extend(entries)
                    continue
                self._idle_since, self._idle_generation = time.monotonic(), generation
                since = self._idle_since
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            pause = min(remaining, poll - (time.monotonic() - since))
            if pause > 0:
                service.wait(queue, generation, pause)

    def _deliver(self, rid: str, data: bytes) -> MessageProxy | None:
        try:
            message = Message.decode(data)
        except DecodeError as e:
            self.broker.logger.error(
                "Dead-lettered a message on %r that could not be decoded (%s): %.500s",
                self.queue_name,
                e.reason,
                e,
            )
            try:
                self.service.nack(self.queue_name, rid, e.reason, str(e))
            except BrokerError:
                self._cache.appendleft((rid, data))
                raise
            return None
        proxy = MessageProxy(message)
        proxy._redis_id = rid  # type: ignore[attr-defined]
        with self._lock:
            self._handed.add(rid)
        self.service.hold(self.queue_name, rid)
        return proxy

    def _settled(self, rids: Iterable[str]) -> None:
        with self._lock:
            self._handed.difference_update(rids)
            self._room.notify_all()

    def ack(self, message: MessageProxy) -> None:
        rid = redis_id(message)
        if rid is None:
            self.broker.logger.warning(
                "Cannot acknowledge %s: it has no redis_message_id.", message.message_id
            )
            return
        self.service.ack(self.queue_name, rid)
        self._settled((rid,))

    def nack(self, message: MessageProxy) -> None:
        rid = redis_id(message)
        if rid is None:
            self.broker.logger.warning(
                "Cannot dead-letter %s: it has no redis_message_id.", message.message_id
            )
            return
        exception = getattr(message, "_exception", None)
        error = None if exception is None else f"{type(exception).__name__}: {exception}"
        self.service.nack(self.queue_name, rid, message.dead_reason or "failed", error)
        self._settled((rid,))

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        rids = [rid for rid in (redis_id(m) for m in messages) if rid is not None]
        if not rids:
            return
        self.broker.logger.debug("Requeueing %d messages on %r.", len(rids), self.queue_name)
        self.service.requeue(self.queue_name, rids)
        self._settled(rids)

    def interrupt(self) -> None:
        self._interrupted = True
        with self._lock:
            self._room.notify_all()
        self.service.notify(self.queue_name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        leftovers = list(self._cache)
        self._cache.clear()
        if leftovers:
            try:
                self.service.requeue(self.queue_name, [rid for rid, _ in leftovers])
                leftovers = []
            except BrokerError:
                self.broker.logger.warning(
                    "Could not requeue %d prefetched messages on %r; the next consumer of the "
                    "queue takes them over.",
                    len(leftovers),
                    self.queue_name,
                )
        self.service.detach(self.queue_name, leftovers)
