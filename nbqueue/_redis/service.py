"""The background side of the Redis broker: fetching, settling, heartbeats and recovery.

Each ``RedisBroker`` that consumes runs one background thread (``BrokerService``). It
heartbeats and runs maintenance every ``min(1 s, heartbeat_timeout / 4)``, whatever the
traffic, and recovers the ack sets of workers whose heartbeat, by the server's clock, is older
than ``heartbeat_timeout``: so a killed worker's messages are back within about
``heartbeat_timeout`` + 1 s, with no dependence on other commands being sent.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..common import q_name
from ..errors import BrokerError
from .acks import Acker
from .client import as_text
from .keys import WAKE_CAP, WAKE_TTL

if TYPE_CHECKING:
    from ..broker import MessageProxy
    from .broker import RedisBroker

__all__ = ["BrokerService", "Entry"]

#: How long a worker's queue registry lives without a fetch (ms): a week, like dead letters.
REGISTRY_TTL = 7 * 86400000

#: How many dead workers one tick reports, and how many expired dead letters it prunes.
DEAD_WORKERS_PER_TICK, PRUNE_PER_TICK = 64, 500

#: Longest error text stored with a dead letter.
MAX_ERROR_TEXT = 2000

#: How many messages of closed consumers are remembered, to be settled by id.
MAX_STRAYS = 10000
#: How many messages of lost fetches one fetch reclaims at most (the rest go with the next);
#: with a full fetch, well below what Lua's unpack() takes.
RECLAIM_LIMIT = 500

#: A fetched message: its redis message id and its encoded body, or the body's size in bytes
#: when it is above the broker's ``max_message_size`` (fetch.lua left it unread in Redis).
Entry = tuple[str, "bytes | int"]


def message_redis_id(message: MessageProxy) -> str | None:
    """The id a fetched message is stored under (set at fetch; the option as a fallback)."""
    rid = getattr(message, "_redis_id", None)
    if rid is None:
        rid = message.options.get("redis_message_id")
    return rid if isinstance(rid, str) else None


def dead_letter_details(message: MessageProxy) -> tuple[str, str | None]:
    """Why a message is dead-lettered, and the error text of what its actor raised."""
    exception = message.exception
    error = None if exception is None else f"{type(exception).__name__}: {exception}"
    return message.dead_reason or "failed", error


def unframe(blob: bytes | str) -> list[Entry]:
    """Split fetch.lua's frames: id length, id, body length, body (lengths as 10 digits)."""
    data = blob if isinstance(blob, bytes) else blob.encode()
    entries: list[Entry] = []
    pos, end = 0, len(data)
    while pos < end:
        size = int(data[pos : pos + 10])
        rid = data[pos + 10 : pos + 10 + size].decode()
        pos += 10 + size
        size = int(data[pos : pos + 10])
        entries.append((rid, data[pos + 10 : pos + 10 + size]))
        pos += 10 + size
    return entries


