"""The transport contract: where the live channel keeps status records and events.

A transport stores, per message, one status record and a bounded log of events, both expiring
with the message's result. Writers are the producer (``enqueued``/``delayed``) and the worker
(everything else); readers are any process that can reach the same store. ``memory.py`` keeps
them in this process, ``redis.py`` in Redis.

Status changes are guarded, because writers in different processes race:

* ``aborted`` is final: no status change applies after it;
* the producer's ``initial`` writes apply only to a message with no status yet, or one that is
  ``delayed`` or ``retrying`` (a delayed message coming due), never over a worker's write;
* a worker's write applies unless the record is at a later attempt; a ``start`` write also
  fails (returning ``ABORTED``) when an abort was requested, atomically with the check.

A network store may defer a worker's ``start`` write (``Transport.defers_start``): the worker
then only *takes* the message (``Transport.take``: one small script that checks the abort flag
and marks the record taken, so that ``abort()`` from then on asks the worker instead of marking
the message aborted), and the ``running`` status goes out with the attempt's last write when the
job ends within ``START_HOLD`` (the record and the events then show ``running`` and the end
together, in order), or on its own once that time has passed or the job first writes output.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .status import FINISHED, LiveEvent, StatusRecord

if TYPE_CHECKING:
    from ..history.base import History

__all__ = [
    "ABORTED",
    "ABORTED_NOW",
    "APPLIED",
    "REJECTED",
    "REQUESTED",
    "START_HOLD",
    "TOO_LATE",
    "Recorder",
    "WAIT_BLOCK",
    "AbortListener",
    "HeldWrite",
    "Transport",
    "Watch",
    "Write",
    "abort_outcome",
    "decide",
]

#: What a status change did: applied, rejected as stale, or refused because of an abort.
APPLIED, REJECTED, ABORTED = 1, 0, -1

#: What ``Transport.abort`` did: too late (finished), aborted at once (not running), or
#: requested from the worker running it.
TOO_LATE, ABORTED_NOW, REQUESTED = 0, 1, 2


#: How long a store that defers a worker's start (``Transport.defers_start``) keeps the
#: ``running`` write back, in seconds: a job that ends sooner writes it with its end, in one
#: write; a longer one shows ``running`` this long after it started.
START_HOLD = 0.05

#: The longest one ``Watch.wait`` blocks, in seconds: callers loop, so that deadlines and
#: Ctrl-C are honoured; a store may cap it lower (a socket timeout).
WAIT_BLOCK = 1.0


@dataclasses.dataclass
class Write:
    """One message's share of a batch of writes.

    The status change (if ``mode`` is set) is decided first; when it applies, the backfill and
    the deferred start (``lead``) are appended, then (whether it applies or not) the events in
    order, then the change is made and its status event appended last.

    Attributes:
      message_id: the message.
      ttl: how long the record and events live after this write, in milliseconds.
      events: ``(kind, data)`` pairs to append.
      progress: the latest progress data, kept in the record.
      mode: ``""`` (no status change), ``"initial"``, ``"start"`` or ``"worker"``.
      attempt: the attempt number of a worker's write.
      fields: record fields set when the status change applies (``status`` among them).
      once: record fields set only if the record does not have them yet.
      status_event: the data of the status event appended when the change applies.
      backfill: the data of a status event appended first when the change applies to a record
        with no status yet: a worker that starts a message before the producer's (batched)
        ``enqueued`` write landed records ``enqueued`` itself, so every log starts alike.
      handle: the ``Message`` that ``send()`` returned, on a producer's write to a store that
        bounds what it keeps (memory): it keeps the message's records while it lives (weakly).
      lead: the status event of a deferred start (``Transport.defers_start``) that goes out with
        this write, the attempt's last: appended after ``backfill`` and before the events when
        the change applies.
      history: ``(message, notebook, kernel)``, the ``Message`` sent and where from
        (``nbqueue.history.origin()``), on a producer's first write to a store that keeps a
        job history (``Transport.keeps_history``): the history stores its JSON, to send it
        again.
    """

    message_id: str
    ttl: int
    events: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    progress: dict[str, Any] | None = None
    mode: str = ""
    attempt: int = 0
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    once: dict[str, Any] = dataclasses.field(default_factory=dict)
    status_event: dict[str, Any] | None = None
    backfill: dict[str, Any] | None = None
    lead: dict[str, Any] | None = None
    handle: Any = None
    history: Any = None


class Recorder(Protocol):
    """What a memory store hands every status change to, for a history kept elsewhere (the
    embedded broker's SQLite history, ``nbqueue.history.sqlite``). Called outside the store's
    lock; it must not block (it queues)."""

    def record(
        self, message_id: str, fields: dict[str, Any], message: Any, output: str | None
    ) -> None:
        """Note that ``message_id``'s status record is now ``fields``.

        Parameters:
          message: the ``Message`` sent, on its first write, else ``None``.
          output: the tail of its output, once it finished, else ``None``.
        """


class HeldWrite:
    """A message's last write of an attempt, held so that it goes out with the message's result.

    Whoever claims it first writes it: the result store, in the round trip that stores the
    result, or the publisher, within a tick, when no result is stored. A result store that finds
    it claimed by the publisher waits (``wait``) until it was written (``finish``) before it
    stores the result, so the result is never visible before the status and output written
    before it. (A worker's deferred start is held the same way.)
    """

    __slots__ = ("write", "_claimed", "_finished", "_event", "_lock")

    def __init__(self, write: Write) -> None:
        self.write = write
        self._claimed = False
        self._finished = False
        # made only for a waiter: most held writes are claimed and finished with nobody waiting,
        # and an Event (a Condition and its lock) per message cost more than the rest
        self._event: threading.Event | None = None
        self._lock = threading.Lock()

    def claim(self) -> bool:
        """Take the write; return False when someone else took it first."""
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def finish(self) -> None:
        """Say that whoever claimed the write has made it (or given up on it)."""
        with self._lock:
            self._finished = True
            event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``finish``; return whether it came."""
        with self._lock:
            if self._finished:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)


def decide(mode: str, status: str | None, attempt: int, abort: bool, new_attempt: int) -> int:
    """Return whether a status change applies (``APPLIED``, ``REJECTED`` or ``ABORTED``).

    ``redis.py`` runs the same rules in Lua; keep the two in step.
    """
    if mode == "start" and abort:
        return ABORTED
    if status == "aborted":
        return REJECTED
    if mode == "initial":
        if status is None or status in ("delayed", "retrying"):
            return APPLIED
        return REJECTED
    return APPLIED if new_attempt >= attempt else REJECTED


def abort_outcome(status: str | None) -> int:
    """Return what ``abort()`` does to a message in ``status`` (``TOO_LATE``...)."""
    if status in FINISHED:
        return TOO_LATE
    if status == "running":
        return REQUESTED
    return ABORTED_NOW


class AbortListener(Protocol):
    """What a worker registers with a transport to hear about aborts of running messages."""

    def on_abort(self, message_id: str) -> None:
        """Abort ``message_id`` if it runs here; called from any thread, more than once."""

    def running_ids(self) -> list[str]:
        """Return the ids of the messages running here (transports may poll their flags)."""


class Watch(abc.ABC):
    """Waits for the first of many messages to change status; ``Transport.watch`` makes one.

    Meant for one reader thread. A watch holds what its store needs to block on every watched
    message at once (a condition in memory, ``XREAD BLOCK`` over many streams on Redis); close
    it when done.
    """

    @abc.abstractmethod
    def wait(self, block: float) -> list[str]:
        """Return the ids of watched messages whose status may have changed since the watch
        was made or the previous call, waiting up to ``block`` seconds for one.

        Returning early with nothing is allowed; an id may come back without a change (the
        caller reads the record to know).
        """

    @abc.abstractmethod
    def discard(self, message_id: str) -> None:
        """Stop watching ``message_id`` (it finished)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release what the watch holds (threads, connections)."""


class _ReadWatch(Watch):
    """The fallback for stores without a watch of their own: blocks on the events of the first
    watched message and reports every watched message each time it wakes, so the others are
    noticed at the latest ``block`` seconds after they change."""

    def __init__(self, transport: Transport, cursors: Mapping[str, int]) -> None:
        self.transport = transport
        self.cursors = dict(cursors)

    def wait(self, block: float) -> list[str]:
        if not self.cursors:
            return []
        first = next(iter(self.cursors))
        events = self.transport.read(first, self.cursors[first], block=block)
        if events:
            self.cursors[first] = events[-1].offset
        return list(self.cursors)

    def discard(self, message_id: str) -> None:
        self.cursors.pop(message_id, None)


class Transport(abc.ABC):
    """Base class for live-channel stores.

    Attributes:
      buffered: whether producers should batch their writes through a publisher thread (a
        network store) rather than write inline (memory).
      defers_start: whether a worker takes a message with ``take()`` and defers its ``start``
        write (see the module docstring): a store where the write costs a round trip and far
        more work on the server than the take.
      max_events: how many events each message keeps; older ones are dropped.
    """

    buffered = False
    defers_start = False

    def __init__(self, *, max_events: int) -> None:
        self.max_events = max_events

    @property
    def keeps_history(self) -> bool:
        """Whether producers should pass the message in their first write (``Write.history``),
        because this store keeps a job history."""
        return False

    def record_to(self, recorder: Recorder | None) -> bool:
        """Hand every status change to ``recorder`` (``None``: stop); return False when this
        store keeps its own history (or none) and takes no recorder."""
        return False

    def history(self) -> History | None:
        """Return the job history this store keeps itself, or ``None`` (memory: its recorder
        keeps it, if any)."""
        return None

    @abc.abstractmethod
    def write(self, writes: list[Write]) -> list[int]:
        """Apply a batch of writes, in order; return ``APPLIED``/``REJECTED``/``ABORTED`` for
        each (``APPLIED`` for writes without a status change)."""

    @abc.abstractmethod
    def read(
        self, message_id: str, offset: int, *, block: float | None, count: int = 1000
    ) -> list[LiveEvent]:
        """Return up to ``count`` events after ``offset``, oldest first.

        Parameters:
          block: wait up to this many seconds for an event when there is none (``None``: do
            not wait). Returning early with nothing is allowed.
        """

    @abc.abstractmethod
    def status(self, message_id: str) -> StatusRecord | None:
        """Return the status record of a message, or ``None`` when there is none."""

    @abc.abstractmethod
    def abort(self, message_id: str, *, ttl: int, now: int) -> int:
        """Request an abort: mark the record, and abort at once unless it runs.

        Returns:
          ``TOO_LATE``, ``ABORTED_NOW`` or ``REQUESTED`` (a worker will interrupt it).
        """

    @abc.abstractmethod
    def subscribe(self, listener: AbortListener) -> None:
        """Deliver abort requests for running messages to ``listener`` until unsubscribed."""

    @abc.abstractmethod
    def unsubscribe(self, listener: AbortListener) -> None:
        """Stop delivering abort requests to ``listener``."""

    def statuses(self, message_ids: Sequence[str]) -> list[StatusRecord | None]:
        """Return the status records of several messages, in order (``None`` for none).

        Stores that can read many in one round trip do.
        """
        return [self.status(message_id) for message_id in message_ids]

    def watch(self, cursors: Mapping[str, int]) -> Watch:
        """Return a watch that wakes when any of these messages changes status.

        Parameters:
          cursors: message id -> the offset of its record when read (``StatusRecord.offset``);
            a change after it wakes the watch.
        """
        return _ReadWatch(self, cursors)

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
        """Apply one status change with no events or progress: a ``Write`` of these fields,
        written alone, the change the ``Live`` middleware makes three times per message. A
        store in this process applies the common cases without building the ``Write``.

        The store may keep ``fields`` and ``status_event`` (the caller makes them for this
        call). ``millis`` is the events' time (now when ``None``).

        Returns:
          ``APPLIED``, ``REJECTED`` or ``ABORTED``, as ``write``.
        """
        write = Write(
            message_id,
            ttl,
            mode=mode,
            attempt=attempt,
            fields=fields,
            once=once or {},
            status_event=status_event,
            backfill=backfill,
            handle=handle,
        )
        results = self.write([write])
        return results[0] if results else APPLIED

    def take(self, message_id: str, attempt: int, ttl: int) -> int:
        """Take a message a worker is about to run, for a store that ``defers_start``: refuse
        it when an abort was requested, else mark its record taken by ``attempt`` (``abort()``
        then asks the worker, as for a running message), atomically with the check.

        Returns:
          ``APPLIED``, or ``ABORTED`` when an abort was requested.
        """
        raise NotImplementedError(f"{type(self).__name__} does not defer starts.")

    def hold(self, write: Write) -> bool:
        """Hold ``write`` (a message's last of an attempt) to go out with the message's result.

        A store whose result backend writes in the same round trip (Redis) holds it, and writes
        it soon without a result; the others return False and the caller writes it itself.
        """
        return False

    def release(self, held: HeldWrite) -> None:  # noqa: B027 - optional
        """Forget ``held``: the publisher wrote it (called after ``held.finish()``)."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the transport's threads and connections."""
