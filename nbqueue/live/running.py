"""What a worker knows about the messages it runs: their attempt, channel, outcome and abort.

Every hook of one message runs on one worker thread, and a retry of the same message may
already run on another, so each worker thread keeps its own current message; a table by id
serves abort requests, which arrive on other threads.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import Abort
from ..threading import raise_thread_exception

if TYPE_CHECKING:
    from .channel import Channel
    from .transport import HeldWrite

__all__ = ["DONE", "RUNNING", "STARTING", "Running", "RunningTable", "summary", "worker_id"]

logger = logging.getLogger("nbqueue.live")

#: A message's states here: starting (not interruptible yet), running (its actor runs and may
#: be interrupted), done (the actor returned; never interrupted again).
STARTING, RUNNING, DONE = 0, 1, 2

_HOST = socket.gethostname()


def summary(exception: BaseException | None) -> str:
    """Return a one-line summary of an exception (at most 500 characters)."""
    if exception is None:
        return ""
    try:
        text = f"{type(exception).__name__}: {exception}"
    except Exception:
        text = type(exception).__name__
    return text if len(text) <= 500 else text[:497] + "..."


# worker_id() runs for every message, and os.getpid() is a system call: the answer is kept per
# thread and worker, and forgotten in a forked child.
_worker_ids = threading.local()


def _forget_worker_ids() -> None:
    global _worker_ids
    _worker_ids = threading.local()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_worker_ids)


def worker_id() -> str:
    """Return ``"<host>:<pid>:<worker>"`` for the calling worker thread."""
    worker: Any = getattr(threading.current_thread(), "worker", None)
    wid = getattr(worker, "worker_id", None)
    cached: tuple[Any, str] | None = getattr(_worker_ids, "value", None)
    if cached is not None and cached[0] is wid:
        return cached[1]
    suffix = f":{wid[:8]}" if isinstance(wid, str) else ""
    value = f"{_HOST}:{os.getpid()}{suffix}"
    _worker_ids.value = (wid, value)
    return value


class Running:
    """One message that runs here."""

    __slots__ = (
        "message_id",
        "lock",
        "state",
        "thread_id",
        "attempt",
        "started_at",
        "ttl",
        "channel",
        "abort_requested",
        "aborted",
        "skipped",
        "exception",
        "retry_delay",
        "status_written",
        "capture",
        "opener",
        "took",
        "held_start",
    )

    def __init__(
        self, message_id: str, thread_id: int, attempt: int, started_at: int, ttl: int
    ) -> None:
        self.message_id = message_id
        self.lock = threading.Lock()
        self.state = STARTING
        self.thread_id = thread_id
        self.attempt = attempt
        self.started_at = started_at
        self.ttl = ttl
        self.channel: Channel | None = None
        self.abort_requested = False  # asked while starting
        self.aborted = False  # Abort was raised in its thread (or it was skipped as aborted)
        self.skipped = False
        self.exception: BaseException | None = None
        self.retry_delay: int | None = None  # set when Retries enqueued the next attempt
        # The status ending this attempt went out already: "retrying" before Retries enqueued the
        # next attempt, or the final status with the result.
        self.status_written = False
        #: whether the actor's stdout and stderr are captured (read by the capture streams)
        self.capture = False
        #: makes the message's channel on the actor's first output or progress report; most
        #: actors make none, and their last status goes out alone (``seal``)
        self.opener: Callable[[Running], Channel] | None = None
        #: the store took the message (``Transport.take``): the attempt's last write clears the
        #: mark, and carries the deferred start while nobody has written it
        self.took = False
        self.held_start: HeldWrite | None = None

    # The running message is its actor's current channel (``nbqueue.context``): the Channel
    # that buffers output for the publisher is made only when the actor writes.

    def output(self, text: str, stream: str) -> bool:
        """Queue text written by the actor (see ``Channel.output``)."""
        channel = self.channel or self._open()
        return channel is not None and channel.output(text, stream)

    def value(self, data: dict[str, Any]) -> bool:
        """Queue a JSON value streamed by the actor (see ``Channel.value``)."""
        channel = self.channel or self._open()
        return channel is not None and channel.value(data)

    def progress(self, data: dict[str, Any]) -> None:
        """Record the actor's latest progress report (see ``Channel.progress``)."""
        channel = self.channel or self._open()
        if channel is not None:
            channel.progress(data)

    def _open(self) -> Channel | None:
        with self.lock:
            if self.channel is None and self.opener is not None:
                self.channel = self.opener(self)
            return self.channel

    def seal(self) -> Channel | None:
        """Stop making a channel for this attempt; return the one made, if any."""
        with self.lock:
            self.opener = None
            return self.channel


class RunningTable:
    """The messages that run in this process, for one Live middleware."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Running] = {}
        self._local = threading.local()

    def start(self, message_id: str, attempt: int, started_at: int, ttl: int) -> Running:
        """Register the message the calling worker thread is about to run."""
        running = Running(message_id, threading.get_ident(), attempt, started_at, ttl)
        self._local.running = running
        with self._lock:
            self._by_id[message_id] = running
        return running

    def mine(self, message_id: str) -> Running | None:
        """Return what the calling worker thread runs, if it is ``message_id``."""
        running: Running | None = getattr(self._local, "running", None)
        if running is None or running.message_id != message_id:
            return None
        return running

    def forget(self, message_id: str) -> Running | None:
        """Drop the calling thread's message, once it was settled; return it."""
        running = self.mine(message_id)
        if running is not None:
            self._local.running = None
            with self._lock:
                if self._by_id.get(message_id) is running:
                    del self._by_id[message_id]
        return running

    def prune(self) -> None:
        """Drop messages that are done but were never settled (a stopped worker's)."""
        with self._lock:
            self._by_id = {k: r for k, r in self._by_id.items() if r.state != DONE}

    def on_abort(self, message_id: str) -> None:
        """Interrupt ``message_id`` if it runs here (called by the transport, any thread)."""
        running = self._by_id.get(message_id)
        if running is None:
            return
        with running.lock:
            if running.state == STARTING:
                running.abort_requested = True
            elif running.state == RUNNING and not running.aborted:
                # Under the lock: once the actor is done (state set under this lock), it can
                # no longer be interrupted.
                running.aborted = True
                logger.info("Aborting message %s.", message_id)
                raise_thread_exception(running.thread_id, Abort)

    def running_ids(self) -> list[str]:
        """Return the ids of the messages whose actors have not returned yet."""
        with self._lock:
            return [k for k, r in self._by_id.items() if r.state != DONE]
