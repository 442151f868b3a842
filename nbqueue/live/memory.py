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
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ..common import current_millis
from .retention import Job, Retention
from .status import FINISHED, LiveEvent, StatusRecord
from .transport import (
    ABORTED_NOW,
    APPLIED,
    REJECTED,
    REQUESTED,
    TOO_LATE,
    AbortListener,
    Recorder,
    Transport,
    Watch,
    Write,
    abort_outcome,
    decide,
)

__all__ = ["MemoryTransport", "memory_transport_for"]

#: How often expired messages are swept away, in seconds.
SWEEP_INTERVAL = 5.0

#: How long a log created only because someone waits for it lives, in seconds.
PLACEHOLDER_TTL = 60.0

#: How often finished jobs kept for a live handle are checked again, in seconds.
HELD_CHECK_INTERVAL = 5.0

#: The longest output tail handed to a recorder when a job finishes, in characters.
OUTPUT_TAIL = 65536


#: An event as a log keeps it: (offset, kind, data, time in milliseconds).
_Event = tuple[int, str, dict[str, Any], int]


class _Log:
    __slots__ = (
        "record",
        "events",
        "seq",
        "expires",
        "condition",
        "waiters",
        "handle",
        "finished",
        "text",
    )

    def __init__(self, expires: float) -> None:
        self.record: dict[str, Any] = {}
        # A list, trimmed by _append: most jobs keep three events, and a deque takes a block
        # of 64 slots (over 500 bytes) for any number; kept finished jobs number 10,000. Each
        # is an (offset, kind, data, time) tuple, made a LiveEvent only when read: most events
        # are never read, and a frozen dataclass costs ten times a tuple to build.
        self.events: list[_Event] = []
        self.seq = 0
        self.expires = expires
        self.condition: threading.Condition | None = None
        self.waiters = 0
        self.handle: weakref.ref[Any] | None = None  # the Message send() returned
        self.finished = False  # counted among the retention's finished jobs
        self.text = 0  # bytes of printed output, counted in the retention's text_bytes

    def held(self) -> bool:
        """Whether someone can still ask for this log: a reader waits, or the handle lives."""
        return bool(self.waiters) or (self.handle is not None and self.handle() is not None)


