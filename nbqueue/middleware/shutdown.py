"""Interrupt actors that opted in when their worker shuts down."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..errors import Shutdown
from ..logging import get_logger
from ..threading import raise_thread_exception
from .base import Middleware

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy
    from ..worker import Worker

__all__ = ["Shutdown", "ShutdownNotifications"]


class ShutdownNotifications(Middleware):
    """Raise ``Shutdown`` in actors that are running when their worker begins to stop.

    Actors opt in with the ``notify_shutdown`` option (on the message, then the actor, then this
    default); the others are left to finish. Like time limits, the exception is delivered between
    bytecodes, so an actor blocked in a long C call sees it only when that call returns.

    Parameters:
      notify_shutdown: whether actors are interrupted unless they say otherwise.
    """

    def __init__(self, notify_shutdown: bool = False) -> None:
        self.logger = get_logger(__name__, type(self))
        self.notify_shutdown = notify_shutdown
        self._lock = threading.Lock()
        self._thread_ids: set[int] = set()

    @property
    def actor_options(self) -> set[str]:
        return {"notify_shutdown"}

    def should_notify(self, broker: Broker, message: MessageProxy) -> bool:
        """Return whether the actor running ``message`` wants to hear about a shutdown."""
        notify: Any = message.options.get("notify_shutdown")
        if notify is None:
            actor = broker.actor_for(message)
            notify = actor.options.get("notify_shutdown")
        if notify is None:
            notify = self.notify_shutdown
        return bool(notify)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if self.should_notify(broker, message):
            with self._lock:
                self._thread_ids.add(threading.get_ident())

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._forget_thread()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._forget_thread()

    def _forget_thread(self) -> None:
        # Only this thread adds its own id, so when the id is absent there is nothing to remove
        # and no lock to take (the common case: actors that did not opt in).
        thread_id = threading.get_ident()
        if thread_id in self._thread_ids:
            with self._lock:
                self._thread_ids.discard(thread_id)

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        # Hold the lock while interrupting so that a thread which has just finished (and removed
        # itself in after_process_message) is not interrupted afterwards.
        with self._lock:
            for thread_id in self._thread_ids:
                self.logger.info("Worker is shutting down; interrupting thread %d.", thread_id)
                raise_thread_exception(thread_id, Shutdown)
            self._thread_ids.clear()