class BrokerService:
    """Fetch, settle, heartbeat and recover, for one ``RedisBroker``.

    The background thread runs while a consumer is open or a fetched message is unsettled;
    when nothing is left it signs off (leaves the heartbeats set) and exits.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.logger = logging.getLogger("nbqueue.broker.RedisBroker.service")
        self.interval = min(1.0, broker.heartbeat_timeout / 4000)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._consumers: collections.Counter[str] = collections.Counter()
        self._held: dict[str, set[str]] = collections.defaultdict(set)
        # queue -> ids to put back (and whether to empty the inbox first), retried each tick
        self._owed: dict[str, tuple[list[str], bool]] = {}
        self._consumed: set[str] = set()
        # queues whose last consumer lost its connection in a call: what the lost reply held is
        # reclaimed by the next fetch (see fetch.lua)
        self._suspect: set[str] = set()
        self._kick = threading.Event()
        #: redis id -> queue, for messages handed out by a consumer that has closed since
        self.strays: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.acker = Acker(self)
        self._quiet_until = 0.0

    # -- consumers ---------------------------------------------------------------------------

    def attach(self, queue: str) -> None:
        """Register an open consumer of ``queue`` (the thread runs while one is open)."""
        with self._lock:
            self._consumers[queue] += 1
            self._consumed.add(queue)
            self._ensure_thread()

    def detach(self, queue: str) -> None:
        """Unregister a consumer of ``queue``."""
        with self._lock:
            self._consumers[queue] -= 1
            if self._consumers[queue] <= 0:
                del self._consumers[queue]

    def give_back(self, queue: str, rids: list[str], *, leave: bool, now: bool = True) -> None:
        """Requeue messages of a closing consumer, now or, if Redis fails, from the thread.

        Parameters:
          leave: also leave the idle set and requeue what was handed to this worker's inbox.
          now: try at once; False leaves it to the thread (a consumer restarting after a lost
            connection should not wait for Redis to answer).
        """
        with self._lock:
            owed, left = self._owed.pop(queue, ([], False))
            self._owed[queue] = (owed + rids, left or leave)
            if not now:
                self._ensure_thread()
        if not now:
            self._kick.set()
            return
        try:
            self._settle_debts(queue)
        except BrokerError:
            self.logger.warning(
                "Could not requeue %d messages on %r; retrying until Redis answers (or, if this "
                "process ends first, they are redelivered after its heartbeat times out).",
                len(rids),
                queue,
                exc_info=True,
            )
            with self._lock:
                self._ensure_thread()

    def _settle_debts(self, queue: str) -> None:
        with self._lock:
            owed = self._owed.get(queue)
        if owed is None:
            return
        rids, leave = owed
        if leave:
            rids = rids + [rid for rid, _ in self.leave(queue)]
            with self._lock:
                self._owed[queue] = (rids, False)
        if rids:
            self.requeue(queue, rids)
        with self._lock:
            if self._owed.get(queue) == (rids, False):
                del self._owed[queue]

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

    def suspect(self, queue: str) -> None:
        """Note that a consumer of ``queue`` lost its connection during a call, whose reply
        may have carried messages: the next fetch reclaims them (see ``fetch``)."""
        with self._lock:
            self._suspect.add(queue)

    def _needed(self) -> bool:
        return bool(self._consumers or self._held or self._owed) and not self._stopping

    # -- the Redis protocol ------------------------------------------------------------------

    def fetch(self, queue: str, count: int, keys: list[str], *, idle_for: int = 0) -> list[Entry]:
        """Fetch up to ``count`` messages (and whatever was handed to this worker's inbox).

        Parameters:
          idle_for: when nothing is found, register as idle for this long (ms), so that the
            next enqueue hands its message straight to the inbox; 0 leaves the idle set.
        """
        broker = self.broker
        registration = broker.keys.idle_registration(broker.broker_id, queue)
        args: list[Any] = [count, broker.broker_id, queue, REGISTRY_TTL, int(idle_for > 0)]
        args += [idle_for, registration, broker.max_message_size or 0, 0]
        with self._lock:
            # Reclaimed only while no other consumer of the queue is open here (whose replies
            # may be on their way) and nothing owed to it is still being given back.
            reclaim = queue in self._suspect and self._consumers[queue] == 1
            reclaim = reclaim and queue not in self._owed
            if reclaim:
                args[-1] = RECLAIM_LIMIT
                args += self._held.get(queue, ())
        with broker.connection.errors():
            reply = broker.scripts["fetch"](keys=keys, args=args)
        if reclaim:
            if int(reply[3]) < RECLAIM_LIMIT:
                with self._lock:
                    self._suspect.discard(queue)
            if int(reply[3]):
                broker.logger.warning(
                    "Took back %d messages on %r that a fetch had taken for this worker when "
                    "its connection failed, before the reply arrived; they run now.",
                    int(reply[3]),
                    queue,
                )
        if reply[0]:
            broker.logger.warning(
                "Dropped %d ids on %r that had no message stored under them (written by a "
                "foreign producer, or flushed meanwhile).",
                int(reply[0]),
                queue,
            )
        entries = unframe(reply[1])
        oversized = reply[2]
        if oversized:
            entries += [
                (as_text(rid), int(size))
                for rid, size in zip(oversized[0::2], oversized[1::2], strict=True)
            ]
        return entries

    def leave(self, queue: str) -> list[Entry]:
        """Leave the idle set of ``queue``; return what was handed to this worker meanwhile."""
        broker = self.broker
        keys = [broker.keys.idle(queue), broker.keys.inbox(broker.broker_id, queue)]
        registration = broker.keys.idle_registration(broker.broker_id, queue)
        with broker.connection.errors():
            reply = broker.scripts["leave"](keys=keys, args=[registration])
        return [(as_text(rid), body) for rid, body in zip(reply[0::2], reply[1::2], strict=True)]

    def ack(self, queue: str, rid: str) -> None:
        """Acknowledge in the background (see ``Acker``); the message stays held until then."""
        if self.strays:
            self._forget_stray(rid)
        self.acker.submit(queue, rid)

    def add_strays(self, queue: str, rids: list[str]) -> None:
        """Remember messages a closed consumer handed out, to settle them by id later."""
        with self._lock:
            for rid in rids:
                self.strays[rid] = queue
            while len(self.strays) > MAX_STRAYS:
                self.strays.popitem(last=False)

    def _forget_stray(self, rid: str) -> str | None:
        with self._lock:
            return self.strays.pop(rid, None)

    def settle_stray(self, message: MessageProxy, *, ack: bool) -> None:
        """Settle a message its (closed) consumer no longer settles, if it is a stray."""
        rid = message_redis_id(message)
        queue = self._forget_stray(rid) if rid is not None else None
        if queue is None or rid is None:
            return
        if ack:
            self.acker.submit(queue, rid)
        else:
            self.nack(queue, rid, *dead_letter_details(message))

    def nack(self, queue: str, rid: str, reason: str, error: str | None) -> None:
        if self.strays:
            self._forget_stray(rid)
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
        """Stop the thread and sign off, after a last try at requeueing what is owed."""
        connection = self.broker.connection
        self.acker.close((connection.socket_timeout or 5) + 1)
        with self._lock:
            self._stopping = True
            thread = self._thread
            queues = list(self._owed)
        for queue in queues:
            try:
                self._settle_debts(queue)
            except BrokerError:
                self.logger.warning(
                    "Could not requeue messages on %r; they are redelivered once this worker's "
                    "heartbeat times out.",
                    queue,
                )
        if thread is not None:
            self._kick.set()
            thread.join(2 * (connection.socket_timeout or 5) + 1)

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
                with self._lock:
                    queues = list(self._owed)
                for queue in queues:
                    self._settle_debts(queue)
                self._kick.wait(max(0.0, next_tick - time.monotonic()))
                self._kick.clear()
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
            self.recover(as_text(worker))

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
            queues = {as_text(q) for q in broker.client.smembers(keys.registry(worker))}
            if queues:
                # First stop enqueues from handing the dead worker anything more.
                pipe = broker.client.pipeline(transaction=False)
                for queue in queues:
                    pipe.zrem(keys.idle(queue), keys.idle_registration(worker, queue))
                    pipe.delete(keys.inbox(worker, queue))
                pipe.execute()
            else:
                queues = self._scan_ack_sets(worker)
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

    def _scan_ack_sets(self, worker: str) -> set[str]:
        """Find a worker's ack sets with SCAN (O(keys), so heartbeating as it goes)."""
        broker = self.broker
        keys = broker.keys
        pattern = keys.ack_set_pattern(worker)
        queues: set[str] = set()
        cursor: Any = 0
        beat = time.monotonic()
        while True:
            cursor, found = broker.client.scan(cursor, match=pattern, count=1000)
            queues.update(keys.queue_of_ack_set(worker, as_text(key)) for key in found)
            if not int(cursor):
                return queues
            if time.monotonic() - beat > self.interval / 2:
                self._beat()
                beat = time.monotonic()

    def _beat(self) -> None:
        """Heartbeat alone (the tick script with no queues and no dead workers asked for)."""
        broker = self.broker
        broker.scripts["tick"](
            keys=[broker.keys.heartbeats],
            args=[broker.broker_id, broker.heartbeat_timeout, broker.dead_message_ttl, 0, 0],
        )

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
