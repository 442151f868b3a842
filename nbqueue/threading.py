"""Raising exceptions in other threads, which is how time limits, shutdown and abort interrupt actors.

``Interrupt``, the base class of what is raised, is defined in ``nbqueue.errors`` and
re-exported here, under the name it reports.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
import threading

from .errors import Interrupt

__all__ = [
    "Interrupt",
    "current_platform",
    "is_gevent_active",
    "raise_thread_exception",
    "supported_platforms",
]

logger = logging.getLogger("nbqueue.threading")

current_platform = platform.python_implementation()
supported_platforms = {"CPython"}


def is_gevent_active() -> bool:
    """Return whether gevent monkey-patched this process (nbqueue does not support gevent)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("threading"))


def raise_thread_exception(thread_id: int, exception: type[BaseException]) -> None:
    """Raise ``exception`` in the thread with id ``thread_id`` at its next bytecode boundary.

    Code blocked in a C call (``time.sleep``, a socket read, a native library) sees it only when
    that call returns. CPython only; elsewhere a critical message is logged and nothing happens.
    """
    if current_platform not in supported_platforms:
        logger.critical(
            "Cannot interrupt threads on %s; only CPython is supported.", current_platform
        )
        return
    count = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception)
    )
    if count == 0:
        logger.debug("Thread %d is gone; it could not be interrupted.", thread_id)
    elif count > 1:  # pragma: no cover - CPython guarantees at most one
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        logger.critical(
            "Interrupting thread %d hit several threads; the interrupt was undone.", thread_id
        )


def current_thread_ident() -> int:
    """Return the identifier ``raise_thread_exception`` needs for the current thread."""
    return threading.get_ident()
