"""Every exception nbqueue raises, in one place.

The tree (names shared with Dramatiq mean the same condition)::

    NbqueueError
    ├── DecodeError                     a message body could not be decoded or validated
    ├── EncodeError (also TypeError, ValueError)
    │   │                               a message (argument, option, result) cannot be encoded
    │   └── MessageTooLarge             an encoded message is above the broker's max_message_size
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
    ├── LiveUnavailable                 a message cannot be watched: no live channel
    ├── QueueJoinTimeout                broker.join() or worker.join() ran out of time
    ├── RateLimitExceeded               a rate limiter refused to acquire
    └── Retry                           control flow: raise inside an actor to retry it

Interrupts are raised inside a running actor from another thread. They derive from
``BaseException`` (through ``nbqueue.threading.Interrupt``), so an actor's ``except Exception:``
does not swallow them::

    Interrupt
    ├── Abort                           message.abort() stopped the actor
    ├── Shutdown                        the worker is stopping (nbqueue.middleware)
    └── TimeLimitExceeded               the actor ran past its time limit (nbqueue.middleware)

``NbqueueError`` is also importable as ``DramatiqError`` so ported code that catches it keeps
working. ``ConnectionError`` is a deprecated alias of ``BrokerConnectionError`` (as in Dramatiq).
"""

from __future__ import annotations

import warnings
from typing import Any

from .threading import Interrupt

__all__ = [
    "Abort",
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
    "LiveUnavailable",
    "MessageTooLarge",
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


class MessageTooLarge(EncodeError):
    """An encoded message is larger than the broker's ``max_message_size``; nothing was sent.

    Raised by ``send()``/``send_many()`` before the broker is contacted. Pass large data by
    reference (a file path, a URL, a database key) instead of as an argument, or raise the
    broker's ``max_message_size`` (``NBQUEUE_MAX_MESSAGE_SIZE``). A message already on a queue
    that is above the consuming broker's limit is dead-lettered with the reason ``too_large``.

    Attributes:
      actor_name: the actor the message was for.
      size: the encoded size, in bytes.
      limit: the broker's ``max_message_size``, in bytes.
    """

    def __init__(self, message: str, *, actor_name: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.actor_name = actor_name
        self.size = size
        self.limit = limit


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


class LiveUnavailable(NbqueueError):
    """A message cannot be watched or aborted because its broker has no live channel.

    Add ``nbqueue.live.Live()`` to the broker, with a ``Results`` middleware whose backend is a
    ``StubBackend`` (this process only) or a ``RedisBackend`` (any process).
    """


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


class Abort(Interrupt):  # noqa: N818 - a control-flow signal, like Retry
    """Raised inside an actor whose message was aborted with ``message.abort()``.

    A sync actor gets it in its thread at the next bytecode boundary (code blocked in one long C
    call, such as ``time.sleep(60)`` or a socket read, sees it when that call returns); an async
    actor's task is cancelled instead. Clean up in ``finally:`` blocks. An aborted message is
    never retried: it is dead-lettered with the reason ``"aborted"`` and its result is a failure.

    Parameters:
      message: the text stored with the failure.
    """

    def __init__(self, message: str = "The message was aborted.") -> None:
        super().__init__(message)


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
