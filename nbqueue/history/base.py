"""The job history contract: what a store of past and current jobs keeps and answers.

A history outlives the live channel's records (which expire with a job's result): it keeps the
newest ``max_jobs`` jobs sent in the last ``max_age`` milliseconds, each with the fields the
JupyterLab sidebar shows and the message's JSON, enough to send it again. Writers are the live
channel's stores, as statuses change: Redis indexes its own records in the same script
(``_redis/history.py``), the embedded broker's memory store hands each change to a local
recorder (``sqlite.py``). Readers are the Jupyter server extension (``nbqueue.lab``) and
``%nbqueue jobs``.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import threading
from collections.abc import Mapping
from typing import Any

from ..common import current_millis, field_int, field_text

__all__ = [
    "DEFAULT_MAX_AGE_DAYS",
    "DEFAULT_MAX_JOBS",
    "MAX_AGE_ENV",
    "MAX_JOBS_ENV",
    "FINAL_STATUSES",
    "History",
    "HistoryJob",
    "JobQuery",
    "Limits",
    "args_summary",
    "origin",
    "set_origin",
]

#: The default bounds: the newest 10,000 jobs of the last 7 days.
DEFAULT_MAX_JOBS = 10_000
DEFAULT_MAX_AGE_DAYS = 7.0

#: The environment variables that set the bounds; ``NBQUEUE_HISTORY_MAX_JOBS=0`` turns the
#: history off.
MAX_JOBS_ENV = "NBQUEUE_HISTORY_MAX_JOBS"
MAX_AGE_ENV = "NBQUEUE_HISTORY_MAX_AGE_DAYS"

#: The statuses after which a job does not run again.
FINAL_STATUSES = frozenset({"succeeded", "failed", "skipped", "aborted", "dead"})

#: The longest args summary, in characters.
ARGS_SUMMARY = 80

DAY_MS = 86_400_000


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much a history keeps: the newest ``max_jobs`` jobs, none older than ``max_age``
    milliseconds (by enqueue time). Both are enforced on write."""

    max_jobs: int = DEFAULT_MAX_JOBS
    max_age: int = int(DEFAULT_MAX_AGE_DAYS * DAY_MS)

    def __post_init__(self) -> None:
        if self.max_jobs < 1 or self.max_age < 1:
            raise ValueError(
                f"History limits must be positive, got max_jobs={self.max_jobs} and "
                f"max_age={self.max_age} ms; set {MAX_JOBS_ENV}=0 to turn the history off."
            )

    @property
    def max_age_days(self) -> float:
        """``max_age`` in days."""
        return self.max_age / DAY_MS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits | None:
        """Read the limits from ``NBQUEUE_HISTORY_MAX_JOBS`` and ``NBQUEUE_HISTORY_MAX_AGE_DAYS``
        (defaults: 10,000 jobs, 7 days); ``None`` when the history is turned off (``0``).

        Raises:
          ValueError: a variable is not a number.
        """
        env = os.environ if env is None else env
        raw_jobs = env.get(MAX_JOBS_ENV, "").strip()
        raw_age = env.get(MAX_AGE_ENV, "").strip()
        try:
            jobs = int(raw_jobs) if raw_jobs else DEFAULT_MAX_JOBS
        except ValueError:
            raise ValueError(
                f"{MAX_JOBS_ENV}={raw_jobs!r} is not a count; set it to a number such as 10000, "
                f"or to 0 to turn the history off."
            ) from None
        try:
            days = float(raw_age) if raw_age else DEFAULT_MAX_AGE_DAYS
        except ValueError:
            raise ValueError(
                f"{MAX_AGE_ENV}={raw_age!r} is not a number of days; set it to a number such "
                f"as 7 or 0.5."
            ) from None
        if jobs <= 0 or days <= 0:
            return None
        return cls(max_jobs=jobs, max_age=max(1, int(days * DAY_MS)))


