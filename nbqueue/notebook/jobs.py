"""The kernel's side of the job history: record the embedded broker's jobs, serve the Jobs
sidebar's commands, ``%nbqueue jobs`` and ``nbqueue.attach()``.
"""

from __future__ import annotations

import html
import json
import logging
import os
from typing import Any

from ..broker import Broker
from ..errors import NbqueueError, ResultFailure
from ..history import actions
from ..history.base import HistoryJob, JobQuery, origin, set_origin
from ..history.lookup import histories
from ..history.sqlite import SQLiteHistory
from ..live.middleware import transport_for
from ..message import Message
from ..schedule_control import list_schedules

__all__ = ["JobsTable", "LocalHistory", "kernel_id", "recent_jobs"]

logger = logging.getLogger("nbqueue.notebook")


def kernel_id() -> str | None:
    """This kernel's id, from its connection file (``kernel-<id>.json``), or ``None``."""
    try:
        from ipykernel.connect import get_connection_file

        name = os.path.basename(get_connection_file())
    except Exception:
        return None
    if name.startswith("kernel-") and name.endswith(".json"):
        return name[len("kernel-") : -len(".json")]
    return None


class LocalHistory:
    """The kernel's SQLite history, recording the jobs of the broker it was attached to and
    carrying out the server's commands on them."""

    def __init__(self, path: str | None = None) -> None:
        notebook, kernel = origin()
        kernel = kernel or kernel_id()
        set_origin(notebook, kernel)
        self.store = SQLiteHistory(path, kernel=kernel, notebook=notebook)
        self.broker: Broker | None = None

    def attach(self, broker: Broker) -> bool:
        """Record ``broker``'s jobs if its live channel is kept here (the embedded broker);
        return False when it keeps a history of its own (Redis) or none."""
        try:
            transport = transport_for(broker)
        except NbqueueError:
            return False
        if not transport.record_to(_Outcomes(self.store, broker)):
            return False
        self.broker = broker
        self.store.publish_schedules(self.schedules)
        self.store.serve_commands(self.command)
        return True

    def schedules(self) -> list[dict[str, Any]]:
        """The contract's ``schedules`` rows of the embedded broker's schedules (recorded with
        each heartbeat of this kernel, for the Jobs sidebar)."""
        broker = self.broker
        if broker is None:
            return []
        return [entry.to_json() for entry in list_schedules(broker)]

    def detach(self) -> None:
        broker, self.broker = self.broker, None
        if broker is not None:
            try:
                transport_for(broker).record_to(None)
            except NbqueueError:
                pass
        self.store.close()

    def command(self, kind: str, message_id: str, new_id: str | None) -> str:
        """Carry out one command of the server (``SQLiteHistory.serve_commands``)."""
        broker = self.broker
        job = self.store.job(message_id)
        if broker is None or job is None:
            return "unknown"
        if kind == "cancel":
            return "aborted" if actions.cancel(broker, job.message_dict()) else "finished"
        if kind == "retry" and job.message is not None:
            return "sent " + actions.retry(broker, job.message, new_id).message_id
        if kind == "requeue":
            return (
                "requeued"
                if actions.requeue(broker, job.queue or "default", message_id)
                else "gone"
            )
        return "unknown"


#: The largest result the history keeps as JSON, in bytes; a larger one is kept as the start
#: of its repr.
RESULT_LIMIT = 64 * 1024


class _Outcomes:
    """The recorder the embedded broker's live channel writes to: the history, told each
    finished job's result or traceback too, read from the broker's result backend (in memory,
    the result is stored before the final status is recorded)."""

    def __init__(self, store: SQLiteHistory, broker: Broker) -> None:
        self.store = store
        self.broker = broker

    def record(
        self, message_id: str, fields: dict[str, Any], message: Any, output: str | None
    ) -> None:
        if fields.get("status") in ("succeeded", "failed", "dead"):
            fields = {**fields, **self._outcome(message_id, fields)}
        self.store.record(message_id, fields, message, output)

    def _outcome(self, message_id: str, fields: dict[str, Any]) -> dict[str, str]:
        try:
            backend = self.broker.get_results_backend()
        except RuntimeError:
            return {}
        key: Message[Any] = Message(
            queue_name=str(fields.get("queue_name") or "default"),
            actor_name=str(fields.get("actor_name") or ""),
            args=(),
            kwargs={},
            options={},
            message_id=message_id,
        )
        try:
            value = backend.get_result(key, block=False)
        except ResultFailure as failure:
            return {"traceback": failure.traceback} if failure.traceback else {}
        except Exception:  # missing (not stored), or unreadable: the status alone is recorded
            return {}
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            text = ""
        if not text or len(text) > RESULT_LIMIT:
            text = json.dumps(repr(value)[:4096], ensure_ascii=False)
        return {"result": text}


_COLUMNS = ("id", "actor", "args", "status", "started", "duration", "worker")


class JobsTable:
    """A table of jobs from the history (``%nbqueue jobs``), as text and HTML."""

    def __init__(self, jobs: list[HistoryJob]) -> None:
        self.jobs = jobs

    def _rows(self) -> list[tuple[str, ...]]:
        import datetime

        rows: list[tuple[str, ...]] = []
        for job in self.jobs:
            started = ""
            if job.started_at:
                started = datetime.datetime.fromtimestamp(job.started_at / 1000).strftime(
                    "%H:%M:%S"
                )
            duration = "" if job.duration_ms is None else f"{job.duration_ms / 1000:.1f}s"
            rows.append(
                (
                    job.id[:8],
                    job.actor or "",
                    job.args,
                    job.status,
                    started,
                    duration,
                    job.worker or "",
                )
            )
        return rows

    def __repr__(self) -> str:
        if not self.jobs:
            return "No jobs in the history for this notebook."
        rows = [_COLUMNS, *self._rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        return "\n".join(lines)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        if not self.jobs:
            body = "<p>No jobs in the history for this notebook.</p>"
        else:
            head = "".join(f"<th>{c}</th>" for c in _COLUMNS)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                for row in self._rows()
            )
            body = f"<table class='nbqueue-jobs'><tr>{head}</tr>{rows}</table>"
        return {"text/plain": repr(self), "text/html": body}


def recent_jobs(
    local: SQLiteHistory | None, *, broker: Broker | None = None, limit: int = 20
) -> JobsTable:
    """This notebook's recent jobs, from every history this kernel can read."""
    notebook, kernel = origin()
    found: list[HistoryJob] = []
    for history in histories(broker, local):
        if notebook:
            found += history.jobs(JobQuery(notebooks=(notebook,), limit=limit))
        elif history is local and kernel:
            found += [j for j in history.jobs(JobQuery(limit=limit * 5)) if j.kernel == kernel]
        else:
            found += history.jobs(JobQuery(limit=limit))
    found.sort(key=lambda job: job.enqueued_at or 0, reverse=True)
    return JobsTable(found[:limit])
