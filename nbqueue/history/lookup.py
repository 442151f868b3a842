"""Find a job in the histories this process can read: its broker's, then the local one."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from ..broker import get_broker
from ..errors import NbqueueError
from ..live.middleware import transport_for
from ..message import Message
from .base import History, HistoryJob, JobQuery
from .sqlite import SQLiteHistory, default_path

if TYPE_CHECKING:
    from ..broker import Broker

__all__ = ["attach", "find_job", "histories", "local_history"]

_lock = threading.Lock()
_local: dict[str, SQLiteHistory] = {}


def local_history() -> SQLiteHistory | None:
    """The local history file of this user (``default_path()``), or ``None`` before any
    kernel wrote one."""
    path = default_path()
    with _lock:
        found = _local.get(path)
        if found is None and os.path.exists(path):
            found = _local[path] = SQLiteHistory(path)
        return found


def histories(broker: Broker | None, local: SQLiteHistory | None) -> list[History]:
    """The histories to look in: the broker's own (Redis), then the local one."""
    found: list[History] = []
    broker = broker or get_broker()
    try:
        remote = transport_for(broker).history()
    except NbqueueError:
        remote = None
    if remote is not None:
        found.append(remote)
    local = local or local_history()
    if local is not None:
        found.append(local)
    return found


def find_job(
    message_id: str, *, broker: Broker | None = None, local: SQLiteHistory | None = None
) -> HistoryJob | None:
    """Find a job by id (or unique id prefix) in the broker's history, then the local one."""
    for history in histories(broker, local):
        job = history.job(message_id)
        if job is None:
            matches = history.jobs(JobQuery(q=message_id, limit=2))
            if len(matches) == 1:
                job = history.job(matches[0].id)
        if job is not None:
            return job
    return None


def attach(
    message_id: str, *, broker: Broker | None = None, local: SQLiteHistory | None = None
) -> Message[Any]:
    """Return the ``Message`` of a job from the history, e.g. one a remote worker still runs
    after this kernel restarted; in a notebook it displays as its live job view, and
    ``get_result()`` waits for its result as usual.

    Raises:
      NbqueueError: no history holds the job, or it holds no message for it.
    """
    job = find_job(message_id, broker=broker, local=local)
    if job is None:
        raise NbqueueError(
            f"No job {message_id!r} in the job history; list the recent ones with %nbqueue jobs."
        )
    if job.message is None:
        raise NbqueueError(f"The history has no message for job {job.id}, so it cannot attach.")
    return Message.from_dict(job.message)
