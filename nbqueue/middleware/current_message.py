"""Let actor code see the message it is running for."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from .base import Middleware

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy

__all__ = ["CurrentMessage"]


class CurrentMessage(Middleware):
    """Expose the message being processed to the actor that runs it.

    The message lives in a context variable, so each worker thread sees its own, and async
    actors see it too: the coroutine runs on the event-loop thread in a copy of the worker
    thread's context.

    Example::

        >>> broker.add_middleware(CurrentMessage())
        >>> @nbqueue.actor
        ... def example() -> None:
        ...     print(CurrentMessage.get_current_message().message_id)
    """

    _current: contextvars.ContextVar[MessageProxy | None] = contextvars.ContextVar(
        "nbqueue_current_message", default=None
    )

    @classmethod
    def get_current_message(cls) -> MessageProxy | None:
        """Return the message the calling actor runs for, or ``None`` outside of an actor.

        Returns:
          The message, as the ``MessageProxy`` the worker handles.
        """
        return cls._current.get()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        self._current.set(message)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._current.set(None)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._current.set(None)
