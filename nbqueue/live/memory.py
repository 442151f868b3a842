"""The in-memory live channel: status records and events in this process, with instant wake-ups.

Used with a ``StubBackend`` (the embedded default). Readers block on a condition variable that
writers notify, so nothing polls. Each message keeps at most ``max_events`` events and expires
``ttl`` milliseconds after its last write.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from typing import Any

from ..common import current_millis
from .status import LiveEvent, StatusRecord
from .transport import (
    ABORTED_NOW,
    APPLIED,
    REQUESTED,
    TOO_LATE,
    AbortListener,
    Transport,
    Write,
    abort_outcome,
    decide,
)

__all__ = ["MemoryTransport", "memory_transport_for"]

#: How often expired messages are swept away, in seconds.
SWEEP_INTERVAL = 5.0

#: How long a log created only because someone waits for it lives, in seconds.
PLACEHOLDER_TTL = 60.0


class _Log:
    __slots__ = ("record", "events", "seq", "expires", "condition", "waiters")

    def __init__(self, max_events: int, expires: float) -> None:
        self.record: dict[str, Any] = {}
        self.events: deque[LiveEvent] = deque(maxlen=max_events)
        self.seq = 0
        self.expires = expires
        self.condition: threading.Condition | None = None
        self.waiters = 0


class MemoryTransport(Transport):
    """Keep status records and events in memory (see the module docstring).

    Parameters:
      max_events: how many events each message keeps; older ones are dropped.
    """

    def __init__(self, *, max_events: int = 1000) -> None:
        super().__init__(max_events=max_events)
        self._lock = threading.Lock()
        self._logs: dict[str, _Log] = {}
        self._listeners: list[AbortListener] = []
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL

    def __repr__(self) -> str:
        return f"MemoryTransport(messages={len(self._logs)})"

    def _get(self, message_id: str, now: float) -> _Log | None:
        """Return the live log of a message, dropping it if it expired. Hold the lock."""
        log = self._logs.get(message_id)
        if log is not None and log.expires <= now and not log.waiters:
            del self._logs[message_id]
            return None
        return log

    def _log(self, message_id: str, now: float, ttl: float) -> _Log:
        log = self._get(message_id, now)
        if log is None:
            log = self._logs[message_id] = _Log(self.max_events, now + ttl)
        return log

    @staticmethod
    def _append(log: _Log, kind: str, data: dict[str, Any], millis: int) -> None:
        log.seq += 1
        log.events.append(LiveEvent(log.seq, kind, data, millis))

    def write(self, writes: list[Write]) -> list[int]:
        results = []
        now, millis = time.monotonic(), current_millis()
        with self._lock:
            for w in writes:
                log = self._log(w.message_id, now, w.ttl / 1000)
                for kind, data in w.events:
                    self._append(log, kind, data, millis)
                record = log.record
                if w.progress is not None:
                    record["progress"] = w.progress
                result = APPLIED
                if w.mode:
                    result = decide(
                        w.mode,
                        record.get("status"),
                        record.get("attempt", 0),
                        bool(record.get("abort")),
                        w.attempt,
                    )
                    if result == APPLIED:
                        if w.backfill is not None and record.get("status") is None:
                            self._append(log, "status", w.backfill, millis)
                        record.update(w.fields)
                        for key, value in w.once.items():
                            record.setdefault(key, value)
                        if w.status_event is not None:
                            self._append(log, "status", w.status_event, millis)
                log.expires = now + w.ttl / 1000
                if log.condition is not None:
                    log.condition.notify_all()
                results.append(result)
            if now >= self._next_sweep:
                self._sweep(now)
        return results

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_INTERVAL
        for message_id in [k for k, log in self._logs.items() if log.expires <= now]:
            if not self._logs[message_id].waiters:
                del self._logs[message_id]

    def read(
        self, message_id: str, offset: int, *, block: float | None, count: int = 1000
    ) -> list[LiveEvent]:
        deadline = time.monotonic() + (block or 0)
        with self._lock:
            log = self._get(message_id, time.monotonic())
            if log is None and block:
                log = self._log(message_id, time.monotonic(), PLACEHOLDER_TTL)
            if log is None:
                return []
            if log.condition is None:
                log.condition = threading.Condition(self._lock)
            log.waiters += 1
            try:
                while log.seq <= offset:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return []
                    log.condition.wait(remaining)
                if not log.events:
                    return []
                start = max(0, offset + 1 - log.events[0].offset)
                return list(itertools.islice(log.events, start, start + count))
            finally:
                log.waiters -= 1

    def status(self, message_id: str) -> StatusRecord | None:
        with self._lock:
            log = self._get(message_id, time.monotonic())
            if log is None:
                return None
            fields = {**log.record, "seq": log.seq}
        return StatusRecord.from_fields(message_id, fields)

    def abort(self, message_id: str, *, ttl: int, now: int) -> int:
        with self._lock:
            log = self._log(message_id, time.monotonic(), ttl / 1000)
            record = log.record
            outcome = abort_outcome(record.get("status"))
            if outcome == TOO_LATE:
                return outcome
            record["abort"] = now
            if outcome == ABORTED_NOW:
                record.update(status="aborted", finished_at=now)
                self._append(log, "status", {"status": "aborted", "by": "abort()"}, now)
            if log.condition is not None:
                log.condition.notify_all()
            listeners = list(self._listeners) if outcome == REQUESTED else []
        for listener in listeners:
            listener.on_abort(message_id)
        return outcome

    def subscribe(self, listener: AbortListener) -> None:
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def unsubscribe(self, listener: AbortListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def flush(self) -> None:
        """Forget every message (for tests)."""
        with self._lock:
            self._logs.clear()


_transports: weakref.WeakKeyDictionary[Any, MemoryTransport] = weakref.WeakKeyDictionary()
_transports_lock = threading.Lock()


def memory_transport_for(owner: Any, *, max_events: int = 1000) -> MemoryTransport:
    """Return the memory transport that belongs to ``owner`` (a ``StubBackend``), creating it.

    Every ``Live`` middleware and reader that uses the same backend shares its transport, and
    the transport goes away with the backend.
    """
    with _transports_lock:
        transport = _transports.get(owner)
        if transport is None:
            transport = _transports[owner] = MemoryTransport(max_events=max_events)
        return transport
