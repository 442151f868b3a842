"""A private event-loop thread that runs async actors.

Async actors never run on the caller's loop: a Jupyter kernel already runs one, and patching it
(nest-asyncio) breaks other libraries. Instead one daemon thread owns a loop, and worker threads
hand coroutines to it and wait, staying interruptible by time limits, shutdown and abort.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from .threading import Interrupt

__all__ = ["EventLoopThread", "async_to_sync", "get_event_loop_thread", "set_event_loop_thread"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("nbqueue.asyncio")


class EventLoopThread(threading.Thread):
    """A daemon thread running an asyncio event loop.

    Parameters:
      interrupt_check_ival: seconds between checks, while waiting for a coroutine, that let an
        asynchronous ``Interrupt`` (time limit, shutdown, abort) reach the waiting thread.
    """

    def __init__(
        self, logger: logging.Logger | None = None, interrupt_check_ival: float = 0.1
    ) -> None:
        super().__init__(name="nbqueue-event-loop", daemon=True)
        self.logger = logger or logging.getLogger("nbqueue.asyncio")
        self.interrupt_check_ival = interrupt_check_ival
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()

    def start(self, *, timeout: float | None = 5.0) -> None:
        """Start the thread and wait (up to ``timeout`` seconds) until its loop runs."""
        super().start()
        if not self._ready.wait(timeout):
            raise RuntimeError("The nbqueue event loop thread did not start within the timeout.")

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (cancelling what still runs) and join the thread."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(timeout)

    def submit(self, coro: Coroutine[Any, Any, R]) -> concurrent.futures.Future[R]:
        """Schedule ``coro`` on the loop and return a future for its result."""
        if not self.is_alive():
            raise RuntimeError("The nbqueue event loop thread is not running.")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run_coroutine(self, coro: Coroutine[Any, Any, R]) -> R:
        """Run ``coro`` on the loop and block until it finishes.

        An ``Interrupt`` raised in the calling thread while it waits (a time limit, a shutdown,
        an abort) cancels the coroutine's task, waits up to a second for the task to finish its
        cleanup, and propagates; the message is settled only after that cleanup.
        """
        # The Interrupt lands at whatever bytecode this thread runs, so every step must survive
        # it. The wait is on ``done``, a bare lock the loop releases once ``outcome`` is set, not
        # in Future.result(): Condition.wait() releases the future's lock before its own try, and
        # an Interrupt landing there turns into RuntimeError("cannot release un-acquired lock"),
        # which escapes ``except Interrupt`` and leaves the coroutine running.
        tasks: list[asyncio.Task[R]] = []

        def finish(task: asyncio.Task[R]) -> None:
            try:
                if task.cancelled():
                    outcome.cancel()
                elif (error := task.exception()) is not None:
                    outcome.set_exception(error)
                else:
                    outcome.set_result(task.result())
            finally:
                done.release()

        def start() -> None:
            # Runs in a copy of the caller's context, so context variables (CurrentMessage)
            # reach the coroutine.
            task = self.loop.create_task(coro)
            task.add_done_callback(finish)
            tasks.append(task)

        def cancel() -> None:
            if not tasks:  # the interrupt came before start() was scheduled
                coro.close()
                outcome.cancel()
                done.release()
            for task in tasks:
                task.cancel()

        try:
            outcome: concurrent.futures.Future[R] = concurrent.futures.Future()
            done = threading.Lock()
            done.acquire()
            # loop.is_running() rather than self.is_alive(): an Interrupt landing inside
            # Thread.is_alive() can make CPython 3.10 to 3.12 mark the loop thread as stopped.
            if not self.loop.is_running():
                raise RuntimeError("The nbqueue event loop thread is not running.")
        except BaseException:
            coro.close()  # nothing was scheduled: the coroutine never runs
            raise
        try:
            # Scheduled inside the try, so that an interrupt landing right after start() was
            # scheduled (an abort as the actor begins) still cancels the task.
            self.loop.call_soon_threadsafe(start)
            while not done.acquire(True, self.interrupt_check_ival):
                pass
            return outcome.result()
        except Interrupt:
            # The loop runs callbacks in order: if start() was scheduled, cancel() finds its task.
            try:
                self.loop.call_soon_threadsafe(cancel)
            except RuntimeError:  # the loop closed, cancelling its tasks: the interrupt propagates
                coro.close()
            if not outcome.done():
                done.acquire(True, 1.0)
            raise


_event_loop_thread: EventLoopThread | None = None
_default_thread: EventLoopThread | None = None
_lock = threading.Lock()


def get_event_loop_thread() -> EventLoopThread | None:
    """Return the event-loop thread set by the AsyncIO middleware, if any."""
    return _event_loop_thread


def set_event_loop_thread(thread: EventLoopThread | None) -> None:
    """Set (or clear, with ``None``) the event-loop thread async actors run on."""
    global _event_loop_thread
    _event_loop_thread = thread


def _loop_thread() -> EventLoopThread:
    thread = _event_loop_thread
    if thread is not None and thread.is_alive():
        return thread
    # No AsyncIO middleware running (a direct call, or a broker without it): use a private,
    # lazily started loop thread rather than failing as Dramatiq does.
    global _default_thread
    with _lock:
        if _default_thread is None or not _default_thread.is_alive():
            _default_thread = EventLoopThread(logger)
            _default_thread.start()
        return _default_thread


def async_to_sync(fn: Callable[P, Awaitable[R]]) -> Callable[P, R]:
    """Wrap an async function so that calling it runs it on the event-loop thread and blocks."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        async def call() -> R:
            return await fn(*args, **kwargs)

        return _loop_thread().run_coroutine(call())

    return wrapper
