"""Errors raised when reading results.

The tree::

    NbqueueError
    └── ResultError
        ├── ResultMissing       the result is not stored (yet), and the caller did not block
        ├── ResultTimeout       a blocking read ran out of time
        └── ResultFailure       the actor failed; its exception is described, never re-raised
"""

from __future__ import annotations

from ..errors import NbqueueError

__all__ = ["ResultError", "ResultFailure", "ResultMissing", "ResultTimeout"]


class ResultError(NbqueueError):
    """Base class for result errors."""


class ResultMissing(ResultError):
    """The result of a message is not stored, and ``block`` was False.

    Attributes:
      message_id: the id of the message whose result was asked for.
      actor_name: the name of its actor.
    """

    def __init__(
        self, message: str = "", *, message_id: str | None = None, actor_name: str | None = None
    ) -> None:
        super().__init__(message)
        self.message_id = message_id
        self.actor_name = actor_name


class ResultTimeout(ResultError):
    """Waiting for the result of a message took longer than the timeout.

    A sibling of ``ResultMissing``, not a subclass, as in Dramatiq: ``except ResultMissing``
    written for Dramatiq must not start swallowing timeouts.

    Attributes:
      message_id: the id of the message whose result was waited for.
      actor_name: the name of its actor.
      timeout: how long the caller waited, in milliseconds.
    """

    def __init__(
        self,
        message: str = "",
        *,
        message_id: str | None = None,
        actor_name: str | None = None,
        timeout: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message_id = message_id
        self.actor_name = actor_name
        self.timeout = timeout


class ResultFailure(ResultError):
    """The actor failed, so its message has an exception rather than a result.

    The original exception is stored as data (its class name, its text and the traceback text)
    and is never re-imported by name: the process reading the result may not have the module
    that defines it, and importing names taken from a broker would run code chosen by whoever
    wrote to it.

    Parameters:
      message: the text of this error, ``"actor raised <type>: <msg>"`` as in Dramatiq.
      orig_exc_type: the class name of the exception the actor raised, e.g. ``"KeyError"``.
      orig_exc_msg: ``str()`` of that exception.
      traceback: the formatted traceback, when the backend stored one.
    """

    def __init__(
        self,
        message: str = "",
        orig_exc_type: str = "",
        orig_exc_msg: str = "",
        *,
        traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.orig_exc_type = orig_exc_type
        self.orig_exc_msg = orig_exc_msg
        self.traceback = traceback
