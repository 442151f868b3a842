"""Every exception nbqueue raises, in one place.

The tree (names shared with Dramatiq mean the same condition)::

    NbqueueError
    ├── DecodeError                     a message body could not be decoded or validated
    ├── EncodeError (also TypeError, ValueError)
    │                                   a message (argument, option, result) cannot be encoded
    ├── BrokerError
    │   ├── ActorNotFound               no actor with that name is declared on the broker
    │   ├── QueueNotFound               the queue was never declared
    │   ├── BrokerConnectionError
    │   │   ├── ConnectionFailed        could not connect to the broker
    │   │   │   └── ConnectionBlocked   the broker refuses publishes for now (resource alarm)
    │   │   └── ConnectionClosed        the connection dropped during an operation
    │   │       └── PublishOutcomeUnknown
    │   │                               sent, but the connection dropped before the confirm
    │   ├── PublishRejected             the broker refused a message; it was not enqueued
    │   │   ├── PublishNacked           the broker answered with a negative confirm
    │   │   └── PublishUnroutable       no queue took the message (it was deleted?)
    │   └── BrokerUnavailable           no broker implementation for a URL or missing extra
    ├── QueueJoinTimeout                broker.join() or worker.join() ran out of time
    ├── RateLimitExceeded               a rate limiter refused to acquire
    └── Retry                           control flow: raise inside an actor to retry it

``NbqueueError`` is also importable as ``DramatiqError`` so ported code that catches it keeps
working. ``ConnectionError`` is a deprecated alias of ``BrokerConnectionError`` (as in Dramatiq).
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = [
    "ActorNotFound",
    "BrokerConnectionError",
    "BrokerError",
    "BrokerUnavailable",
    "ConnectionBlocked",
    "ConnectionClosed",
    "ConnectionFailed",
    "DecodeError",
    "DramatiqError",
    "EncodeError",
    "NbqueueError",
    "PublishNacked",
    "PublishOutcomeUnknown",
    "PublishRejected",
    "PublishUnroutable",
    "QueueJoinTimeout",
    "QueueNotFound",
    "RateLimitExceeded",
    "Retry",
]


class NbqueueError(Exception):
    """Base class for every error nbqueue raises.

    Parameters:
      message: a full sentence saying what happened and what to do next.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return str(self.message) or repr(self)


#: Dramatiq's name for the base class, kept so ported ``except`` clauses still match.
DramatiqError = NbqueueError


class DecodeError(NbqueueError):
    """A message body could not be decoded or does not have the shape of a message.

    Attributes:
      data: the raw bytes (or decoded object) that failed.
      error: the underlying exception, if any.
      reason: ``"undecodable"`` when the bytes are not valid JSON (or the encoder's format),
        ``"invalid"`` when they decode but are not a well-formed message.
    """

    def __init__(
        self,
        message: str,
        data: Any = None,
        error: BaseException | None = None,
        *,
        reason: str = "undecodable",
    ) -> None:
        super().__init__(message)
        self.data = data
        self.error = error
        self.reason = reason


class EncodeError(NbqueueError, TypeError, ValueError):
    """A value cannot be encoded by the message encoder (JSON by default).

    It derives from ``TypeError`` and ``ValueError`` too, which is what ``json.dumps`` raises, so
    code written for Dramatiq that catches those keeps working.

    Attributes:
      path: where the value sits, e.g. ``"args[1]"`` or ``"kwargs['when']"``.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class BrokerError(NbqueueError):
    """Base class for broker errors."""


class ActorNotFound(BrokerError):
    """No actor with the given name is declared on the broker."""


class QueueNotFound(BrokerError):
    """The queue was never declared on the broker."""


class BrokerConnectionError(BrokerError):
    """Base class for errors talking to the broker's server."""


class ConnectionFailed(BrokerConnectionError):
    """The broker could not connect to its server."""


class ConnectionClosed(BrokerConnectionError):
    """The connection to the broker's server dropped during an operation."""


class ConnectionBlocked(ConnectionFailed):
    """The broker refuses publishes for now (a RabbitMQ memory or disk alarm); nothing was sent."""


class PublishOutcomeUnknown(ConnectionClosed):
    """Messages were sent, but the connection dropped (or timed out) before the broker confirmed
    them: they may or may not be enqueued. Sending them again is safe but may run them twice.

    Attributes:
      messages: the messages whose outcome is unknown.
    """

    def __init__(self, message: str, messages: list[Any] | None = None) -> None:
        super().__init__(message)
        self.messages = messages or []


class PublishRejected(BrokerError):
    """The broker refused messages: they were not enqueued, and sending them again is safe.

    Attributes:
      messages: the messages that were refused.
    """

    def __init__(self, message: str, messages: list[Any] | None = None) -> None:
        super().__init__(message)
        self.messages = messages or []


class PublishNacked(PublishRejected):
    """The broker answered a publish with a negative confirm (an internal error on its side)."""


class PublishUnroutable(PublishRejected):
    """The broker returned a message because no queue took it (the queue was deleted?)."""


class BrokerUnavailable(BrokerError):
    """No broker can serve a URL: an unknown scheme, or a missing optional package."""


class QueueJoinTimeout(NbqueueError):
    """Waiting for a queue or a worker to drain took longer than the timeout."""


class RateLimitExceeded(NbqueueError):
    """A rate limiter could not be acquired and ``raise_on_failure`` was set."""


class Retry(NbqueueError):  # noqa: N818 - Dramatiq's name
    """Raise inside an actor to retry the message without logging an error.

    Parameters:
      message: why the actor asked for a retry.
      delay: milliseconds to wait before the retry; ``None`` means the Retries middleware's
        exponential backoff.
    """

    def __init__(self, message: str = "", delay: int | None = None) -> None:
        super().__init__(message)
        self.delay = delay


def __getattr__(name: str) -> Any:
    if name == "ConnectionError":
        warnings.warn(
            "nbqueue.errors.ConnectionError is deprecated and will be removed in nbqueue 1.0; "
            "use nbqueue.errors.BrokerConnectionError instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        return BrokerConnectionError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
