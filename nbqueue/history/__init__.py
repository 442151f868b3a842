"""The job history: jobs and their statuses kept beyond the live channel's records, bounded.

``base.py`` is the contract (``History``, ``HistoryJob``, ``JobQuery``, ``Limits``);
``sqlite.py`` the local store the embedded broker's kernels write; Redis keeps its own beside
the live records (``nbqueue._redis.history``), found with ``Transport.history()``.
"""

from __future__ import annotations

from .base import (
    DEFAULT_MAX_AGE_DAYS,
    DEFAULT_MAX_JOBS,
    FINAL_STATUSES,
    MAX_AGE_ENV,
    MAX_JOBS_ENV,
    History,
    HistoryJob,
    JobQuery,
    Limits,
    args_summary,
    origin,
    set_origin,
)
from .sqlite import PATH_ENV, SQLiteHistory, default_path

__all__ = [
    "DEFAULT_MAX_AGE_DAYS",
    "DEFAULT_MAX_JOBS",
    "FINAL_STATUSES",
    "MAX_AGE_ENV",
    "MAX_JOBS_ENV",
    "PATH_ENV",
    "History",
    "HistoryJob",
    "JobQuery",
    "Limits",
    "SQLiteHistory",
    "args_summary",
    "default_path",
    "origin",
    "set_origin",
]