_origin_lock = threading.Lock()
_origin: tuple[str | None, str | None] | None = None


def set_origin(notebook: str | None, kernel: str | None) -> None:
    """Say which notebook (path relative to the server root) and kernel this process is; the
    notebook extension calls it when it loads. Jobs sent from here carry both."""
    global _origin
    with _origin_lock:
        _origin = (notebook or None, kernel or None)


def origin() -> tuple[str | None, str | None]:
    """Return the notebook path and kernel id jobs sent from this process carry.

    Without ``set_origin``, the notebook path is read from ``JPY_SESSION_NAME``, which
    jupyter_server sets in the environment of the kernels it starts (``None`` elsewhere), once:
    every send asks (a missing variable's lookup cost a bulk send a tenth of its time).
    """
    global _origin
    found = _origin
    if found is not None:
        return found
    with _origin_lock:
        if _origin is None:
            _origin = (os.environ.get("JPY_SESSION_NAME") or None, None)
        return _origin


def args_summary(args: Any, kwargs: Any, limit: int = ARGS_SUMMARY) -> str:
    """Return a one-line summary of a message's arguments, at most ``limit`` characters."""
    parts = [_short(a) for a in (args or ())]
    if isinstance(kwargs, Mapping):
        parts += [f"{k}={_short(v)}" for k, v in kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _short(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:39] + "\u2026"


def _worker(worker_id: str | None) -> str | None:
    """``host:pid`` of a live record's ``host:pid:worker``."""
    if not worker_id:
        return None
    return ":".join(worker_id.split(":")[:2])


def _progress(value: Any) -> dict[str, Any] | None:
    if isinstance(value, (str, bytes)) and value:
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, Mapping) or not isinstance(value.get("done"), (int, float)):
        return None
    total, desc = value.get("total"), value.get("desc")
    return {
        "done": value["done"],
        "total": total if isinstance(total, (int, float)) else None,
        "desc": desc if isinstance(desc, str) else None,
    }


