"""Errors raised when reading results, under Dramatiq's path (``dramatiq.results.errors``).

They are defined in ``nbqueue.errors``, whose docstring draws the whole tree, and report this
module as theirs::

    NbqueueError
    └── ResultError
        ├── ResultMissing       the result is not stored (yet), and the caller did not block
        ├── ResultTimeout       a blocking read ran out of time
        └── ResultFailure       the actor failed; its exception is described, never re-raised
"""

from __future__ import annotations

from ..errors import ResultError, ResultFailure, ResultMissing, ResultTimeout

__all__ = ["ResultError", "ResultFailure", "ResultMissing", "ResultTimeout"]
