"""Messages: what a broker carries from a producer to a worker.

The process-global encoder lives in ``nbqueue.encoder``; ``get_encoder`` and ``set_encoder`` are
re-exported here, at Dramatiq's path.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import threading
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from . import encoder as _encoder
from .common import current_millis
from .encoder import MessageData, get_encoder, set_encoder
from .errors import DecodeError, MessageTooLarge, ResultTimeout

if TYPE_CHECKING:
    from .broker import Broker
    from .composition import pipeline
    from .live import EventStream, StatusRecord
    from .results import ResultBackend

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FROM_ENVIRONMENT",
    "Message",
    "MessageList",
    "check_message_size",
    "generate_unique_id",
    "get_encoder",
    "resolve_max_message_size",
    "set_encoder",
    "too_large_text",
]

R = TypeVar("R")

_FIELDS = (
    "queue_name",
    "actor_name",
    "args",
    "kwargs",
    "options",
    "message_id",
    "message_timestamp",
)


#: The default ``max_message_size`` of every broker: 16 MiB of encoded body. Far above any
#: message that carries ids or paths (Dramatiq's advice: send ids, not objects), far below the
#: hard ceilings (RabbitMQ's own ``max_message_size`` defaults to 128 MiB, a Redis string to
#: 512 MB) and high enough that a message a Dramatiq producer could reasonably send still runs;
#: every worker holds each prefetched body in memory, and a queue of huge bodies slows every
#: consumer of the server, which is why Celery and Sidekiq (GitLab caps jobs, compressing above
#: 100 KB) advise passing large data by reference.
DEFAULT_MAX_MESSAGE_SIZE = 16 << 20

#: The environment variable that sets the default ``max_message_size`` of brokers built in
#: this process (bytes, or with a ``K``/``M``/``G`` suffix, binary; ``0`` or ``none`` disables).
MAX_MESSAGE_SIZE_ENV = "NBQUEUE_MAX_MESSAGE_SIZE"

_SIZE_RE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)


class _FromEnvironment:
    def __repr__(self) -> str:
        return f"<{MAX_MESSAGE_SIZE_ENV} or {DEFAULT_MAX_MESSAGE_SIZE}>"


#: A broker's ``max_message_size`` default: ``$NBQUEUE_MAX_MESSAGE_SIZE`` when set, else 16 MiB.
FROM_ENVIRONMENT: Any = _FromEnvironment()


def resolve_max_message_size(value: int | None | _FromEnvironment = FROM_ENVIRONMENT) -> int | None:
    """Resolve a broker's ``max_message_size`` argument to bytes, or ``None`` for no limit.

    ``FROM_ENVIRONMENT`` (the brokers' default) reads ``NBQUEUE_MAX_MESSAGE_SIZE`` now, falling
    back to ``DEFAULT_MAX_MESSAGE_SIZE``; ``None`` and 0 disable the limit.

    Raises:
      ValueError: the value (or the environment variable) is not a size.
    """
    if isinstance(value, _FromEnvironment):
        raw = os.environ.get(MAX_MESSAGE_SIZE_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_MESSAGE_SIZE
        if raw.lower() in ("0", "none", "off"):
            return None
        match = _SIZE_RE.fullmatch(raw)
        if match is None:
            raise ValueError(
                f"{MAX_MESSAGE_SIZE_ENV}={raw!r} is not a size; set it to a number of bytes "
                f"(e.g. 16777216 or 16M), or to 0 for no limit."
            )
        shift = {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2).lower()]
        return int(match.group(1)) << shift or None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"max_message_size must be a number of bytes (or None for no limit), got {value!r}."
        )
    return value or None


def _mib(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.1f} {unit} ({size} bytes)"
    return f"{size} bytes"


def check_message_size(message: Message[Any], data: bytes, limit: int | None) -> None:
    """Raise ``MessageTooLarge`` when ``data`` (``message`` encoded) is above ``limit`` bytes.

    Raises:
      MessageTooLarge: naming the actor, the size, the limit and what to do instead.
    """
    size = len(data)
    if limit is not None and size > limit:
        raise MessageTooLarge(
            f"A message for actor {message.actor_name!r} is {_mib(size)} encoded, above this "
            f"broker's max_message_size of {_mib(limit)}; pass large data by reference (a file "
            f"path, a URL or a database key) instead of as an argument, or raise the limit "
            f"with max_message_size= or {MAX_MESSAGE_SIZE_ENV}.",
            actor_name=message.actor_name,
            size=size,
            limit=limit,
        )


def too_large_text(queue_name: str, size: int, limit: int) -> str:
    """The error stored with a message dead-lettered ``too_large`` (its body was not read)."""
    return (
        f"A message of {_mib(size)} on {queue_name!r} is above this broker's max_message_size "
        f"of {_mib(limit)}, so it was dead-lettered unread; its producer should pass large data "
        f"by reference (a path or URL), or raise max_message_size on both sides."
    )


#: Random bytes are drawn from the OS for this many ids at once, per thread.
_IDS_PER_DRAW = 64
_random = threading.local()


def _forget_random_after_fork() -> None:
    # A child must never reuse the random bytes its parent drew: their ids would collide.
    global _random
    _random = threading.local()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_random_after_fork)


def generate_unique_id() -> str:
    """Return a new message id: a random uuid4 string, like ``str(uuid.uuid4())`` (from
    ``os.urandom`` too) but about three times faster, since every message sent needs one."""
    local = _random
    try:
        h = local.pool.pop()
    except (AttributeError, IndexError):
        raw = os.urandom(16 * _IDS_PER_DRAW).hex()
        local.pool = [raw[i : i + 32] for i in range(0, len(raw), 32)]
        h = local.pool.pop()
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


_MISSING: Any = object()


@dataclasses.dataclass(frozen=True, init=False)
class Message(Generic[R]):
    """A message: which actor to run, with which arguments, on which queue.

    The seven fields are exactly Dramatiq's, so messages are wire-compatible. ``options`` is a dict
    that middleware may change in place even though the message itself is frozen.

    Parameters:
      queue_name: the queue the message is (or will be) on.
      actor_name: the name of the actor that runs it.
      args: positional arguments (a tuple; JSON lists decode to tuples).
      kwargs: keyword arguments.
      options: broker and middleware options (``eta``, ``retries``, ``max_retries``, ...).
      message_id: stable across retries and delays; results are keyed by it.
      message_timestamp: creation time in milliseconds since the epoch.
    """

    queue_name: str
    actor_name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    message_id: str = dataclasses.field(default_factory=generate_unique_id)
    message_timestamp: int = dataclasses.field(default_factory=current_millis)

    def __init__(
        self,
        queue_name: str,
        actor_name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        message_id: str = _MISSING,
        message_timestamp: int = _MISSING,
    ) -> None:
        # Written by hand, not generated: a frozen dataclass's __init__ sets each field through
        # object.__setattr__, which made it a fifth of the cost of a send.
        fields = self.__dict__
        fields["queue_name"] = queue_name
        fields["actor_name"] = actor_name
        # JSON decodes args as a list; callers may pass any iterable despite the annotation
        fields["args"] = args if type(args) is tuple else tuple(args)
        fields["kwargs"] = kwargs
        fields["options"] = options
        fields["message_id"] = generate_unique_id() if message_id is _MISSING else message_id
        fields["message_timestamp"] = (
            current_millis() if message_timestamp is _MISSING else message_timestamp
        )

    @classmethod
    def decode(cls, data: bytes) -> Message[Any]:
        """Decode a message from bytes with the global encoder.

        Raises:
          DecodeError: with ``reason="undecodable"`` when the bytes cannot be decoded, and
            ``reason="invalid"`` when they decode to something that is not a message.
        """
        fields = _encoder.global_encoder.decode(data)
        return cls.from_dict(fields, data=data)

    @classmethod
    def from_dict(cls, fields: Any, *, data: Any = None) -> Message[Any]:
        """Build a message from its dict form, checking that it is well formed.

        Raises:
          DecodeError: with ``reason="invalid"``.
        """

        if (
            type(fields) is dict
            and len(fields) == 7
            and type(fields.get("queue_name")) is str
            and type(fields.get("actor_name")) is str
            and type(fields.get("args")) is list
            and type(fields.get("kwargs")) is dict
            and type(fields.get("options")) is dict
            and type(fields.get("message_id")) is str
            and type(fields.get("message_timestamp")) is int
            and fields["queue_name"]
            and fields["actor_name"]
            and (not fields["kwargs"] or all(type(key) is str for key in fields["kwargs"]))
        ):
            # The fast path: a well-formed body as every producer writes it (seven known keys,
            # since the length is seven and all seven were found). The fields are checked, so
            # they are set directly: the frozen dataclass's __init__ costs more than the decode.
            message = object.__new__(cls)
            message.__dict__.update(fields)
            message.__dict__["args"] = tuple(fields["args"])
            return message

        def invalid(why: str) -> DecodeError:
            return DecodeError(
                f"Message is invalid: {why}; it was dead-lettered.",
                data if data is not None else fields,
                reason="invalid",
            )

        if not isinstance(fields, Mapping):
            raise invalid(f"expected a JSON object, got {type(fields).__name__}")
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise invalid(f"unknown fields {sorted(unknown)!r}")
        for name, types in (
            ("queue_name", str),
            ("actor_name", str),
            ("args", (list, tuple)),
            ("kwargs", dict),
            ("options", dict),
        ):
            if name not in fields:
                raise invalid(f"the field {name!r} is missing")
            if not isinstance(fields[name], types):
                raise invalid(f"the field {name!r} has the wrong type")
        if not fields["queue_name"] or not fields["actor_name"]:
            raise invalid("queue_name and actor_name must not be empty")
        if "message_id" in fields and not isinstance(fields["message_id"], str):
            raise invalid("the field 'message_id' must be a string")
        timestamp = fields.get("message_timestamp", 0)
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
            raise invalid("the field 'message_timestamp' must be a number")
        if any(not isinstance(key, str) for key in fields["kwargs"]):
            raise invalid("kwargs keys must be strings")
        values = dict(fields)
        if "message_timestamp" in values:
            values["message_timestamp"] = int(values["message_timestamp"])
        return cls(**values)

    def encode(self) -> bytes:
        """Encode this message to bytes with the global encoder.

        Raises:
          EncodeError: naming the argument or option that cannot be encoded.
        """
        return _encoder.global_encoder.encode(self.asdict())

    def asdict(self) -> MessageData:
        """Return the message as a dict (``options`` is the same dict, not a copy)."""
        return {
            "queue_name": self.queue_name,
            "actor_name": self.actor_name,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "message_id": self.message_id,
            "message_timestamp": self.message_timestamp,
        }

    # namedtuple-style API, kept for code written against old Dramatiq versions
    _fields: ClassVar[tuple[str, ...]] = _FIELDS
    _field_defaults: ClassVar[dict[str, Any]] = {}

    def _asdict(self) -> MessageData:
        return self.asdict()

    def _replace(self, **changes: Any) -> Message[R]:
        return dataclasses.replace(self, **changes)

    def copy(self, **attributes: Any) -> Message[R]:
        """Return a copy with some attributes replaced; ``options=`` is merged into the options."""
        updated_options = attributes.pop("options", {})
        options = {**self.options, **updated_options}
        return dataclasses.replace(self, **attributes, options=options)

    def get_result(
        self,
        *,
        backend: ResultBackend | None = None,
        block: bool = False,
        timeout: int | None = None,
    ) -> R:
        """Get the result of this message from a result backend.

        Parameters:
          backend: defaults to the global broker's Results backend.
          block: wait for the result.
          timeout: how long to wait, in milliseconds (default 10 seconds).

        Raises:
          RuntimeError: when no backend is given and the broker has no Results middleware.
          ResultMissing: the result is not there (and ``block`` is False).
          ResultTimeout: the result did not arrive in time.
          ResultFailure: the actor failed; the failure is described, never re-raised by type.
        """
        if backend is None:
            # Dramatiq's convenience: the broker builds on messages, so it is imported late.
            from .broker import get_broker

            backend = get_broker().get_results_backend()
        result: R = backend.get_result(self, block=block, timeout=timeout)
        return result

    def status(self, *, broker: Broker | None = None) -> StatusRecord | None:
        """Return this message's status record from the live channel (nbqueue addition).

        Parameters:
          broker: the broker it was sent with (default: the global broker).

        Returns:
          The record (``record.status`` is a ``MessageStatus``), or ``None`` when there is none
          yet or any more (records expire with the result).

        Raises:
          LiveUnavailable: the broker has no ``Live`` middleware or live-capable backend.
        """
        # A convenience over the live channel, which builds on messages (imported late).
        from .live import status

        return status(self, broker=broker)

    def events(
        self,
        *,
        broker: Broker | None = None,
        follow: bool = True,
        timeout: int | None = None,
        offset: int = 0,
    ) -> EventStream:
        """Return this message's status changes, progress and output, oldest first (nbqueue
        addition).

        The result is an iterator and an async iterator. With ``follow`` it waits for new events
        until the message finishes or ``timeout`` passes, then stops without raising.

        Parameters:
          broker: the broker it was sent with (default: the global broker).
          follow: wait for new events; otherwise yield what is stored now and stop.
          timeout: how long to follow, in milliseconds (``None``: until the message finishes).
          offset: start after this offset (``stream.offset`` of an earlier stream resumes it).

        Raises:
          LiveUnavailable: the broker has no ``Live`` middleware or live-capable backend.
        """
        # A convenience over the live channel, which builds on messages (imported late).
        from .live import events

        return events(self, broker=broker, follow=follow, timeout=timeout, offset=offset)

    def abort(self, *, broker: Broker | None = None) -> bool:
        """Abort this message: skip it if it has not started, interrupt it if it runs (nbqueue
        addition). It is never retried. Returns at once.

        Parameters:
          broker: the broker it was sent with (default: the global broker).

        Returns:
          False when the message had already finished, True otherwise.

        Raises:
          LiveUnavailable: the broker has no ``Live`` middleware or live-capable backend.
        """
        # A convenience over the live channel, which builds on messages (imported late).
        from .live import abort

        return abort(self, broker=broker)

    def __await__(self) -> Generator[Any, None, R]:
        """``await message`` waits for its result without blocking the event loop (nbqueue
        addition), as ``get_result(block=True)`` does from the global broker's backend.

        It waits until the result is stored; wrap it in ``asyncio.wait_for`` for a deadline.
        Cancelling it (Ctrl-C in a notebook) stops the wait within about a second.

        Raises:
          ResultFailure: the actor failed.
        """
        return _await_result(self).__await__()

    @property
    def message_datetime(self) -> datetime.datetime:
        """The message's creation time as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(
            self.message_timestamp / 1000, tz=datetime.timezone.utc
        )

    def __or__(self, other: Any) -> pipeline:
        # Dramatiq's ``a | b``: pipelines are built of messages, so composition is imported late.
        from .composition import pipeline

        return pipeline([self, other])

    def __lt__(self, other: Message[Any]) -> bool:
        return (self.message_timestamp, self.message_id) < (
            other.message_timestamp,
            other.message_id,
        )

    def __str__(self) -> str:
        params = ", ".join(repr(arg) for arg in self.args)
        if self.kwargs:
            kw = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
            params = f"{params}, {kw}" if params else kw
        return f"{self.actor_name}({params})"


async def _await_result(message: Message[R]) -> R:
    import asyncio
    import functools

    loop = asyncio.get_running_loop()
    wait = functools.partial(message.get_result, block=True, timeout=1000)
    while True:
        # Short waits in a thread: a cancelled await leaves no thread blocked for long.
        try:
            return await loop.run_in_executor(None, wait)
        except ResultTimeout:
            continue


class MessageList(list[Message[R]]):
    """The list ``send_many()`` returns: a plain ``list`` of messages in every way (equal to a
    list with the same messages, sliced into plain lists), of its own type only so that a
    notebook (``%load_ext nbqueue``) displays it as one live view of the whole batch."""

    __slots__ = ()
