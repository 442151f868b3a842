"""What the live channel says about a message: its status, its status record and its events."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from typing import Any

from ..common import current_millis, field_int, field_text

__all__ = [
    "FINISHED",
    "LiveEvent",
    "MessageStatus",
    "Progress",
    "StatusRecord",
]


class MessageStatus(str, enum.Enum):
    """Where a message is in its life. Widgets and callers compare against these members.

    ``enqueued`` and ``delayed`` are written by the producer; the rest by the worker.
    ``retrying`` means the last attempt failed and another is scheduled. The finished states
    are ``succeeded``, ``failed`` (the actor raised and will not run again), ``skipped`` (a
    middleware skipped it), ``aborted`` (``message.abort()``) and ``dead`` (dead-lettered
    without its actor failing: unknown actor, too old, ...).
    """

    enqueued = "enqueued"
    delayed = "delayed"
    running = "running"
    retrying = "retrying"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    aborted = "aborted"
    dead = "dead"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        """Whether the message will not run again (on its own)."""
        return self.value in FINISHED


#: The statuses after which a message does not run again.
FINISHED = frozenset({"succeeded", "failed", "skipped", "aborted", "dead"})


@dataclasses.dataclass(frozen=True)
class Progress:
    """The latest ``nbqueue.progress()`` report of a running actor.

    Attributes:
      done: how much is done, in the actor's own unit.
      total: how much there is in all, or ``None`` when unknown.
      desc: a short description of the current step.
    """

    done: float
    total: float | None = None
    desc: str | None = None

    @property
    def fraction(self) -> float | None:
        """``done / total`` clamped to [0, 1], or ``None`` when the total is unknown or zero."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    @classmethod
    def from_data(cls, data: Any) -> Progress | None:
        """Build a progress report from its event data, or return ``None`` when malformed."""
        if not isinstance(data, Mapping) or not isinstance(data.get("done"), (int, float)):
            return None
        total, desc = data.get("total"), data.get("desc")
        return cls(
            done=data["done"],
            total=total if isinstance(total, (int, float)) else None,
            desc=desc if isinstance(desc, str) else None,
        )


@dataclasses.dataclass(frozen=True)
class StatusRecord:
    """A message's status record, as ``message.status()`` returns it.

    Times are milliseconds since the epoch. The record expires with the message's result
    (``result_ttl``).

    Attributes:
      message_id: the message it describes.
      status: where the message is in its life.
      actor_name, queue_name: what the producer sent (``None`` if the producer wrote nothing).
      enqueued_at: when it was first enqueued.
      started_at: when its latest attempt started.
      finished_at: when it finished (or its latest attempt failed, when ``retrying``).
      attempt: 1 for the first run, 2 for the first retry, ...; 0 before it ran.
      worker_id: ``"<host>:<pid>:<worker>"`` of the worker that ran the latest attempt.
      error: a one-line summary of the latest failure, or why it was dead-lettered.
      eta: when a delayed or retrying message is due.
      progress: the latest ``nbqueue.progress()`` report.
      abort_requested: whether ``abort()`` was called.
      offset: the offset of its latest event; ``events(offset=...)`` resumes after it.
    """

    message_id: str
    status: MessageStatus
    actor_name: str | None = None
    queue_name: str | None = None
    enqueued_at: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    attempt: int = 0
    worker_id: str | None = None
    error: str | None = None
    eta: int | None = None
    progress: Progress | None = None
    abort_requested: bool = False
    offset: int = 0

    @property
    def finished(self) -> bool:
        """Whether the message will not run again."""
        return self.status.finished

    @property
    def duration(self) -> int | None:
        """How long its latest attempt ran, in milliseconds (so far, while running)."""
        if self.started_at is None:
            return None
        if self.status is MessageStatus.running:
            return max(0, current_millis() - self.started_at)
        if self.finished_at is None or self.finished_at < self.started_at:
            return None
        return self.finished_at - self.started_at

    @classmethod
    def from_fields(cls, message_id: str, fields: Mapping[Any, Any]) -> StatusRecord | None:
        """Build a record from stored fields (strings or bytes from Redis, or plain values).

        Returns:
          The record, or ``None`` when the fields hold no status.
        """
        values = {field_text(k): v for k, v in fields.items()}
        try:
            status = MessageStatus(field_text(values.get("status")))
        except ValueError:
            return None
        progress = values.get("progress")
        if isinstance(progress, (str, bytes)) and progress:
            try:
                progress = json.loads(progress)
            except ValueError:
                progress = None
        return cls(
            message_id=message_id,
            status=status,
            actor_name=field_text(values.get("actor_name")),
            queue_name=field_text(values.get("queue_name")),
            enqueued_at=field_int(values.get("enqueued_at")),
            started_at=field_int(values.get("started_at")),
            finished_at=field_int(values.get("finished_at")),
            attempt=field_int(values.get("attempt")) or 0,
            worker_id=field_text(values.get("worker_id")),
            error=field_text(values.get("error")),
            eta=field_int(values.get("eta")),
            progress=Progress.from_data(progress),
            abort_requested=bool(field_text(values.get("abort"))),
            offset=field_int(values.get("seq")) or 0,
        )


@dataclasses.dataclass(frozen=True)
class LiveEvent:
    """One event of a message, as ``message.events()`` yields them, oldest first.

    Kinds and their data:

    * ``"status"``: ``{"status": ..., "attempt": ..., ...}``, a change of status;
    * ``"progress"``: ``{"done": ..., "total": ..., "desc": ...}``, coalesced to a few a second;
    * ``"output"``: ``{"text": ..., "stream": "stdout" | "stderr" | "stream"}`` for text, or
      ``{"value": ..., "stream": "stream"}`` for a JSON value passed to ``nbqueue.stream()`` or
      yielded by an async generator actor. Consecutive text chunks may arrive merged;
    * ``"dropped"``: ``{"events": n}``, ``n`` older events were dropped to bound memory.

    Attributes:
      offset: increases by one per stored event; pass it to ``events(offset=...)`` to resume.
      kind: one of the kinds above.
      data: the event's data.
      time: when it was written, in milliseconds since the epoch.
    """

    offset: int
    kind: str
    data: dict[str, Any]
    time: int = 0

    @property
    def status(self) -> MessageStatus | None:
        """The new status, for a status event."""
        if self.kind != "status":
            return None
        try:
            return MessageStatus(self.data.get("status"))
        except ValueError:
            return None

    @property
    def text(self) -> str:
        """The text of an output event ("" for other kinds, ``str(value)`` for values)."""
        if self.kind != "output":
            return ""
        if "text" in self.data:
            return str(self.data["text"])
        return str(self.data.get("value"))

    @property
    def progress(self) -> Progress | None:
        """The report, for a progress event."""
        return Progress.from_data(self.data) if self.kind == "progress" else None
