"""The notebook's live views: a job view, a batch view, a queue monitor and a results table
(ipywidgets).

Every view renders from one daemon thread of its own, at most ten times a second, and displays
with stable ``text/plain`` and ``text/html`` fallbacks for frontends without the widget manager
(saved notebooks, nbviewer, nbval, VS Code without widgets).
"""

from __future__ import annotations

from .batch import BatchState, BatchView
from .job import JobState, JobView
from .monitor import History, QueueMonitor, ResultsTable

__all__ = [
    "BatchState",
    "BatchView",
    "History",
    "JobState",
    "JobView",
    "QueueMonitor",
    "ResultsTable",
]
