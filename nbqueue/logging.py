"""Logger names, built as Dramatiq builds them.

nbqueue's classes log to ``nbqueue.<module>.<Class>`` (``nbqueue.worker.WorkerThread``,
``nbqueue.middleware.retries.Retries``), so configuring the ``nbqueue`` logger configures them
all, and a filter written for a Dramatiq logger name works after ``s/dramatiq/nbqueue/``. An
actor logs to its function's module plus its name (``tasks.add``), outside the ``nbqueue`` tree,
as in Dramatiq.

Inside the package, ``import logging`` is absolute and still names the standard library; this
module never shadows it.
"""

from __future__ import annotations

import logging

__all__ = ["get_logger"]


def get_logger(module: str, name: str | type | None = None) -> logging.Logger:
    """Return the logger ``<module>`` or ``<module>.<name>``.

    Parameters:
      module: the dotted prefix, usually ``__name__``.
      name: appended after a dot; a class stands for its ``__name__``.
    """
    if name is None:
        return logging.getLogger(module)
    if isinstance(name, type):
        name = name.__name__
    return logging.getLogger(f"{module}.{name}")
