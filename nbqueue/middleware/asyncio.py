"""Run async actors on an event-loop thread that lives as long as the worker."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..asyncio import EventLoopThread, get_event_loop_thread, set_event_loop_thread
from ..logging import get_logger
from .base import Middleware

if TYPE_CHECKING:
    from ..broker import Broker
    from ..worker import Worker

__all__ = ["AsyncIO"]


class AsyncIO(Middleware):
    """Start an event-loop thread for async actors when a worker boots, and stop it after.

    Without this middleware nbqueue still runs async actors, on a private loop thread it starts
    on first use; with it, the loop's lifetime follows the worker's, so coroutines still pending
    at shutdown are cancelled. Workers sharing this middleware share one loop thread, which
    stops when the last of them shuts down.

    Parameters:
      start_timeout: how long, in seconds, a booting worker waits for the loop to run.
    """

    def __init__(self, start_timeout: float = 1.0) -> None:
        self.logger = get_logger(__name__, type(self))
        self.start_timeout = start_timeout
        self._lock = threading.Lock()
        self._thread: EventLoopThread | None = None
        self._workers = 0

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        with self._lock:
            self._workers += 1
            if self._thread is None or not self._thread.is_alive():
                thread = EventLoopThread(self.logger)
                thread.start(timeout=self.start_timeout)
                self._thread = thread
            set_event_loop_thread(self._thread)

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        with self._lock:
            self._workers = max(0, self._workers - 1)
            if self._workers or self._thread is None:
                return
            thread, self._thread = self._thread, None
        thread.stop()
        if get_event_loop_thread() is thread:
            set_event_loop_thread(None)
