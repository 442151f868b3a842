"""Reading a message's events: an iterator that is also an async iterator."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from .status import LiveEvent
from .transport import Transport

__all__ = ["EventStream"]

#: The longest a single blocking read waits, in seconds, so that deadlines and Ctrl-C are
#: honoured and a finished message is noticed even if its final event was missed.
READ_CHUNK = 1.0


class EventStream:
    """A message's events, oldest first, from ``message.events()``.

    Use it as an iterator (``for event in message.events(): ...``, which blocks) or as an async
    iterator (``async for event in message.events(): ...``, which waits in a thread, never on
    the event loop). With ``follow`` it waits for new events until the message finishes (its
    final status event is the last one yielded) or ``timeout`` passes; then it stops without
    raising, and ``finished`` tells which.

    Older events may have been dropped to bound memory; a ``dropped`` event stands in for them.
    One stream serves one reader at a time.

    Parameters:
      transport: where the events are.
      message_id: the message.
      offset: yield the events after this offset (0: from the first).
      follow: wait for new events; otherwise yield what is stored and stop.
      timeout: how long to follow, in milliseconds (``None``: until the message finishes).

    Attributes:
      offset: the offset of the last event yielded; pass it to ``events(offset=...)`` to
        resume.
      finished: whether the message reached a final status.
    """

    def __init__(
        self,
        transport: Transport,
        message_id: str,
        *,
        offset: int = 0,
        follow: bool = True,
        timeout: int | None = None,
    ) -> None:
        self.transport = transport
        self.message_id = message_id
        self.offset = offset
        self.follow = follow
        self.finished = False
        self._cursor = offset
        self._deadline = None if timeout is None else time.monotonic() + timeout / 1000
        self._buffer: deque[LiveEvent] = deque()
        self._done = False
        self._checked = False

    def __repr__(self) -> str:
        return f"EventStream({self.message_id!r}, offset={self.offset})"

    def _take(self, events: list[LiveEvent]) -> None:
        first = events[0]
        if first.offset > self._cursor + 1:
            missed = first.offset - self._cursor - 1
            self._buffer.append(
                LiveEvent(first.offset - 1, "dropped", {"events": missed}, first.time)
            )
        for event in events:
            self._buffer.append(event)
            self._cursor = event.offset
            status = event.status
            if self.follow and status is not None and status.finished:
                self.finished = self._done = True
                return

    def _fill(self) -> None:
        """Read the next batch into the buffer (blocking when following), or mark the end."""
        if not self.follow:
            events = self.transport.read(self.message_id, self._cursor, block=None)
            if events:
                self._take(events)
            else:
                self._done = True
            return
        while True:
            remaining = None
            if self._deadline is not None:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    self._done = True
                    return
            if not self._checked:
                self._checked = True
                record = self.transport.status(self.message_id)
                if record is not None and record.finished and record.offset <= self._cursor:
                    self.finished = self._done = True
                    return
            block = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
            events = self.transport.read(self.message_id, self._cursor, block=block)
            if events:
                self._take(events)
                return
            self._checked = False  # nothing came: look at the record again

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> LiveEvent:
        while not self._buffer:
            if self._done:
                raise StopIteration
            self._fill()
        event = self._buffer.popleft()
        self.offset = event.offset
        return event

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> LiveEvent:
        while not self._buffer:
            if self._done:
                raise StopAsyncIteration
            await asyncio.get_running_loop().run_in_executor(None, self._fill)
        event = self._buffer.popleft()
        self.offset = event.offset
        return event
