"""Every exception nbqueue defines, in one place.

The tree (names shared with Dramatiq mean the same condition; a path in brackets is where the
class is documented and importable besides here, and the ``__module__`` it reports)::

    NbqueueError
    ├── DecodeError                     a message body could not be decoded or validated
    ├── DramatiqAlreadyImported         install_as_dramatiq() came after the real dramatiq
    │                                   was imported
    ├── EncodeError (also TypeError, ValueError)
    │   │                               a message (argument, option, result) cannot be encoded
    │   └── MessageTooLarge             an encoded message is above the broker's max_message_size
    ├── BrokerError
    │   ├── ActorNotFound               no actor with that name is declared on the broker
    │   │   ├── BadSignature            published code was refused: unsigned or tampered with
    │   │   │                           [nbqueue.remote.signing]
    │   │   ├── CodeNotFound            the published version a message names is not stored
    │   │   │                           [nbqueue.remote.loader]
    │   │   └── CodeLoadFailed          a published version raised while its source ran
    │   │                               [nbqueue.remote.loader]
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
    ├── MiddlewareError                 raised by middleware on purpose [nbqueue.middleware.base]
    │   └── SkipMessage                 control flow: skip a message without running its actor
    │                                   [nbqueue.middleware.base]
    ├── QueueJoinTimeout                broker.join() or worker.join() ran out of time
    ├── RateLimitExceeded               a rate limiter refused to acquire
    ├── ResultError                     reading a result failed [nbqueue.results.errors, all four]
    │   ├── ResultMissing               the result is not stored (yet); the caller did not block
    │   ├── ResultTimeout               a blocking read of a result ran out of time
    │   └── ResultFailure               the actor failed; its exception is described, not raised
    ├── Retry                           control flow: raise inside an actor to retry it
    ├── SchedulesUnavailable            a worker has schedules but its broker no store to
    │                                   claim their ticks in
    └── WaitTimeout (also TimeoutError) as_completed() or wait() ran out of time

Interrupts are raised inside a running actor from another thread. They derive from
``BaseException``, so an actor's ``except Exception:`` does not swallow them::

    Interrupt                           raised from another thread [nbqueue.threading]
    ├── Abort                           message.abort() stopped the actor
    ├── Shutdown                        the worker is stopping [nbqueue.middleware.shutdown]
    └── TimeLimitExceeded               the actor ran past its time limit
                                        [nbqueue.middleware.time_limit]

The classes in brackets are also re-exported by ``nbqueue.middleware``, ``nbqueue.results`` and
``nbqueue.remote``; every import path is the same class object. Only the worker CLI's own
control flow (``nbqueue.cli.boot.BootError``, which carries a CLI exit code,
``nbqueue.cli.signals.Killed`` and ``nbqueue.cli.serve.Reload``), raised and caught inside
``nbqueue.cli``, is defined there.

``NbqueueError`` is also importable as ``DramatiqError`` so ported code that catches it keeps
working. ``ConnectionError`` is a deprecated alias of ``BrokerConnectionError`` (as in Dramatiq).
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = [
    "Abort",
    "ActorNotFound",
    "BadSignature",
    "BrokerConnectionError",
    "BrokerError",
    "BrokerUnavailable",
    "CodeLoadFailed",
    "CodeNotFound",
    "ConnectionBlocked",
    "ConnectionClosed",
    "ConnectionFailed",
    "DecodeError",
    "DramatiqAlreadyImported",
    "DramatiqError",
    "EncodeError",
    "Interrupt",
    "LiveUnavailable",
    "MessageTooLarge",
    "MiddlewareError",
    "NbqueueError",
    "PublishNacked",
    "PublishOutcomeUnknown",
    "PublishRejected",
    "PublishUnroutable",
    "QueueJoinTimeout",
    "QueueNotFound",
    "RateLimitExceeded",
    "ResultError",
    "ResultFailure",
    "ResultMissing",
    "ResultTimeout",
    "Retry",
    "SchedulesUnavailable",
    "Shutdown",
    "SkipMessage",
    "TimeLimitExceeded",
    "WaitTimeout",
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


class DramatiqAlreadyImported(NbqueueError):
    """``nbqueue.install_as_dramatiq()`` was called after the real ``dramatiq`` was imported.

    Nothing was changed. Call it before anything imports ``dramatiq``.

    Attributes:
      modules: the names of the real Dramatiq modules found in ``sys.modules``.
    """

    def __init__(self, message: str, *, modules: list[str] | None = None) -> None:
        super().__init__(message)
        self.modules = modules or []


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


class BadSignature(ActorNotFound):
    """Published code was refused: unsigned, signed with another secret, or tampered with.

    The worker dead-letters the message with ``reason`` (``bad_signature``); the code never ran.
    """

    reason = "bad_signature"

    def __init__(self, message: str, *, code_hash: str = "", actor_name: str = "") -> None:
        super().__init__(message)
        self.code_hash = code_hash
        self.actor_name = actor_name


class CodeNotFound(ActorNotFound):
    """The version a message names is not in the store (never published there, or deleted)."""

    reason = "unknown_actor"


class CodeLoadFailed(ActorNotFound):
    """A verified version raised while its source ran, or does not define its function."""

    reason = "load_failed"


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


class SchedulesUnavailable(NbqueueError):
    """A worker takes part in schedules, but its broker offers no store to claim their ticks in
    (``Services.tick_claims()`` answers ``None`` for it and its result backend)."""


class MiddlewareError(NbqueueError):
    """Base class for errors middleware raise on purpose; these propagate from ``before_*`` hooks."""


class SkipMessage(MiddlewareError):
    """Raise from ``before_process_message`` to skip a message without running its actor."""


class QueueJoinTimeout(NbqueueError):
    """Waiting for a queue or a worker to drain took longer than the timeout."""


class RateLimitExceeded(NbqueueError):
    """A rate limiter could not be acquired and ``raise_on_failure`` was set."""


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


class Interrupt(BaseException):
    """Base class for exceptions raised asynchronously in a worker thread.

    It derives from ``BaseException`` so that an actor's ``except Exception:`` does not swallow a
    time limit or a shutdown request by accident.
    """


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


class Shutdown(Interrupt):
    """Raised inside an actor whose worker is shutting down, when the actor opted in."""


class TimeLimitExceeded(Interrupt):
    """Raised inside an actor that ran for longer than its time limit."""


# Classes that moved here keep the module they are documented under (Dramatiq's path where
# Dramatiq has the class), so reprs, tracebacks and pickles read as they did; that module
# re-exports the class.
_HOMES: dict[str, tuple[type[BaseException], ...]] = {
    "nbqueue.middleware.base": (MiddlewareError, SkipMessage),
    "nbqueue.middleware.shutdown": (Shutdown,),
    "nbqueue.middleware.time_limit": (TimeLimitExceeded,),
    "nbqueue.remote.loader": (CodeLoadFailed, CodeNotFound),
    "nbqueue.remote.signing": (BadSignature,),
    "nbqueue.results.errors": (ResultError, ResultFailure, ResultMissing, ResultTimeout),
    "nbqueue.threading": (Interrupt,),
}
for _module, _classes in _HOMES.items():
    for _cls in _classes:
        _cls.__module__ = _module
del _module, _classes, _cls


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


class WaitTimeout(NbqueueError, TimeoutError):
    """``nbqueue.as_completed()`` ran out of time before every message finished.

    A ``TimeoutError``, as ``concurrent.futures.as_completed`` raises.

    Attributes:
      not_done: the messages that had not finished, in the order they were given.
    """

    def __init__(self, message: str, not_done: list[Any] | None = None) -> None:
        super().__init__(message)
        self.not_done: list[Any] = list(not_done or [])
