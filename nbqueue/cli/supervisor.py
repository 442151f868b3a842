"""Several worker processes under one supervising process (``nbqueue worker --processes N``).

Worker processes are started with the ``spawn`` method, which is safe with threads and on every
platform, and each boots like a single-process ``nbqueue worker``. The supervisor forwards
SIGTERM and SIGINT to them as SIGTERM (they ignore SIGINT themselves, since a Ctrl-C in a terminal
reaches the whole process group) and restarts a process that crashes after it booted, with an
exponential backoff, stopping everything after too many crashes in a row. A process that fails
at its first boot with exit code 2 or 3 stops everything with that code: the same arguments would
fail the same way in every process.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from typing import Any

from .boot import BootError, add_paths, split_spec
from .logs import report_error, setup_logging
from .options import EXIT_CODES, ExitCode, Options, version
from .serve import serve
from .signals import (
    Killed,
    SignalCatcher,
    flush_and_exit,
    signal_name,
    termination_signals,
)

__all__ = ["Supervisor", "run_processes"]

#: How long a worker process must have run for its crash counter to start again from zero.
STABLE_AFTER = 60.0

#: In a worker process, a repeat of the signal within this many seconds is the same request:
#: process managers such as systemd signal every process of a group, and the supervisor forwards.
DUPLICATE_WINDOW = 0.5


def _child_main(options: Options, index: int, booted: Event, stopping: Event) -> None:
    """Entry point of a worker process (runs after ``spawn`` re-imported nbqueue)."""
    # SIGINT is ignored (inherited from the parent): Ctrl-C reaches the whole process group, and
    # the parent forwards it as SIGTERM, which must not count as a second signal.
    catcher = SignalCatcher([signal.SIGTERM], kill_on_second=True, same_within=DUPLICATE_WINDOW)
    catcher.install()
    setup = setup_logging(options)
    if stopping.is_set():
        catcher.request_stop()
    parent = multiprocessing.parent_process()
    try:
        code = serve(
            options,
            catcher,
            process_name=f"WorkerProcess({index})",
            warn_memory=index == 0,
            on_booted=booted.set,
            parent_sentinel=parent.sentinel if parent is not None else None,
        )
    except Killed:
        logging.getLogger(f"nbqueue.WorkerProcess({index})").warning(
            "Received a second signal: exiting at once."
        )
        flush_and_exit(ExitCode.KILLED)
        return
    setup.undo()
    sys.exit(int(code))


@dataclasses.dataclass
class _Slot:
    """One worker process position, which survives restarts of its process."""

    index: int
    process: SpawnProcess | None = None
    booted: Event | None = None
    started_at: float = 0.0
    crashes: int = 0
    ever_booted: bool = False
    restart_at: float | None = None
    done: bool = False


class Supervisor:
    """Runs N worker processes, forwards signals to them and restarts crashed ones.

    Parameters:
      options: the command line, passed to every worker process.
      max_restarts: consecutive crashes of one process after which everything stops (exit 1).
      backoff: seconds before the first restart; doubled after each crash, up to ``max_backoff``.
      max_backoff: the longest wait between restarts, in seconds.
    """

    def __init__(
        self,
        options: Options,
        *,
        max_restarts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.options = options
        self.max_restarts = max_restarts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.logger = logging.getLogger("nbqueue.MainProcess")
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = self._ctx.Event()
        self._slots = [_Slot(index=i) for i in range(options.processes)]
        self._code = ExitCode.OK

    def run(self, catcher: SignalCatcher) -> int:
        """Start the processes and supervise them until all have exited; return the exit code."""
        self.logger.info(
            "nbqueue %s is starting %d worker processes.", version(), self.options.processes
        )
        for slot in self._slots:
            self._start(slot)
        handled = 0
        while not all(slot.done for slot in self._slots):
            if len(catcher.received) > handled:
                for signum in catcher.received[handled:]:
                    self._forward(signum)
                handled = len(catcher.received)
            now = time.monotonic()
            for slot in self._slots:
                if slot.restart_at is not None and slot.restart_at <= now and not slot.done:
                    slot.restart_at = None
                    self._start(slot)
            waitables: list[Any] = [catcher.fileno()]
            waitables += [s.process.sentinel for s in self._slots if s.process is not None]
            deadlines = [s.restart_at for s in self._slots if s.restart_at is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            multiprocessing.connection.wait(waitables, timeout)
            catcher.drain()
            for slot in self._slots:
                if slot.process is not None and not slot.process.is_alive():
                    self._reap(slot, slot.process)
        return int(self._code)

    def _start(self, slot: _Slot) -> None:
        slot.booted = self._ctx.Event()
        process = self._ctx.Process(
            target=_child_main,
            args=(self.options, slot.index, slot.booted, self._stopping),
            name=f"WorkerProcess({slot.index})",
        )
        # Children start with SIGINT ignored, so that a Ctrl-C in the terminal reaches only
        # this process, which forwards it once as SIGTERM.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        slot.process = process
        slot.started_at = time.monotonic()
        self.logger.debug("Started worker process %d (PID %s).", slot.index, process.pid)

    def _forward(self, signum: int) -> None:
        first = not self._stopping.is_set()
        self._stopping.set()
        if first:
            self.logger.info("Received %s: stopping the worker processes.", signal_name(signum))
        else:
            self.logger.warning(
                "Received %s again: killing the worker processes.", signal_name(signum)
            )
            self._code = ExitCode.KILLED
        for slot in self._slots:
            slot.restart_at = None
            if slot.process is None:
                slot.done = True
            else:
                self._terminate(slot.process)

    def _stop_all(self) -> None:
        self._stopping.set()
        for slot in self._slots:
            slot.restart_at = None
            if slot.process is None:
                slot.done = True
            else:
                self._terminate(slot.process)

    def _terminate(self, process: SpawnProcess) -> None:
        if process.pid is not None and process.is_alive():
            try:
                os.kill(process.pid, signal.SIGTERM)
            except OSError:  # it exited in the meantime
                pass

    def _reap(self, slot: _Slot, process: SpawnProcess) -> None:
        slot.process = None
        process.join()
        code = process.exitcode
        slot.ever_booted = slot.ever_booted or (slot.booted is not None and slot.booted.is_set())
        if self._stopping.is_set():
            slot.done = True
            if code == -signal.SIGTERM:  # it got SIGTERM before installing its handler
                code = 0
            if code and code > self._code:
                self._code = ExitCode(code) if code in EXIT_CODES else ExitCode.KILLED
            return
        if code == 0:
            self.logger.info("Worker process %d stopped.", slot.index)
            slot.done = True
            return
        if not slot.ever_booted and code in (ExitCode.USAGE, ExitCode.CONNECTION_FAILED):
            # The same arguments will fail the same way in every process: give up at once.
            self._code = ExitCode(code)
            slot.done = True
            self._stop_all()
            return
        if time.monotonic() - slot.started_at >= STABLE_AFTER:
            slot.crashes = 0
        slot.crashes += 1
        if slot.crashes > self.max_restarts:
            self.logger.critical(
                "Worker process %d crashed %d times in a row (last exit code %s); stopping all "
                "worker processes.",
                slot.index,
                slot.crashes,
                code,
            )
            self._code = ExitCode.KILLED
            slot.done = True
            self._stop_all()
            return
        delay = min(self.backoff * 2 ** (slot.crashes - 1), self.max_backoff)
        self.logger.error(
            "Worker process %d exited unexpectedly with code %s; restarting it in %.1f s "
            "(crash %d of %d allowed).",
            slot.index,
            code,
            delay,
            slot.crashes,
            self.max_restarts,
        )
        slot.restart_at = time.monotonic() + delay


def _preflight(options: Options) -> None:
    """Check in the parent that every module exists, before starting worker processes."""
    add_paths(options)
    for spec in options.modules:
        module_name, _ = split_spec(spec)
        try:
            found = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise BootError(
                ExitCode.USAGE,
                f"Could not import {module_name!r}: No module named {module_name!r}; run from the "
                f"project folder or pass --path.",
            )


def run_processes(options: Options) -> int:
    """Run ``options.processes`` worker processes until they stop; return the exit code."""
    try:
        _preflight(options)
    except BootError as e:
        report_error(e.message, options)
        return int(e.code)
    url = options.broker_url or ""
    if url.startswith("memory:"):
        logging.getLogger("nbqueue.MainProcess").warning(
            "--processes %d with the in-memory broker gives each process a private queue; use a "
            "Redis or RabbitMQ broker to share work between processes.",
            options.processes,
        )
    catcher = SignalCatcher(termination_signals(), kill_on_second=False)
    catcher.install()
    try:
        return Supervisor(options).run(catcher)
    finally:
        catcher.restore()
