"""Results: store what actors return, and read it back with ``message.get_result()``.

Add the ``Results`` middleware with a backend from ``nbqueue.results.backends`` and declare
actors with ``store_results=True``. Exceptions are stored as data (type name, text, traceback)
and come back as ``ResultFailure``.
"""

from __future__ import annotations

from .backend import Missing, ResultBackend
from .errors import ResultError, ResultFailure, ResultMissing, ResultTimeout
from .middleware import Results

__all__ = [
    "Missing",
    "ResultBackend",
    "ResultError",
    "ResultFailure",
    "ResultMissing",
    "ResultTimeout",
    "Results",
]
