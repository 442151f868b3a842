"""The worker side of the live channel: per-message buffers and one publisher thread.

An actor's ``stream()``, ``progress()`` and captured output land in its message's ``Channel``
(a lock and a list append: cheap enough to call in a tight loop). One ``Publisher`` thread per
transport takes what the channels hold and writes it in batches: it wakes as soon as a channel
has something, so at a low rate every event goes out at once, and at a high rate events pile up
while the previous batch is written and leave together. Consecutive text chunks merge, up to
``max_chunk`` characters. Progress is coalesced: at most one report per ``progress_interval``
per message, and the latest one always goes out before the message's final status.

Buffers are bounded: when the store cannot keep up, the oldest chunks are dropped and a
``dropped`` event says how many.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from typing import Any

from .transport import HeldWrite, Transport, Write

__all__ = ["Channel", "Publisher", "get_publisher"]

logger = logging.getLogger("nbqueue.live")

#: How long closing a channel waits for the publisher to write it, in seconds.
CLOSE_TIMEOUT = 10.0

#: How long the publisher's thread waits with nothing to do before it exits, in seconds.
IDLE_EXIT = 30.0

#: How long the publisher of a network store gathers writes before it sends them, in seconds:
#: one round trip then carries the statuses of every message that finished meanwhile, and the
#: thread wakes once per tick rather than once per message (each wake-up of a thread costs the
#: worker threads the GIL). ``flush()`` cuts the tick short.
TICK = 0.005


class _Text:
    __slots__ = ("stream", "parts", "size")

    def __init__(self, stream: str, text: str) -> None:
        self.stream = stream
        self.parts = [text]
        self.size = len(text)


class Channel:
    """Buffers one running message's output and progress until the publisher writes them.

    Parameters:
      publisher: the publisher of the message's transport.
      message_id: the message.
      ttl: how long what is written lives, in milliseconds.
      max_chunk: the longest text chunk, in characters; longer writes are split.
      max_pending: how many chunks may wait to be written before the oldest are dropped.
      progress_interval: the shortest time between two progress events, in seconds.
      capture: whether the actor's stdout and stderr are captured.
    """

    def __init__(
        self,
        publisher: Publisher,
        message_id: str,
        *,
        ttl: int,
        max_chunk: int,
        max_pending: int,
        progress_interval: float,
        capture: bool = True,
    ) -> None:
        self.publisher = publisher
        self.message_id = message_id
        self.ttl = ttl
        self.max_chunk = max_chunk
        self.max_pending = max_pending
        self.progress_interval = progress_interval
        self.capture = capture
        self._lock = threading.Lock()
        self._pending: deque[_Text | dict[str, Any]] = deque()
        self._progress: dict[str, Any] | None = None
        self._progress_due = 0.0
        self._dropped = 0
        self._scheduled = False  # in the publisher's queue
        self._writing = False  # taken by a drain whose write has not finished
        self._timer = False  # the publisher holds a timer for held-back progress
        self._final: Write | None = None
        self._final_taken = False
        self._closed = False
        # Made only when close() has to wait for the publisher: in memory the final write is
        # usually made inline, and an Event per message was a tenth of the Live middleware's cost.
        self._flushed: threading.Event | None = None

    def __repr__(self) -> str:
        return f"Channel({self.message_id!r})"

    def output(self, text: str, stream: str) -> bool:
        """Queue text written to ``stream``; return False (nothing queued) once closed."""
        if not text:
            return not self._closed
        with self._lock:
            if self._closed:
                return False
            pending = self._pending
            last = pending[-1] if pending else None
            if type(last) is _Text and last.stream == stream:
                if last.size + len(text) <= self.max_chunk:
                    last.parts.append(text)
                    last.size += len(text)
                    return True
            for start in range(0, len(text), self.max_chunk):
                pending.append(_Text(stream, text[start : start + self.max_chunk]))
            while len(pending) > self.max_pending:
                pending.popleft()
                self._dropped += 1
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self.publisher.schedule(self)
        return True

    def value(self, data: dict[str, Any]) -> bool:
        """Queue a JSON value passed to ``stream()``; return False once closed."""
        with self._lock:
            if self._closed:
                return False
            self._pending.append(data)
            while len(self._pending) > self.max_pending:
                self._pending.popleft()
                self._dropped += 1
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self.publisher.schedule(self)
        return True

    def progress(self, data: dict[str, Any]) -> None:
        """Replace the progress report waiting to be written."""
        with self._lock:
            if self._closed:
                return
            self._progress = data
            schedule = not self._scheduled and not self._timer
            if schedule:
                self._scheduled = True
        if schedule:
            self.publisher.schedule(self)

    def drain(self, now: float, *, timer: bool = False) -> tuple[Write | None, float | None]:
        """Take what is ready to be written (for the publisher, or ``close()``).

        Call ``after_write()`` once a returned write was made.

        Parameters:
          timer: the publisher drains the channel because its progress timer fired.

        Returns:
          The write (or ``None``), and when to set a timer for held-back progress (``None``
          when no new timer is needed).
        """
        with self._lock:
            self._scheduled = False
            events: list[tuple[str, dict[str, Any]]] = []
            if self._dropped:
                events.append(("dropped", {"events": self._dropped}))
                self._dropped = 0
            for item in self._pending:
                if type(item) is _Text:
                    text = item.parts[0] if len(item.parts) == 1 else "".join(item.parts)
                    events.append(("output", {"text": text, "stream": item.stream}))
                else:
                    events.append(("output", item))  # type: ignore[arg-type]
            self._pending.clear()
            final, self._final = self._final, None
            progress, due = None, None
            if self._progress is not None:
                if final is not None or now >= self._progress_due:
                    progress, self._progress = self._progress, None
                    events.append(("progress", progress))
                    self._progress_due = now + self.progress_interval
                else:
                    due = self._progress_due
            if due is not None and self._timer and not timer:
                due = None  # the publisher already holds a timer for this progress
            else:
                self._timer = due is not None
            if not events and final is None:
                return None, due
            self._writing = True
            self._final_taken = final is not None
        if final is None:
            return Write(self.message_id, self.ttl, events, progress=progress), due
        final.events[:0] = events
        final.progress = progress
        return final, None

    def after_write(self) -> None:
        """Called once a write returned by ``drain()`` was made (or failed)."""
        with self._lock:
            self._writing = False
            # close() made the event before handing the final write over, if it waits for it
            flushed = self._flushed if self._final_taken else None
        if flushed is not None:
            flushed.set()

    def close_empty(self) -> bool:
        """Close the channel if it holds nothing and nothing of it is being written, and
        return True: the caller then writes the final status itself, inline (a store in this
        process). Return False, leaving the channel open, otherwise: ``close()`` it then.
        """
        with self._lock:
            if (
                self._closed
                or self._pending
                or self._progress is not None
                or self._dropped
                or self._scheduled
                or self._writing
            ):
                return False
            self._closed = True
            self._scheduled = True  # keeps late schedulers away
            return True

    def close(
        self, final: Write, *, timeout: float = CLOSE_TIMEOUT, with_result: bool = False
    ) -> None:
        """Write what is left, then ``final`` (the status change that ends this attempt).

        In memory it is written before this returns (by the calling thread when the publisher
        holds nothing of this channel), so once a worker has processed a message, its status
        says so. A network store gets it through the publisher, batched with other messages'
        writes, without waiting; ``Publisher.flush()`` (which ``status()`` and ``events()``
        call) waits for it in this process.

        Parameters:
          with_result: a result is stored next (``Results`` runs after ``Live``): a store that
            can write the two in one round trip holds the final write for the result store
            (``Transport.hold``), so that whoever sees the result sees every event written
            before it; a store that cannot writes it before this returns.
        """
        transport = self.publisher.transport
        buffered = transport.buffered
        wait = not buffered or with_result
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Memory leaves a channel the publisher is about to write to the publisher; held
            # for a result, the channel is drained here unless a write of it is still out.
            inline = wait and not self._writing and (with_result or not self._scheduled)
            alone = False
            if inline:
                self._scheduled = True  # keeps late schedulers away; drain() resets it
                # Most actors print nothing: then the final write goes out alone, undrained.
                alone = not self._pending and self._progress is None and not self._dropped
            elif wait and self._flushed is None:
                self._flushed = threading.Event()
            if not (inline and alone):
                self._final = final
            flushed = self._flushed
        if inline and alone:
            if not (buffered and transport.hold(final)):
                self.publisher.write_now([final])
            return
        if inline:
            write, _ = self.drain(time.monotonic())
            if write is not None:
                if not (buffered and transport.hold(write)):
                    self.publisher.write_now([write])
                self.after_write()
            return
        self.publisher.schedule(self, counted=True)
        if not wait:
            return
        assert flushed is not None
        if not flushed.wait(timeout):
            logger.warning(
                "The live channel of message %s was not written within %.0f s; its status may "
                "lag behind.",
                self.message_id,
                timeout,
            )


class Publisher:
    """Writes channels and queued status changes to a transport, in batches, on a thread of its
    own. The thread starts on first use and exits after ``IDLE_EXIT`` seconds with nothing to
    do, so idle brokers (a notebook's, a test's) keep no thread.

    Parameters:
      transport: where to write.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._thread: threading.Thread | None = None
        _publishers.add(self)
        self._cond = threading.Condition()
        self._channels: deque[Channel] = deque()
        self._loose: list[Write | HeldWrite] = []
        self._timers: list[tuple[float, int, Channel]] = []
        #: deferred start writes (``defer``), by when they are due
        self._deferred: list[tuple[float, int, HeldWrite]] = []
        self._sequence = itertools.count()
        self._submitted = 0
        self._written = 0
        self._failures = 0
        self._gathering = False  # the thread waits out a tick: no need to wake it
        self._urgent = False  # someone waits in flush(): end the tick now

    def is_alive(self) -> bool:
        """Whether the publisher's thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _ensure_started(self) -> None:
        # Under self._cond; the thread clears self._thread under it too before exiting.
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="nbqueue-live-publisher", daemon=True
            )
            self._thread.start()

    def schedule(self, channel: Channel, *, counted: bool = False) -> None:
        """Have the publisher look at ``channel`` soon.

        Parameters:
          counted: ``flush()`` waits for this write (a channel's final status).
        """
        with self._cond:
            self._channels.append(channel)
            if counted:
                self._submitted += 1
            self._ensure_started()
            if not self._gathering:
                self._cond.notify()

    def submit(self, write: Write | HeldWrite) -> None:
        """Queue a write that belongs to no channel (a producer's status change), or a held
        final write, made unless a result store claims it first."""
        with self._cond:
            self._loose.append(write)
            self._submitted += 1
            self._ensure_started()
            if not self._gathering:
                self._cond.notify()

    def defer(self, held: HeldWrite, due: float) -> None:
        """Queue a worker's deferred start write (``Transport.defers_start``), made at ``due``
        (``time.monotonic()``) unless the attempt's last write claims it first, or sooner when
        someone ``flush()``-es."""
        with self._cond:
            earliest = self._deferred[0][0] if self._deferred else None
            heapq.heappush(self._deferred, (due, next(self._sequence), held))
            self._submitted += 1
            self._ensure_started()
            # The thread already wakes by the earliest due time: a message per wake-up would
            # cost the worker threads the GIL for nothing (most of these are claimed back).
            if (earliest is None or due < earliest) and not self._gathering:
                self._cond.notify()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every write submitted so far was made (read-your-writes for callers:
        deferred start writes go out at once)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            if self._written < target and (self._gathering or self._deferred):
                self._urgent = True
                self._cond.notify_all()
            while self._written < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)

    def write_now(self, writes: list[Write]) -> list[int]:
        """Write in the calling thread, logging (not raising) failures."""
        try:
            return self.transport.write(writes)
        except Exception:
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 1000 == 0:
                logger.warning(
                    "The live channel could not write to %r (failure %d); status and output "
                    "were lost.",
                    self.transport,
                    self._failures,
                    exc_info=True,
                )
            return []

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._channels and not self._loose and not self._urgent:
                    timeout = IDLE_EXIT
                    if self._timers or self._deferred:
                        timeout = min(q[0][0] for q in (self._timers, self._deferred) if q)
                        timeout -= time.monotonic()
                        if timeout <= 0:
                            break
                    if not self._cond.wait(timeout) and not self._timers and not self._deferred:
                        if not self._channels and not self._loose:
                            self._thread = None
                            return
                if self.transport.buffered and not self._urgent:
                    self._gathering = True
                    self._cond.wait(TICK)  # notified only by flush()
                    self._gathering = False
                urgent, self._urgent = self._urgent, False
                now = time.monotonic()
                channels = [(channel, False) for channel in self._channels]
                self._channels.clear()
                while self._timers and self._timers[0][0] <= now:
                    channels.append((heapq.heappop(self._timers)[2], True))
                # deferred starts first: a channel's output follows its start in the batch
                starts: list[Write | HeldWrite] = []
                while self._deferred and (urgent or self._deferred[0][0] <= now):
                    starts.append(heapq.heappop(self._deferred)[2])
                loose, self._loose = starts + self._loose, []
                target = self._submitted
            writes: list[Write] = []
            held: list[HeldWrite] = []
            for item in loose:
                if type(item) is HeldWrite:
                    if item.claim():
                        held.append(item)
                        writes.append(item.write)
                else:
                    writes.append(item)  # type: ignore[arg-type]
            drained = []
            seen: set[int] = set()
            for channel, timer in channels:
                if id(channel) in seen:
                    continue
                seen.add(id(channel))
                write, due = channel.drain(now, timer=timer)
                if write is not None:
                    writes.append(write)
                    drained.append(channel)
                if due is not None:
                    with self._cond:
                        heapq.heappush(self._timers, (due, next(self._sequence), channel))
            if writes:
                self.write_now(writes)
            for channel in drained:
                channel.after_write()
            for item in held:
                item.finish()
                self.transport.release(item)
            with self._cond:
                self._written = max(self._written, target)
                self._cond.notify_all()


_publishers_lock = threading.Lock()
_publishers: weakref.WeakSet[Publisher] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    # Daemon threads still run while atexit handlers do: give pending writes (a script's last
    # sends, a worker's last statuses) a moment to go out.
    for publisher in list(_publishers):
        if publisher.is_alive():
            publisher.flush(timeout=2.0)


def get_publisher(transport: Transport) -> Publisher:
    """Return the publisher thread of ``transport`` (started on first use)."""
    publisher: Publisher | None = getattr(transport, "_nbq_publisher", None)
    if publisher is None:
        with _publishers_lock:
            publisher = getattr(transport, "_nbq_publisher", None)
            if publisher is None:
                publisher = Publisher(transport)
                transport._nbq_publisher = publisher  # type: ignore[attr-defined]
    return publisher
