"""Interrupt actors that run for longer than their time limit."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import TimeLimitExceeded
from ..logging import get_logger
from ..threading import current_platform, raise_thread_exception, supported_platforms
from .base import Middleware

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy
    from ..worker import Worker

__all__ = ["TimeLimit", "TimeLimitExceeded"]

# Threads do not survive a fork: a watcher made before it is dead in the child. Counting forks
# lets the per-message check skip Thread.is_alive(), which costs more than the rest of the hook.
_forks = 0


def _after_fork_in_child() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _DeadlineWatcher(threading.Thread):
    """A daemon thread that interrupts worker threads whose deadline has passed.

    It sleeps on a condition until the earliest deadline (at most ``interval`` seconds while
    deadlines are pending, and indefinitely when there are none), so an idle worker costs no
    wake-ups.
    """

    def __init__(self, interval: float, logger: logging.Logger) -> None:
        super().__init__(name="nbqueue-time-limit", daemon=True)
        self.interval = interval
        self.logger = logger
        # add() and remove() run for every message: they take the lock itself (a C call) rather
        # than the Condition, whose Python-level __enter__/__exit__ cost as much again.
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._deadlines: dict[int, tuple[float, MessageProxy, float]] = {}
        self._stopping = False
        # when the watcher wakes up next on its own; add() only wakes it for an earlier deadline
        self._next_check = math.inf

    def add(self, thread_id: int, limit_ms: float, message: MessageProxy) -> None:
        """Start the clock for ``thread_id``: interrupt it ``limit_ms`` milliseconds from now."""
        deadline = time.monotonic() + limit_ms / 1000
        with self._lock:
            self._deadlines[thread_id] = (deadline, message, limit_ms)
            if deadline < self._next_check:
                self._condition.notify()

    def remove(self, thread_id: int) -> None:
        """Stop the clock for ``thread_id``; it is not interrupted after this returns."""
        with self._lock:
            self._deadlines.pop(thread_id, None)

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called (the thread may still be finishing)."""
        return self._stopping

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to exit and wait up to ``timeout`` seconds for it."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout)

    def run(self) -> None:
        lingered = True
        with self._condition:
            while not self._stopping:
                now = time.monotonic()
                for thread_id, (deadline, message, limit_ms) in list(self._deadlines.items()):
                    if deadline <= now:
                        # Interrupting under the lock means a thread that already called
                        # remove() can never be interrupted afterwards.
                        del self._deadlines[thread_id]
                        self.logger.warning(
                            "Actor %r (message %s) exceeded its time limit of %d ms; "
                            "interrupting thread %d.",
                            message.actor_name,
                            message.message_id,
                            limit_ms,
                            thread_id,
                        )
                        try:
                            raise_thread_exception(thread_id, TimeLimitExceeded)
                        except Exception:  # pragma: no cover - ctypes failures are unexpected
                            self.logger.exception("Could not interrupt thread %d.", thread_id)

                timeout: float | None = None
                self._next_check = math.inf
                if self._deadlines:
                    earliest = min(deadline for deadline, _, _ in self._deadlines.values())
                    timeout = max(0.0, min(earliest - now, self.interval))
                    self._next_check = now + timeout
                    lingered = False
                elif not lingered:
                    # Stay on the clock for one more interval after the last actor finished:
                    # messages that run one after another (a request/response loop) then add
                    # their deadlines without waking this thread each time. Idle, it sleeps.
                    timeout = self.interval
                    self._next_check = now + timeout
                    lingered = True
                self._condition.wait(timeout)


class TimeLimit(Middleware):
    """Interrupt actors that run for too long by raising ``TimeLimitExceeded`` in their thread.

    The limit comes from the message's ``time_limit`` option, then the actor's, then this
    default; a falsy message value falls through, as in Dramatiq. A background thread watches the
    deadlines. It starts when the worker process boots (``after_process_boot``) or, for workers
    started without the CLI, when a worker boots, and it stops when the last worker shuts down.

    The exception is delivered between bytecodes, so an actor blocked in one long C call (a
    single ``time.sleep``, a socket read, native code) sees it only when that call returns.
    Interrupting threads needs CPython.

    Parameters:
      time_limit: the default limit in milliseconds (10 minutes); ``float("inf")`` or ``None``
        means no limit.
      interval: the longest time, in milliseconds, the watcher sleeps between checks while
        actors are running; it also wakes exactly at the earliest deadline.
    """

    def __init__(self, *, time_limit: float | None = 600000, interval: int = 1000) -> None:
        self.logger = get_logger(__name__, type(self))
        self.time_limit = time_limit
        self.interval = interval
        self._lock = threading.Lock()
        self._watcher: _DeadlineWatcher | None = None
        self._watcher_forks = _forks
        self._workers = 0

    @property
    def actor_options(self) -> set[str]:
        return {"time_limit"}

    def _ensure_watcher(self) -> _DeadlineWatcher:
        watcher = self._watcher
        if watcher is not None and self._watcher_forks == _forks and not watcher.stopping:
            return watcher
        with self._lock:
            watcher = self._watcher
            if watcher is None or not watcher.is_alive() or watcher.stopping:
                watcher = _DeadlineWatcher(self.interval / 1000, self.logger)
                watcher.start()
                self._watcher = watcher
                self._watcher_forks = _forks
            return watcher

    def _stop_watcher(self) -> None:
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()

    def after_process_boot(self, broker: Broker) -> None:
        if current_platform not in supported_platforms:  # pragma: no cover - CPython in CI
            self.logger.warning(
                "TimeLimit cannot interrupt threads on %s; time limits are not enforced.",
                current_platform,
            )
        self._ensure_watcher()

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        with self._lock:
            self._workers += 1
        self._ensure_watcher()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        with self._lock:
            self._workers = max(0, self._workers - 1)
            last = self._workers == 0
        if last:
            self._stop_watcher()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        actor = broker.actor_for(message)
        limit = message.options.get("time_limit") or actor.options.get(
            "time_limit", self.time_limit
        )
        if limit is None or math.isinf(limit):
            return
        self._ensure_watcher().add(threading.get_ident(), limit, message)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        watcher = self._watcher
        if watcher is not None:
            watcher.remove(threading.get_ident())

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        watcher = self._watcher
        if watcher is not None:
            watcher.remove(threading.get_ident())
