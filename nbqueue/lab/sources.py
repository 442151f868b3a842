"""Where the Jupyter server reads jobs from: the local SQLite history and a Redis namespace.

Every method here blocks (SQLite, Redis); the handlers call them off the IOLoop.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..broker import Broker
from ..common import current_millis, q_name, redact_url
from ..errors import ResultFailure, ResultMissing
from ..history import actions
from ..history.base import History, HistoryJob, JobQuery
from ..history.sqlite import SQLiteHistory
from ..live.middleware import transport_for
from ..message import Message, generate_unique_id
from ..schedule_control import fleet_schedules
from ..worker import workers

__all__ = ["ActionRefused", "LocalSource", "RedisSource", "Source"]

logger = logging.getLogger("nbqueue.lab")

#: The longest ``result_repr``, in characters.
RESULT_REPR = 4096

#: How long a kernel counts as running after its last heartbeat in the history, in ms.
KERNEL_ALIVE = 15_000


class ActionRefused(Exception):
    """An action that does not apply to the job (the handler answers 409 with the message)."""


class Source:
    """One place jobs are read from, named as the REST contract's ``source``."""

    name = "local"
    url = ""
    history: History | None = None
    error: str | None = None

    def describe(self) -> dict[str, Any]:
        """The contract's ``sources`` entry."""
        return {"name": self.name, "url": self.url, "ok": self.error is None, "error": self.error}

    def jobs(self, query: JobQuery) -> list[HistoryJob]:
        return [] if self.history is None else self.history.jobs(query)

    def job(self, message_id: str) -> HistoryJob | None:
        return None if self.history is None else self.history.job(message_id)

    def version(self) -> int:
        return 0 if self.history is None else self.history.version()

    def details(self, job: HistoryJob) -> dict[str, Any]:
        """The detail fields beyond ``Job``: output tail, result, error."""
        result = None
        if job.result is not None:
            try:
                result = json.loads(job.result)
            except ValueError:
                result = None
        return {
            "output": job.output or "",
            "result": result,
            "result_repr": None if job.result is None else _repr(result),
            "error": _error(job, job.traceback),
            "events_truncated": False,
        }

    def queues(self) -> list[dict[str, Any]]:
        return []

    def workers(self) -> list[dict[str, Any]]:
        """The contract's ``workers`` rows (the embedded workers of kernels publish to their
        own process only: a local source has none to show)."""
        return []

    def schedules(self) -> list[dict[str, Any]]:
        """The contract's ``schedules`` rows: those the source's live workers take part in."""
        return []

    def cancel(self, job: HistoryJob) -> None:
        raise NotImplementedError

    def retry(self, job: HistoryJob) -> str:
        raise NotImplementedError

    def requeue(self, job: HistoryJob) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.history is not None:
            self.history.close()


def _repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= RESULT_REPR else text[: RESULT_REPR - 1] + "\u2026"


def _error(job: HistoryJob, traceback: str | None = None) -> dict[str, Any] | None:
    if job.status not in ("failed", "dead", "aborted", "retrying") or not job.error:
        return None
    kind, _, text = job.error.partition(": ")
    if not text or " " in kind:
        kind, text = "", job.error
    return {"type": kind or None, "message": text, "traceback": traceback}


class LocalSource(Source):
    """The embedded broker's jobs, from the SQLite history every kernel of this user writes.
    Actions go to the kernel that ran the job, through the history's commands table."""

    name = "local"

    def __init__(self, history: SQLiteHistory) -> None:
        self.history = history
        self.local = history
        self.url = history.path

    def _alive(self, job: HistoryJob) -> None:
        seen = self.local.kernel_seen(job.kernel) if job.kernel else None
        if seen is None or current_millis() - seen > KERNEL_ALIVE:
            raise ActionRefused(
                f"The kernel that ran job {job.id} is not running; start the notebook again "
                f"and send it from there."
            )

    def cancel(self, job: HistoryJob) -> None:
        self._alive(job)
        self.local.command("cancel", job)

    def retry(self, job: HistoryJob) -> str:
        if job.message is None:
            raise ActionRefused(f"Job {job.id} has no stored message to send again.")
        self._alive(job)
        new_id = generate_unique_id()
        self.local.command("retry", job, new_id)
        return new_id

    def requeue(self, job: HistoryJob) -> None:
        self._alive(job)
        self.local.command("requeue", job)

    def schedules(self) -> list[dict[str, Any]]:
        """The schedules of the running kernels' embedded workers, as of each kernel's last
        heartbeat (every few seconds)."""
        return self.local.kernel_schedules(KERNEL_ALIVE)


class RedisSource(Source):
    """A Redis namespace's jobs: its history, live records, results and queues. Actions go
    through a broker of that namespace."""

    name = "redis"

    def __init__(self, broker: Broker, url: str) -> None:
        self.broker = broker
        self.url = redact_url(url)
        self.transport = transport_for(broker)
        self.history = self.transport.history()
        if self.history is None:
            self.error = "The job history is turned off (NBQUEUE_HISTORY_MAX_JOBS=0)."

    def details(self, job: HistoryJob) -> dict[str, Any]:
        found = super().details(job)
        history: Any = self.history
        found["events_truncated"] = bool(history.truncated(job.id)) if history else False
        if job.message is None or job.status not in ("succeeded", "failed", "dead", "aborted"):
            return found
        try:
            backend = self.broker.get_results_backend()
        except RuntimeError:
            return found
        try:
            value = backend.get_result(Message.from_dict(job.message), block=False)
        except ResultMissing:
            return found
        except ResultFailure as failure:
            found["error"] = {
                "type": failure.orig_exc_type,
                "message": failure.orig_exc_msg,
                "traceback": getattr(failure, "traceback", None),
            }
            return found
        found["result"] = value
        found["result_repr"] = _repr(value)
        return found

    def queues(self) -> list[dict[str, Any]]:
        history: Any = self.history
        names = {q_name(j.queue) for j in history.jobs(JobQuery(limit=1000)) if j.queue}
        for name in names:
            self.broker.declare_queue(name)
        stats = self.broker.queue_stats()
        return [
            {
                "name": name,
                "ready": s.ready,
                "delayed": s.delayed,
                "in_flight": s.in_flight,
                "dead": s.dead,
                "source": self.name,
            }
            for name, s in sorted(stats.items())
        ]

    def workers(self) -> list[dict[str, Any]]:
        return [
            {
                "id": info.id,
                "host": info.host,
                "pid": info.pid,
                "processes": info.processes,
                "threads": info.threads,
                "queues": list(info.queues),
                "running": [{"id": m.message_id, "actor": m.actor_name} for m in info.running],
                "last_seen": info.last_seen,
                "source": self.name,
            }
            for info in workers(self.broker)
        ]

    def schedules(self) -> list[dict[str, Any]]:
        return [entry.to_json() for entry in fleet_schedules(self.broker)]

    def cancel(self, job: HistoryJob) -> None:
        if not actions.cancel(self.broker, job.message_dict()):
            raise ActionRefused(f"Job {job.id} has already finished ({job.status}).")

    def retry(self, job: HistoryJob) -> str:
        if job.message is None:
            raise ActionRefused(f"Job {job.id} has no stored message to send again.")
        return actions.retry(self.broker, job.message).message_id

    def requeue(self, job: HistoryJob) -> None:
        try:
            moved = actions.requeue(self.broker, job.queue or "default", job.id)
        except NotImplementedError as e:
            raise ActionRefused(str(e)) from None
        if not moved:
            raise ActionRefused(f"Job {job.id} is no longer among the dead letters of its queue.")

    def close(self) -> None:
        self.broker.close()
