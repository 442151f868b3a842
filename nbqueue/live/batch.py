"""Watching many messages as one: ``as_completed()``, ``wait()`` and the ``Batch`` under them.

What ``concurrent.futures`` offers for futures, for messages::

    runs = train.send_many(grid)
    for run in nbqueue.as_completed(runs, timeout=600):      # seconds, as in concurrent.futures
        print(run.status().status, run.get_result())
    done, not_done = nbqueue.wait(runs, return_when=nbqueue.FIRST_EXCEPTION)

Nothing polls: a ``Batch`` reads every record once, then blocks on the transport's ``Watch``
(one condition in memory, ``XREAD BLOCK`` over the messages' event streams on Redis) and reads
again only the records of messages that changed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from ..broker import get_broker
from ..composition import group, pipeline
from ..errors import LiveUnavailable, WaitTimeout
from ..message import Message
from ..results import ResultFailure, ResultMissing
from . import transport as _contract
from .backends import find_results
from .middleware import transport_for
from .status import StatusRecord
from .transport import Watch

if TYPE_CHECKING:
    from ..broker import Broker
    from .transport import Transport

__all__ = [
    "ALL_COMPLETED",
    "FAILURES",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Batch",
    "DoneAndNotDone",
    "as_completed",
    "flatten",
    "wait",
]

#: ``wait(return_when=...)``: concurrent.futures' three constants, with its values.
FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"

#: The final statuses that count as an exception for ``FIRST_EXCEPTION``.
FAILURES = frozenset({"failed", "dead"})

#: How many message ids an error names before it says "and N more".
NAMED = 5


class DoneAndNotDone(NamedTuple):
    """What ``wait()`` returns: the finished messages, in the order they finished, and the
    others, in the order they were given."""

    done: list[Message[Any]]
    not_done: list[Message[Any]]


def flatten(
    messages: Message[Any] | group | Iterable[Message[Any] | group],
) -> tuple[list[Message[Any]], Broker | None]:
    """Return the messages of ``messages`` (groups flattened, duplicates dropped) and the
    broker of the first group, if any.

    Raises:
      TypeError: an item is not a message or a group (a pipeline's later messages are sent
        only when the earlier ones succeed, so it cannot be watched as a whole).
    """
    found: dict[str, Message[Any]] = {}
    broker: Broker | None = None

    def add(item: Any) -> None:
        nonlocal broker
        if isinstance(item, Message):
            found.setdefault(item.message_id, item)
        elif isinstance(item, group):
            broker = broker or item.broker
            for child in item.children:
                add(child)
        elif isinstance(item, pipeline):
            raise TypeError(
                f"Cannot watch {item!r}: its later messages are sent only when the earlier "
                f"ones succeed; watch its messages one by one with message.events()."
            )
        else:
            raise TypeError(
                f"as_completed() and wait() take messages and groups, got {item!r}; pass the "
                f"list send_many() returned, or a group after group.run()."
            )

    if isinstance(messages, (Message, group, pipeline)):
        add(messages)
    else:
        for item in messages:
            add(item)
    return list(found.values()), broker


def _names(messages: list[Message[Any]]) -> str:
    text = ", ".join(m.message_id for m in messages[:NAMED])
    if len(messages) > NAMED:
        text += f" and {len(messages) - NAMED} more"
    return text


class Batch:
    """The live status of many messages, kept current without polling.

    It reads every record once (one round trip on Redis), then ``update()`` blocks on the
    transport's watch and reads again only the records of the messages that changed.

    A message with no live record (its actor was declared with ``live=False``, or its record
    expired with its result) is looked up in the result backend once: a stored result or
    failure counts it as finished (``succeeded``/``failed``); otherwise it is ``missing`` and
    never waited for.

    Parameters:
      messages: messages and groups (see ``flatten``).
      broker: the broker they were sent with (default: a group's, else the global broker).

    Attributes:
      messages: the messages, in the order given.
      records: message id -> its latest status record (``None`` while missing).
      missing: the messages with no live record and no result.

    Raises:
      LiveUnavailable: the broker has no live channel.
      TypeError: an item is not a message or a group.
    """

    def __init__(
        self,
        messages: Message[Any] | group | Iterable[Message[Any] | group],
        *,
        broker: Broker | None = None,
    ) -> None:
        self.messages, group_broker = flatten(messages)
        self.broker = broker or group_broker or get_broker()
        try:
            self.transport: Transport = transport_for(self.broker)
        except LiveUnavailable as e:
            raise LiveUnavailable(f"These messages cannot be watched: {e}") from None
        publisher = getattr(self.transport, "_nbq_publisher", None)
        if publisher is not None:
            publisher.flush()  # this process's own pending writes first
        self._by_id = {m.message_id: m for m in self.messages}
        self.records: dict[str, StatusRecord | None] = {}
        self.missing: list[Message[Any]] = []
        self._finished: list[Message[Any]] = []  # in the order they finished, not yet taken
        self._unfinished: dict[str, Message[Any]] = {}
        records = self.transport.statuses([m.message_id for m in self.messages])
        for message, record in zip(self.messages, records, strict=True):
            if record is None:
                record = self._from_results(message)
            self.records[message.message_id] = record
            if record is None:
                self.missing.append(message)
            elif record.finished:
                self._finished.append(message)
            else:
                self._unfinished[message.message_id] = message
        self._watch: Watch | None = self.transport.watch(
            {i: self.records[i].offset for i in self._unfinished}  # type: ignore[union-attr]
        )

    def __repr__(self) -> str:
        return f"Batch(messages={len(self.messages)}, unfinished={len(self._unfinished)})"

    def _from_results(self, message: Message[Any]) -> StatusRecord | None:
        results = find_results(self.broker)
        if results is None:
            return None
        try:
            message.get_result(backend=results.backend)
            status = "succeeded"
        except ResultFailure:
            status = "failed"
        except ResultMissing:
            return None
        fields = {"status": status, "actor_name": message.actor_name}
        return StatusRecord.from_fields(message.message_id, fields)

    @property
    def unfinished(self) -> list[Message[Any]]:
        """The messages still being waited for, in the order given."""
        return list(self._unfinished.values())

    def take_finished(self) -> list[Message[Any]]:
        """Return the messages that finished since the last call, in the order they finished."""
        taken, self._finished = self._finished, []
        return taken

    def update(self, block: float) -> list[str]:
        """Wait up to ``block`` seconds (at most ``WAIT_BLOCK`` at once) for any unfinished
        message to change status; read the records of those that did.

        Returns:
          The ids whose record changed (may be empty when the wait ran out).
        """
        if not self._unfinished or self._watch is None:
            return []
        ids = [
            i for i in self._watch.wait(min(block, _contract.WAIT_BLOCK)) if i in self._unfinished
        ]
        if not ids:
            return []
        changed = []
        for message_id, record in zip(ids, self.transport.statuses(ids), strict=True):
            if record is None:  # expired while waited for: ask the results once more
                record = self._from_results(self._by_id[message_id])
                if record is None:
                    self.missing.append(self._unfinished.pop(message_id))
                    self._watch.discard(message_id)
                    self.records[message_id] = None
                    changed.append(message_id)
                    continue
            if record != self.records.get(message_id):
                changed.append(message_id)
            self.records[message_id] = record
            if record.finished:
                self._finished.append(self._unfinished.pop(message_id))
                self._watch.discard(message_id)
        return changed

    def close(self) -> None:
        """Stop watching (releases the watch's threads and connections)."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()

    def check_missing(self) -> None:
        """Raise when some messages have no live record, rather than wait for them forever.

        Raises:
          LiveUnavailable: naming them.
        """
        if self.missing:
            self.close()
            raise LiveUnavailable(
                f"{len(self.missing)} of {len(self.messages)} messages have no live record "
                f"and no stored result ({_names(self.missing)}): their actor was declared "
                f"with live=False, or their record expired; wait for each with "
                f"message.get_result(block=True) instead."
            )

    def timeout_error(self, timeout: float) -> WaitTimeout:
        """The error for a deadline that passed with messages unfinished."""
        unfinished = self.unfinished
        return WaitTimeout(
            f"{len(unfinished)} of {len(self.messages)} messages did not finish within "
            f"{timeout:g} s ({_names(unfinished)}); wait longer with a larger timeout (in "
            f"seconds), or timeout=None.",
            unfinished,
        )


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float:
    return _contract.WAIT_BLOCK if deadline is None else deadline - time.monotonic()


def as_completed(
    messages: Message[Any] | group | Iterable[Message[Any] | group],
    timeout: float | None = None,
    *,
    broker: Broker | None = None,
) -> Iterator[Message[Any]]:
    """Yield each message as it finishes, in the order they finish (nbqueue addition).

    Like ``concurrent.futures.as_completed``: messages already finished come first, then each
    one the moment it reaches a final status (succeeded, failed, skipped, aborted or dead),
    whichever way it ended; read ``message.get_result()`` or ``message.status()`` to tell.
    Groups are flattened into their messages (run them first); a message given twice is
    yielded once. Nothing polls: the wait blocks on the live channel.

    Parameters:
      messages: the messages (the list ``send_many()`` returns) and groups.
      timeout: how long to wait for all of them, in **seconds**, counted from this call;
        ``None``: no limit. Seconds, unlike Dramatiq's ``get_result(timeout=)`` (milliseconds),
        because the name and signature are concurrent.futures': code moved from there keeps
        its numbers, where milliseconds would turn ``timeout=60`` into 60 ms.
      broker: the broker they were sent with (default: a group's, else the global broker).

    Raises:
      WaitTimeout: a ``TimeoutError``, when ``timeout`` passes first; it names the unfinished
        messages (``not_done``).
      LiveUnavailable: at once, when the broker has no live channel, or some messages have no
        live record (actor declared with ``live=False``, record expired) and no stored result:
        waiting for those could never end.
      TypeError: an item is not a message or a group.
    """
    batch = Batch(messages, broker=broker)
    batch.check_missing()
    return _as_completed(batch, _deadline(timeout), timeout)


def _as_completed(
    batch: Batch, deadline: float | None, timeout: float | None
) -> Iterator[Message[Any]]:
    try:
        yield from batch.take_finished()
        while batch.unfinished:
            remaining = _remaining(deadline)
            if remaining <= 0:
                assert timeout is not None
                raise batch.timeout_error(timeout)
            batch.update(remaining)
            yield from batch.take_finished()
            batch.check_missing()
    finally:
        batch.close()


def wait(
    messages: Message[Any] | group | Iterable[Message[Any] | group],
    timeout: float | None = None,
    return_when: str = ALL_COMPLETED,
    *,
    broker: Broker | None = None,
) -> DoneAndNotDone:
    """Wait until all (or the first, or the first failed) of the messages finish (nbqueue
    addition).

    Like ``concurrent.futures.wait``; it blocks on the live channel, never polls.

    Parameters:
      messages: the messages (the list ``send_many()`` returns) and groups.
      timeout: the longest wait, in **seconds** (as in concurrent.futures); when it passes,
        ``wait`` returns what is done so far without raising. ``None``: no limit.
      return_when: ``ALL_COMPLETED``; ``FIRST_COMPLETED`` (any finished message, also one
        finished before the call); ``FIRST_EXCEPTION`` (a message ``failed`` or ``dead``,
        else all).
      broker: the broker they were sent with (default: a group's, else the global broker).

    Returns:
      ``(done, not_done)``: lists (messages are not hashable), ``done`` in the order they
      finished, ``not_done`` in the order given.

    Raises:
      ValueError: ``return_when`` is not one of the three.
      LiveUnavailable: as for ``as_completed()``.
    """
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise ValueError(
            f"return_when={return_when!r} is not one of nbqueue.ALL_COMPLETED, "
            f"FIRST_COMPLETED or FIRST_EXCEPTION; pass one of those."
        )
    deadline = _deadline(timeout)
    batch = Batch(messages, broker=broker)
    done: list[Message[Any]] = []
    try:
        batch.check_missing()
        while True:
            done += batch.take_finished()
            if not batch.unfinished:
                break
            if return_when == FIRST_COMPLETED and done:
                break
            if return_when == FIRST_EXCEPTION and any(_status(batch, m) in FAILURES for m in done):
                break
            remaining = _remaining(deadline)
            if remaining <= 0:
                break
            batch.update(remaining)
            batch.check_missing()
    finally:
        batch.close()
    return DoneAndNotDone(done, batch.unfinished)


def _status(batch: Batch, message: Message[Any]) -> str | None:
    record = batch.records.get(message.message_id)
    return None if record is None else str(record.status)