@dataclasses.dataclass
class HistoryJob:
    """One job of a history, with the fields of the REST contract's ``Job`` (``nbqueue/lab/
    API.md``). Times are milliseconds since the epoch.

    Attributes:
      message: the message as sent (its JSON dict), or ``None`` when the store has none.
      error: the one-line summary of the latest failure (or the dead-letter reason).
      output: the tail of the job's printed and streamed output, where the store kept it.
      result: the value a succeeded job returned, as JSON text, where the store kept it.
      traceback: the traceback of a failed job, where the store kept it.
    """

    id: str
    status: str
    actor: str | None = None
    queue: str | None = None
    args: str = ""
    progress: dict[str, Any] | None = None
    enqueued_at: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    worker: str | None = None
    notebook: str | None = None
    kernel: str | None = None
    source: str = "local"
    retries: int = 0
    error: str | None = None
    message: dict[str, Any] | None = None
    output: str | None = None
    result: str | None = None
    traceback: str | None = None

    @property
    def duration_ms(self) -> int | None:
        """How long its latest attempt ran (so far, while running), in milliseconds."""
        if self.started_at is None:
            return None
        if self.status == "running":
            return max(0, current_millis() - self.started_at)
        if self.finished_at is None or self.finished_at < self.started_at:
            return None
        return self.finished_at - self.started_at

    @property
    def dead_reason(self) -> str | None:
        """Why a dead job was dead-lettered (``None`` for other statuses)."""
        if self.status != "dead":
            return None
        error = self.error or ""
        if error.startswith("dead-lettered ("):
            return error[len("dead-lettered (") :].split(")", 1)[0] or None
        return error or None

    def message_dict(self) -> dict[str, Any]:
        """The message as sent, or one with this job's id, queue and actor (enough to abort it
        by id) when the store kept none."""
        return {
            "queue_name": self.queue or "default",
            "actor_name": self.actor or "unknown",
            "args": [],
            "kwargs": {},
            "options": {},
            "message_id": self.id,
            "message_timestamp": self.enqueued_at or current_millis(),
            **(self.message or {}),
        }

    def to_json(self) -> dict[str, Any]:
        """The contract's ``Job`` object."""
        return {
            "id": self.id,
            "actor": self.actor,
            "queue": self.queue,
            "args": self.args,
            "status": self.status,
            "progress": self.progress,
            "enqueued_at": self.enqueued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_ms": self.duration_ms,
            "worker": self.worker,
            "notebook": self.notebook,
            "kernel": self.kernel,
            "source": self.source,
            "retries": self.retries,
            "dead_reason": self.dead_reason,
        }

    @classmethod
    def from_parts(
        cls,
        message_id: str,
        record: Mapping[Any, Any] | None,
        entry: Mapping[str, Any] | None,
        *,
        source: str,
    ) -> HistoryJob | None:
        """Build a job from a live status record's fields and a history entry (the message's
        dict with ``notebook`` and ``kernel``); ``None`` when neither says anything."""
        values = {field_text(k): v for k, v in (record or {}).items()}
        entry = entry or {}
        message = entry.get("message")
        message = message if isinstance(message, dict) else None
        status = field_text(values.get("status")) or ("enqueued" if message else None)
        if status is None:
            return None
        attempt = field_int(values.get("attempt")) or 0
        options = (message or {}).get("options") or {}
        retries = max(attempt - 1, 0) if attempt else int(options.get("retries") or 0)
        return cls(
            id=message_id,
            status=status,
            actor=field_text(values.get("actor_name")) or (message or {}).get("actor_name"),
            queue=field_text(values.get("queue_name")) or (message or {}).get("queue_name"),
            args=args_summary(message.get("args"), message.get("kwargs")) if message else "",
            progress=_progress(values.get("progress")),
            enqueued_at=field_int(values.get("enqueued_at"))
            or (message or {}).get("message_timestamp"),
            started_at=field_int(values.get("started_at")),
            finished_at=field_int(values.get("finished_at")),
            worker=_worker(field_text(values.get("worker_id"))),
            notebook=field_text(entry.get("notebook")),
            kernel=field_text(entry.get("kernel")),
            source=source,
            retries=retries,
            error=field_text(values.get("error")),
            message=message,
        )


@dataclasses.dataclass(frozen=True)
class JobQuery:
    """Which jobs to list: every given filter must match (``q`` is a message id prefix;
    ``notebooks`` the paths a notebook may be recorded under, relative or absolute)."""

    status: str | None = None
    actor: str | None = None
    queue: str | None = None
    notebooks: tuple[str, ...] = ()
    q: str | None = None
    limit: int = 200

    def matches(self, job: HistoryJob) -> bool:
        """Whether ``job`` passes every filter."""
        return (
            (not self.status or job.status == self.status)
            and (not self.actor or job.actor == self.actor)
            and (not self.queue or job.queue == self.queue)
            and (not self.notebooks or job.notebook in self.notebooks)
            and (not self.q or job.id.startswith(self.q))
        )


class History(abc.ABC):
    """Base class for history stores (see the module docstring)."""

    #: What the REST contract calls this store's ``source``: ``"local"`` or ``"redis"``.
    source = "local"

    @abc.abstractmethod
    def jobs(self, query: JobQuery | None = None) -> list[HistoryJob]:
        """Return the matching jobs, newest first (by enqueue time), at most ``query.limit``."""

    @abc.abstractmethod
    def job(self, message_id: str) -> HistoryJob | None:
        """Return one job with its message (and output tail where kept), or ``None``."""

    @abc.abstractmethod
    def version(self) -> int:
        """Return a number that grows whenever a job is added or changes status."""

    @abc.abstractmethod
    def wait(self, version: int, timeout: float) -> int:
        """Block until ``version()`` differs from ``version`` or ``timeout`` seconds passed;
        return the version then. Never a busy loop."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the store's threads and connections."""