class MemoryTransport(Transport):
    """Keep status records and events in memory (see the module docstring).

    Parameters:
      max_events: how many events each message keeps; older ones are dropped.
      retention: the limits on finished messages (``nbqueue.live.retention``), shared with the
        result backend; ``None`` keeps each message until its TTL.
    """

    def __init__(self, *, max_events: int = 1000, retention: Retention | None = None) -> None:
        super().__init__(max_events=max_events)
        self._lock = threading.Lock()
        self._logs: dict[str, _Log] = {}
        self._listeners: list[AbortListener] = []
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        self.retention = retention
        #: finished messages, oldest first; and older ones kept because they are held
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._held: dict[str, None] = {}
        self._next_held_check = 0.0
        #: message id -> the watches waiting for its status to change
        self._watches: dict[str, list[_MemoryWatch]] = {}
        #: where status changes also go, for a history that outlives this process
        self.recorder: Recorder | None = None

    @property
    def keeps_history(self) -> bool:
        return self.recorder is not None

    def record_to(self, recorder: Recorder | None) -> bool:
        self.recorder = recorder
        return True

    def __repr__(self) -> str:
        return f"MemoryTransport(messages={len(self._logs)})"

    def _get(self, message_id: str, now: float) -> _Log | None:
        """Return the live log of a message, dropping it if it expired. Hold the lock."""
        log = self._logs.get(message_id)
        if log is not None and log.expires <= now and not log.waiters:
            self._forget(message_id, log)
            return None
        return log

    def _forget(self, message_id: str, log: _Log) -> None:
        """Drop a log and its retention counts. Hold the lock."""
        del self._logs[message_id]
        retention = self.retention
        if retention is not None:
            retention.text_bytes -= log.text
            if self._finished.pop(message_id, 0) is None:
                retention.kept -= 1
            elif self._held.pop(message_id, 0) is None:
                retention.held -= 1

    def _log(self, message_id: str, now: float, ttl: float) -> _Log:
        log = self._get(message_id, now)
        if log is None:
            log = self._logs[message_id] = _Log(now + ttl)
        return log

    def _append(self, log: _Log, kind: str, data: dict[str, Any], millis: int) -> None:
        seq = log.seq = log.seq + 1
        events = log.events
        events.append((seq, kind, data, millis))
        if len(events) > self.max_events:
            del events[0]

    def write(self, writes: list[Write]) -> list[int]:
        results = []
        now, millis = time.monotonic(), current_millis()
        retention = self.retention
        max_events = self.max_events
        released: list[Job] = []
        recorder = self.recorder
        notes: list[tuple[str, dict[str, Any], Any, str | None]] = []
        with self._lock:
            logs = self._logs
            for w in writes:
                message_id = w.message_id
                log = logs.get(message_id)
                if log is not None and log.expires <= now and not log.waiters:
                    self._forget(message_id, log)
                    log = None
                if log is None:
                    log = logs[message_id] = _Log(now + w.ttl / 1000)
                if w.handle is not None:
                    log.handle = weakref.ref(w.handle)
                events = log.events
                record = log.record
                result = APPLIED
                mode = w.mode
                status = record.get("status")
                if mode:
                    # decide(), inlined for a producer's first write and a worker's write
                    if mode == "worker" and status != "aborted":
                        if w.attempt < record.get("attempt", 0):
                            result = REJECTED
                    elif mode != "initial" or status is not None:
                        result = decide(
                            mode,
                            status,
                            record.get("attempt", 0),
                            bool(record.get("abort")),
                            w.attempt,
                        )
                    if result == APPLIED:  # what came before the events
                        if status is None and w.backfill is not None:
                            self._append(log, "status", w.backfill, millis)
                        if w.lead is not None:
                            self._append(log, "status", w.lead, millis)
                for kind, data in w.events:  # even when the status change is stale
                    self._append(log, kind, data, millis)
                    if retention is not None and kind == "output":
                        text = data.get("text")
                        if type(text) is str:
                            log.text += len(text)
                            retention.text_bytes += len(text)
                if w.progress is not None:
                    record["progress"] = w.progress
                if mode and result == APPLIED:
                    record.update(w.fields)
                    if w.once:
                        for key, value in w.once.items():
                            record.setdefault(key, value)
                    if w.status_event is not None:
                        seq = log.seq = log.seq + 1
                        events.append((seq, "status", w.status_event, millis))
                        if len(events) > max_events:
                            del events[0]
                    if self._watches:
                        self._changed(message_id)
                    if recorder is not None:
                        sent = w.history[0] if w.history is not None else None
                        if sent is None and mode == "initial":
                            sent = w.handle  # (write_status's Write: the Message sent)
                        notes.append(self._note(message_id, log, sent))
                log.expires = now + w.ttl / 1000
                if log.condition is not None:
                    log.condition.notify_all()
                results.append(result)
                if retention is not None and not log.finished and record.get("status") in FINISHED:
                    released += self._count_finished(message_id, log, now)
            if now >= self._next_sweep:
                self._sweep(now)
        if released:  # outside the lock: the result backend takes its own
            assert retention is not None
            retention.release_results(released)
        if recorder is not None:
            for note in notes:
                recorder.record(*note)
        return results

    @staticmethod
    def _note(
        message_id: str, log: _Log, message: Any
    ) -> tuple[str, dict[str, Any], Any, str | None]:
        """What a recorder is told of a status change. Hold the lock."""
        record = log.record
        output = None
        if record.get("status") in FINISHED:
            output = "".join(
                str(data["text"]) if "text" in data else str(data.get("value"))
                for _, kind, data, _ in log.events
                if kind == "output"
            )[-OUTPUT_TAIL:]
        return message_id, dict(record), message, output

    def write_status(
        self,
        message_id: str,
        ttl: int,
        mode: str,
        fields: dict[str, Any],
        status_event: dict[str, Any],
        *,
        attempt: int = 0,
        once: dict[str, Any] | None = None,
        backfill: dict[str, Any] | None = None,
        handle: Any = None,
        millis: int | None = None,
    ) -> int:
        # The three status changes of most messages, applied here without a Write: a
        # producer's first write (no log yet), and a worker's start or end of an attempt on a
        # live log that has a status, no abort, and no later attempt. The rest (and any
        # retention release) take write(), whose rules (decide()) these cases follow.
        now = time.monotonic()
        if millis is None:
            millis = current_millis()
        retention = self.retention
        released: list[Job] = []
        note = None
        with self._lock:
            log = self._logs.get(message_id)
            fast = False
            if log is None:
                if mode == "initial":
                    log = self._logs[message_id] = _Log(now + ttl / 1000)
                    if once:
                        fields.update(once)
                    log.record = fields
                    fast = True
            elif log.expires > now:
                record = log.record
                status = record.get("status")
                if (
                    status is not None
                    and status != "aborted"
                    and mode != "initial"
                    and not (mode == "start" and record.get("abort"))
                    and attempt >= record.get("attempt", 0)
                ):
                    record.update(fields)
                    if once:
                        for key, value in once.items():
                            record.setdefault(key, value)
                    fast = True
            if fast:
                assert log is not None
                if handle is not None:
                    log.handle = weakref.ref(handle)
                seq = log.seq = log.seq + 1
                events = log.events
                events.append((seq, "status", status_event, millis))
                if len(events) > self.max_events:
                    del events[0]
                log.expires = now + ttl / 1000
                if self._watches:
                    self._changed(message_id)
                if log.condition is not None:
                    log.condition.notify_all()
                if retention is not None and not log.finished and fields["status"] in FINISHED:
                    released = self._count_finished(message_id, log, now)
                if self.recorder is not None:
                    note = self._note(message_id, log, handle if mode == "initial" else None)
                if now >= self._next_sweep:
                    self._sweep(now)
        if fast:
            if released:  # outside the lock: the result backend takes its own
                assert retention is not None
                retention.release_results(released)
            if note is not None and self.recorder is not None:
                self.recorder.record(*note)
            return APPLIED
        return super().write_status(
            message_id,
            ttl,
            mode,
            fields,
            status_event,
            attempt=attempt,
            once=once,
            backfill=backfill,
            handle=handle,
            millis=millis,
        )

    def _count_finished(self, message_id: str, log: _Log, now: float) -> list[Job]:
        """Count a log that just got a final status among the retention's finished jobs;
        return the jobs released to make room (in batches). Hold the lock."""
        retention = self.retention
        assert retention is not None
        log.finished = True
        self._finished[message_id] = None
        retention.kept += 1
        limit = retention.max_jobs
        if (
            (limit is not None and retention.kept > limit + limit // 10)
            or retention.over_bytes()
            or (self._held and now >= self._next_held_check)
        ):
            return self._release(now)
        return []

    def _release(self, now: float) -> list[Job]:
        """Release finished messages past the retention's limits, oldest first, except those
        still held (moved aside, and checked again every ``HELD_CHECK_INTERVAL`` seconds).
        Return the released jobs, whose results the backend then drops. Hold the lock."""
        retention = self.retention
        assert retention is not None
        released: list[Job] = []

        def release(message_id: str, log: _Log) -> None:
            del self._logs[message_id]
            retention.text_bytes -= log.text
            record = log.record
            released.append(
                (message_id, str(record.get("queue_name", "")), str(record.get("actor_name", "")))
            )

        if self._held and now >= self._next_held_check:
            self._next_held_check = now + HELD_CHECK_INTERVAL
            for message_id in list(self._held):
                log = self._logs.get(message_id)
                if log is None or not log.held():
                    del self._held[message_id]
                    retention.held -= 1
                    if log is not None:
                        release(message_id, log)
        excess = 0 if retention.max_jobs is None else retention.kept - retention.max_jobs
        if retention.over_bytes():  # a tenth at a time: the results' bytes fall afterwards
            excess = max(excess, 1, retention.kept // 10)
        while excess > 0 and self._finished:
            excess -= 1
            message_id, _ = self._finished.popitem(last=False)
            retention.kept -= 1
            log = self._logs[message_id]
            if log.held():
                self._held[message_id] = None
                retention.held += 1
            else:
                release(message_id, log)
        retention.released += len(released)
        return released

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_INTERVAL
        for message_id in [k for k, log in self._logs.items() if log.expires <= now]:
            log = self._logs[message_id]
            if not log.waiters:
                self._forget(message_id, log)

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
                start = max(0, offset + 1 - log.events[0][0])
                return [
                    LiveEvent(*event)
                    for event in itertools.islice(log.events, start, start + count)
                ]
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
            note = None
            if outcome == ABORTED_NOW:
                record.update(status="aborted", finished_at=now)
                self._append(log, "status", {"status": "aborted", "by": "abort()"}, now)
                if self._watches:
                    self._changed(message_id)
                if self.recorder is not None:
                    note = self._note(message_id, log, None)
            if log.condition is not None:
                log.condition.notify_all()
            listeners = list(self._listeners) if outcome == REQUESTED else []
        if note is not None and self.recorder is not None:
            self.recorder.record(*note)
        for listener in listeners:
            listener.on_abort(message_id)
        return outcome

    def _changed(self, message_id: str) -> None:
        """Wake the watches of a message whose status changed. Hold the lock."""
        for watch in self._watches.get(message_id, ()):
            watch.changed.add(message_id)
            watch.condition.notify()

    def watch(self, cursors: Mapping[str, int]) -> Watch:
        return _MemoryWatch(self, cursors)

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
            self._finished.clear()
            self._held.clear()
            if self.retention is not None:
                self.retention.text_bytes = self.retention.kept = self.retention.held = 0


class _MemoryWatch(Watch):
    """Registered under each watched id; writers that change a watched status add the id to
    ``changed`` and notify ``condition`` (on the transport's lock), so one wait covers any
    number of messages."""

    def __init__(self, transport: MemoryTransport, cursors: Mapping[str, int]) -> None:
        self.transport = transport
        self.changed: set[str] = set()
        self.condition = threading.Condition(transport._lock)
        self.ids: set[str] = set()
        with transport._lock:
            for message_id, offset in cursors.items():
                transport._watches.setdefault(message_id, []).append(self)
                self.ids.add(message_id)
                log = transport._logs.get(message_id)
                if log is not None and log.seq > offset:
                    self.changed.add(message_id)  # changed between its read and now

    def wait(self, block: float) -> list[str]:
        with self.condition:
            if not self.changed and block > 0:
                self.condition.wait(block)
            changed = list(self.changed)
            self.changed.clear()
        return changed

    def _remove(self, message_id: str) -> None:
        watches = self.transport._watches.get(message_id)
        if watches is not None and self in watches:
            watches.remove(self)
            if not watches:
                del self.transport._watches[message_id]

    def discard(self, message_id: str) -> None:
        with self.transport._lock:
            if message_id in self.ids:
                self.ids.discard(message_id)
                self.changed.discard(message_id)
                self._remove(message_id)

    def close(self) -> None:
        with self.transport._lock:
            for message_id in self.ids:
                self._remove(message_id)
            self.ids.clear()


_transports: weakref.WeakKeyDictionary[Any, MemoryTransport] = weakref.WeakKeyDictionary()
_transports_lock = threading.Lock()


def memory_transport_for(
    owner: Any, *, max_events: int = 1000, retention: Retention | None = None
) -> MemoryTransport:
    """Return the memory transport that belongs to ``owner`` (a ``StubBackend``), creating it
    (with the owner's ``retention``) on first use.

    Every ``Live`` middleware and reader that uses the same backend shares its transport, and
    the transport goes away with the backend.
    """
    with _transports_lock:
        transport = _transports.get(owner)
        if transport is None:
            transport = _transports[owner] = MemoryTransport(
                max_events=max_events, retention=retention
            )
        return transport
