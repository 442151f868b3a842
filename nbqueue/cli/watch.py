"""``--watch DIR``: reload the worker processes when a source file under DIR changes.

The watcher runs in the main process (a watchdog observer thread) and sends SIGHUP to it on
each change, which reloads every worker process as a SIGHUP from outside does. watchdog is the
optional extra ``watch``: ``pip install 'nbqueue[watch]'``.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from .boot import BootError
from .options import ExitCode, Options

__all__ = ["check_watch", "start_watcher"]


def check_watch(options: Options) -> None:
    """Check that ``--watch`` can work here, before any process starts.

    Raises:
      BootError: (code 2) the platform has no SIGHUP, or watchdog is not installed.
    """
    if options.watch is None:
        return
    if not hasattr(signal, "SIGHUP"):
        raise BootError(
            ExitCode.USAGE, "--watch needs SIGHUP, which this platform lacks; leave --watch out."
        )
    try:
        importlib.import_module("watchdog.events")
    except ImportError:
        raise BootError(
            ExitCode.USAGE,
            "--watch needs the watchdog package; install it with pip install 'nbqueue[watch]'.",
        ) from None


def _matches(path: str, folder: str, options: Options) -> bool:
    """Whether ``path`` is included and not excluded. A pattern matches the path relative to the
    watched folder or the file name; ``*`` also matches ``/``, so ``**.py`` (Dramatiq's default)
    and ``*.py`` both match every ``.py`` file below the folder."""
    relative = os.path.relpath(path, folder)
    name = os.path.basename(path)

    def hit(pattern: str) -> bool:
        return fnmatch.fnmatchcase(relative, pattern) or fnmatch.fnmatchcase(name, pattern)

    return any(map(hit, options.watch_include)) and not any(map(hit, options.watch_exclude))


class _SourceChanged:
    """What the watchdog observer hands file events to (it calls ``dispatch``): a change of a
    matching file sends this process SIGHUP, which reloads the worker processes."""

    def __init__(self, folder: str, options: Options, logger: logging.Logger) -> None:
        self.folder = folder
        self.options = options
        self.logger = logger

    def dispatch(self, event: Any) -> None:
        # Opening or closing a file without writing it is not a change.
        if event.event_type in ("opened", "closed_no_write") or event.is_directory:
            return
        # An editor often saves by renaming a temporary file onto the module: the moved event's
        # destination is the source file.
        paths = [event.src_path, getattr(event, "dest_path", "")]
        changed = [p for p in paths if p and _matches(os.fsdecode(p), self.folder, self.options)]
        if changed:
            self.logger.info("%s changed: reloading the worker processes.", changed[0])
            os.kill(os.getpid(), signal.SIGHUP)


def start_watcher(options: Options) -> Callable[[], None]:
    """Start watching ``options.watch``; return the function that stops the watcher.

    Raises:
      BootError: see ``check_watch``.
    """
    check_watch(options)
    assert options.watch is not None
    observers: Any = importlib.import_module("watchdog.observers")
    polling: Any = importlib.import_module("watchdog.observers.polling")
    logger = logging.getLogger("nbqueue.MainProcess")

    folder = options.watch

    handler = _SourceChanged(folder, options, logger)
    observer = (polling.PollingObserver if options.watch_use_polling else observers.Observer)()
    observer.schedule(handler, options.watch, recursive=True)
    observer.daemon = True
    observer.start()
    logger.info(
        "Watching %s for changes%s.",
        options.watch,
        " by polling" if options.watch_use_polling else "",
    )

    def stop() -> None:
        observer.stop()
        observer.join(timeout=5)

    return stop
