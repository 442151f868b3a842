"""Several worker processes under one supervising process (``nbqueue worker --processes N``).

Worker processes are started with the ``spawn`` method, which is safe with threads and on every
platform, and each boots like a single-process ``nbqueue worker``. The supervisor forwards
SIGTERM and SIGINT to them as SIGTERM (they ignore SIGINT themselves, since a Ctrl-C in a terminal
reaches the whole process group) and restarts a process that crashes after it booted, with an
exponential backoff, stopping everything after too many crashes in a row. A process that fails
at its first boot with exit code 2 or 3 stops everything with that code: the same arguments would
fail the same way in every process.

SIGHUP reloads: every worker process gets SIGTERM (running messages finish, prefetched ones go
back to their queue) and a new process, which imports the code afresh, replaces each one as soon
as it exited. Worker processes themselves ignore SIGHUP. Once the worker processes booted (or
after ``--worker-fork-timeout`` ms), the fork processes start (see ``forks``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from typing import Any

from ..broker import Broker
from .boot import BootError, add_paths, split_spec
from .forks import ForkGroup, middleware_forks
from .logs import report_error, setup_logging
from .options import EXIT_CODES, ExitCode, Options, version
from .serve import serve
from .signals import (
    Killed,
    SignalCatcher,
    flush_and_exit,
    signal_name,
    start_shielded,
    termination_signals,
)
from .watch import start_watcher

__all__ = ["Supervisor", "run_processes"]

#: How long a worker process must have run for its crash counter to start again from zero.
STABLE_AFTER = 60.0

#: In a worker process, a repeat of the signal within this many seconds is the same request:
#: process managers such as systemd signal every process of a group, and the supervisor forwards.
DUPLICATE_WINDOW = 0.5


def _child_main(
    options: Options, index: int, booted: Event, stopping: Event, forks_out: Connection
) -> None:
    """Entry point of a worker process (runs after ``spawn`` re-imported nbqueue)."""
    # SIGINT is ignored (inherited from the parent): Ctrl-C reaches the whole process group, and
    # the parent forwards it as SIGTERM, which must not count as a second signal. SIGHUP is the
    # supervisor's (a reload), so a worker process ignores it too.
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    catcher = SignalCatcher([signal.SIGTERM], kill_on_second=True, same_within=DUPLICATE_WINDOW)
    catcher.install()
    setup = setup_logging(options)
    if stopping.is_set():
        catcher.request_stop()
    parent = multiprocessing.parent_process()

    def on_booted(broker: Broker) -> None:
        # The middleware's forks go to the supervisor before it learns that this process
        # booted; it starts them once every worker process booted.
        try:
            paths = middleware_forks(broker)
        except ValueError as e:
            logging.getLogger(f"nbqueue.WorkerProcess({index})").error("%s", e)
            paths = []
        if paths:
            forks_out.send_bytes(json.dumps(paths).encode())
        booted.set()

    try:
        code = serve(
            options,
            catcher,
            process_name=f"WorkerProcess({index})",
            warn_memory=index == 0,
            on_booted=on_booted,
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
    reloading: bool = False
    waiting_for_change: bool = False
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
        self._forks = ForkGroup(options, self._ctx)
        self._forks_in, self._forks_out = self._ctx.Pipe(duplex=False)
        self._learned: list[str] = []
        self._forks_started = False
        self._forks_due = 0.0

    def run(self, catcher: SignalCatcher) -> int:
        """Start the processes and supervise them until all have exited; return the exit code."""
        self.logger.info(
            "nbqueue %s is starting %d worker processes.", version(), self.options.processes
        )
        for slot in self._slots:
            self._start(slot)
        self._forks_due = time.monotonic() + self.options.worker_fork_timeout / 1000
        handled = 0
        try:
            while not all(slot.done for slot in self._slots) or self._forks.running():
                if len(catcher.received) > handled:
                    for signum in catcher.received[handled:]:
                        if signum == getattr(signal, "SIGHUP", None):
                            self._reload()
                        else:
                            self._forward(signum)
                    handled = len(catcher.received)
                now = time.monotonic()
                for slot in self._slots:
                    if slot.restart_at is not None and slot.restart_at <= now and not slot.done:
                        slot.restart_at = None
                        self._start(slot)
                self._learn_forks()
                waitables: list[Any] = [catcher.fileno(), self._forks_in]
                waitables += [s.process.sentinel for s in self._slots if s.process is not None]
                waitables += self._forks.sentinels()
                deadlines = [s.restart_at for s in self._slots if s.restart_at is not None]
                fork_deadline = self._forks.next_deadline()
                if fork_deadline is not None:
                    deadlines.append(fork_deadline)
                if not self._forks_started and not self._stopping.is_set():
                    # Booted events are not waitable: look again soon.
                    deadlines.append(min(self._forks_due, time.monotonic() + 0.05))
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                multiprocessing.connection.wait(waitables, timeout)
                catcher.drain()
                for slot in self._slots:
                    if slot.process is not None and not slot.process.is_alive():
                        self._reap(slot, slot.process)
                # After the wait, so that the loop's condition sees the last fork reaped.
                self._forks.poll()
        finally:
            self._forks.kill()
            self._forks_in.close()
            self._forks_out.close()
        return int(self._code)

    def _learn_forks(self) -> None:
        """Read the forks reported by booted worker processes; start the fork processes once
        every worker process booted or ``--worker-fork-timeout`` passed."""
        while self._forks_in.poll():
            try:
                paths = json.loads(self._forks_in.recv_bytes())
            except (EOFError, OSError, ValueError):
                break
            self._learned += [p for p in paths if isinstance(p, str) and p not in self._learned]
        if self._stopping.is_set():
            return
        if not self._forks_started:
            booted = all(
                slot.done or (slot.booted is not None and slot.booted.is_set())
                for slot in self._slots
            )
            if not booted and time.monotonic() < self._forks_due:
                return
            self._forks_started = True
        self._forks.add([*self.options.forks, *self._learned])

    def _reload(self) -> None:
        if self._stopping.is_set():
            return
        self.logger.info(
            "Received SIGHUP: reloading the worker processes; running messages finish first."
        )
        for slot in self._slots:
            if slot.process is not None and not slot.reloading:
                slot.reloading = True
                self._terminate(slot.process)
            elif slot.restart_at is not None or slot.waiting_for_change:
                slot.waiting_for_change = False
                slot.restart_at = time.monotonic()
        self._forks.reload()

    def _start(self, slot: _Slot) -> None:
        slot.booted = self._ctx.Event()
        process = self._ctx.Process(
            target=_child_main,
            args=(self.options, slot.index, slot.booted, self._stopping, self._forks_out),
            name=f"WorkerProcess({slot.index})",
        )
        start_shielded(process)
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
            self._forks.kill()
        self._forks.stop()
        for slot in self._slots:
            slot.restart_at = None
            if slot.process is None:
                slot.done = True
            elif not first or not slot.reloading:
                # A process stopping for a reload already got its SIGTERM; another would kill it.
                self._terminate(slot.process)

    def _stop_all(self) -> None:
        self._stopping.set()
        self._forks.stop()
        for slot in self._slots:
            slot.restart_at = None
            if slot.process is None:
                slot.done = True
            elif not slot.reloading:
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
        if slot.reloading and not self._stopping.is_set():
            slot.reloading = False
            self.logger.info(
                "Worker process %d stopped (exit code %s); starting its replacement.",
                slot.index,
                code,
            )
            self._start(slot)
            return
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
        if self.options.watch is not None and code == ExitCode.USAGE:
            # Under --watch, a module that fails to import waits for the next edit.
            self.logger.error(
                "Worker process %d failed to boot (exit code %s); fix the error and save: a "
                "change under %s starts it again.",
                slot.index,
                code,
                self.options.watch,
            )
            slot.waiting_for_change = True
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
    signums = termination_signals()
    if hasattr(signal, "SIGHUP"):
        signums.append(signal.SIGHUP)
    catcher = SignalCatcher(signums, kill_on_second=False)
    catcher.install()
    stop_watcher = None
    try:
        if options.watch is not None:
            try:
                stop_watcher = start_watcher(options)
            except BootError as e:
                report_error(e.message, options)
                return int(e.code)
        return Supervisor(options).run(catcher)
    finally:
        if stop_watcher is not None:
            stop_watcher()
        catcher.restore()
