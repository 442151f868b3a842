"""The live channel: status, progress, streamed output and abort of messages, from any process.

Inside an actor::

    @nbqueue.actor
    async def agent(prompt):
        for i, token in enumerate(generate(prompt)):
            nbqueue.stream(token)            # or yield it from an async generator actor
            nbqueue.progress(i + 1, total=100, desc="generating")
            print("anything printed is captured too")

From the caller, in this process or another one that reaches the same Redis::

    message = agent.send("hello")
    message.status()                           # StatusRecord(status=MessageStatus.running, ...)
    for event in message.events(timeout=60000):  # or: async for event in message.events()
        print(event.kind, event.data)
    message.abort()

The broker needs the ``Live`` middleware (the in-memory default broker has it) and, to watch
from other processes, a ``RedisBackend`` result backend. What Dramatiq lacks and this adds is
described in ``nbqueue.live.middleware.Live``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..broker import get_broker
from ..common import current_millis
from ..context import progress, stream
from ..errors import Abort, LiveUnavailable
from .batch import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Batch,
    DoneAndNotDone,
    as_completed,
    wait,
)
from .events import EventStream
from .middleware import DEFAULT_TTL, Live, transport_for
from .status import LiveEvent, MessageStatus, Progress, StatusRecord
from .transport import TOO_LATE, Transport

if TYPE_CHECKING:
    from ..broker import Broker
    from ..message import Message

__all__ = [
    "ALL_COMPLETED",
    "Abort",
    "Batch",
    "DoneAndNotDone",
    "EventStream",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Live",
    "LiveEvent",
    "MessageStatus",
    "Progress",
    "StatusRecord",
    "abort",
    "as_completed",
    "events",
    "progress",
    "status",
    "stream",
    "transport_for",
    "wait",
]


def _resolve(message: Message[Any] | str, broker: Broker | None) -> tuple[Transport, str]:
    message_id = message if isinstance(message, str) else message.message_id
    if broker is None:
        broker = get_broker()
    try:
        transport = transport_for(broker)
    except LiveUnavailable as e:
        raise LiveUnavailable(f"Message {message_id} cannot be watched: {e}") from None
    publisher = getattr(transport, "_nbq_publisher", None)
    if publisher is not None:
        publisher.flush()  # read this process's own pending writes
    return transport, message_id


def status(message: Message[Any] | str, *, broker: Broker | None = None) -> StatusRecord | None:
    """Return the status record of a message, or ``None`` when there is none (yet, or any more).

    Parameters:
      message: the message, or its id.
      broker: the broker it was sent with (default: the global broker).

    Raises:
      LiveUnavailable: the broker has no live channel.
    """
    transport, message_id = _resolve(message, broker)
    return transport.status(message_id)


def events(
    message: Message[Any] | str,
    *,
    broker: Broker | None = None,
    follow: bool = True,
    timeout: int | None = None,
    offset: int = 0,
) -> EventStream:
    """Return the events of a message (status changes, progress and output), oldest first.

    Parameters:
      message: the message, or its id.
      broker: the broker it was sent with (default: the global broker).
      follow: wait for new events until the message finishes (or ``timeout`` passes);
        otherwise yield what is stored now and stop.
      timeout: how long to follow, in milliseconds (``None``: until the message finishes).
      offset: start after this offset, e.g. ``stream.offset`` of an earlier stream.

    Returns:
      An iterator that is also an async iterator.

    Raises:
      LiveUnavailable: the broker has no live channel.
    """
    transport, message_id = _resolve(message, broker)
    return EventStream(transport, message_id, offset=offset, follow=follow, timeout=timeout)


def abort(message: Message[Any] | str, *, broker: Broker | None = None) -> bool:
    """Abort a message: skip it if it has not started, interrupt it if it runs.

    A queued or delayed message is marked ``aborted`` at once and skipped when a worker reaches
    it (on Redis, one a worker has already taken to run counts as running, though its status
    may still say ``enqueued`` for up to 50 ms). A running async actor has its task
    cancelled; a running sync actor gets ``Abort`` raised in its thread (code blocked in a long
    C call sees it when the call returns). A worker in any process that shares the live
    channel acts within about a second. The message is not retried. Returns at once; follow
    ``events()`` to see it end.

    Parameters:
      message: the message, or its id.
      broker: the broker it was sent with (default: the global broker).

    Returns:
      False when the message had already finished, True otherwise.

    Raises:
      LiveUnavailable: the broker has no live channel.
    """
    transport, message_id = _resolve(message, broker)
    return transport.abort(message_id, ttl=DEFAULT_TTL, now=current_millis()) != TOO_LATE
