"""Fork functions: module-level functions the CLI runs in processes of their own.

They come from ``--fork-function MODULE:FUNCTION`` and from the ``forks`` of the broker's
middleware (Dramatiq's model; the Prometheus exposition server is one). A booted worker process
reports its middleware's forks to the main process as ``"module:qualname"`` strings, so the main
process never imports the user's modules. Each fork process runs
``importlib.import_module(module).function()``; an ``int`` it returns is the process's exit code.

Fork processes ignore SIGINT and SIGHUP; the first SIGTERM ends the function (exit 0), a second
one exits at once (exit 1). A fork process that exits with an error is restarted with a growing
delay, like a worker process; after too many crashes in a row it is given up (logged) and the
workers keep running. One that returns normally is not restarted.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from multiprocessing.context import SpawnContext, SpawnProcess
from types import FrameType
from typing import Any

from .boot import add_paths
from .logs import setup_logging
from .options import ExitCode, Options
from .signals import start_shielded

__all__ = ["ForkGroup", "fork_path", "middleware_forks"]


def fork_path(function: Callable[..., object]) -> str:
    """Return ``"module:qualname"`` for a module-level function.

    Raises:
      ValueError: the function is not reachable by that name (a lambda, a nested function).
    """
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ValueError(
            f"The fork {function!r} is not a module-level function; define it at the top of a "
            f"module so that a fork process can import it."
        )
    return f"{module}:{qualname}"


def middleware_forks(broker: Any) -> list[str]:
    """Return the ``forks`` of the broker's middleware as ``"module:qualname"`` strings, in
    order, without repeats.

    Raises:
      ValueError: a fork is not a module-level function.
    """
    paths: list[str] = []
    for middleware in broker.middleware:
        for function in getattr(middleware, "forks", ()) or ():
            path = fork_path(function)
            if path not in paths:
                paths.append(path)
    return paths


def _load(path: str) -> Callable[[], object]:
    module_name, _, attr = path.partition(":")
    value: Any = importlib.import_module(module_name)
    function: Callable[[], object] = functools.reduce(getattr, attr.split("."), value)
    if not callable(function):
        raise TypeError(f"{path} is a {type(function).__name__}, not a function")
    return function


def _fork_main(options: Options, index: int, path: str) -> None:
    """Entry point of a fork process (runs after ``spawn`` re-imported nbqueue)."""
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            os._exit(int(ExitCode.KILLED))
        stopping = True
        raise SystemExit(int(ExitCode.OK))

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setup_logging(options)
    logger = logging.getLogger(f"nbqueue.ForkProcess({index})")
    try:
        add_paths(options)
        function = _load(path)
    except Exception as e:
        logger.error(
            "Could not import the fork function %r: %s: %s; check the MODULE:FUNCTION name.",
            path,
            type(e).__name__,
            e,
        )
        sys.exit(int(ExitCode.USAGE))
    logger.info("Fork process is running %s().", path)
    result = function()
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


@dataclasses.dataclass
class _Fork:
    index: int
    path: str
    process: SpawnProcess | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None
    kill_at: float | None = None
    reloading: bool = False
    done: bool = False


class ForkGroup:
    """The fork processes of one CLI: starts, restarts, reloads and stops them.

    The owner waits on ``sentinels()`` (and until ``next_deadline()``), then calls ``poll()``.

    Parameters:
      options: the command line, passed to every fork process.
      ctx: the ``spawn`` multiprocessing context.
      max_restarts: consecutive crashes of one fork process after which it is given up.
      backoff: seconds before the first restart, doubled after each crash up to ``max_backoff``.
      max_backoff: the longest wait between restarts, in seconds.
      stable_after: seconds a fork process must run for its crash counter to start again.
    """

    def __init__(
        self,
        options: Options,
        ctx: SpawnContext | None = None,
        *,
        max_restarts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        stable_after: float = 60.0,
    ) -> None:
        self.options = options
        self.ctx = ctx or multiprocessing.get_context("spawn")
        self.max_restarts = max_restarts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.logger = logging.getLogger("nbqueue.MainProcess")
        self.forks: list[_Fork] = []
        self.stopping = False

    def add(self, paths: Iterable[str]) -> None:
        """Start one fork process per path not seen before (no-op once stopping)."""
        for path in paths:
            if self.stopping or any(fork.path == path for fork in self.forks):
                continue
            fork = _Fork(index=len(self.forks), path=path)
            self.forks.append(fork)
            self._start(fork)

    def _start(self, fork: _Fork) -> None:
        process = self.ctx.Process(
            target=_fork_main,
            args=(self.options, fork.index, fork.path),
            name=f"ForkProcess({fork.index})",
        )
        start_shielded(process)
        fork.process = process
        fork.started_at = time.monotonic()
        self.logger.info(
            "Started fork process %d (PID %s) for %s().", fork.index, process.pid, fork.path
        )

    def sentinels(self) -> list[int]:
        """The file descriptors that become readable when a fork process exits."""
        return [fork.process.sentinel for fork in self.forks if fork.process is not None]

    def next_deadline(self) -> float | None:
        """The next ``time.monotonic()`` at which ``poll()`` has work, or ``None``."""
        times = [t for fork in self.forks for t in (fork.restart_at, fork.kill_at) if t]
        return min(times) if times else None

    def running(self) -> bool:
        """Whether a fork process is still alive or due to restart."""
        return any(fork.process is not None for fork in self.forks)

    def poll(self) -> None:
        """Reap exited fork processes, restart the due ones, kill the overdue ones."""
        now = time.monotonic()
        for fork in self.forks:
            process = fork.process
            if process is not None and not process.is_alive():
                self._reap(fork, process)
            elif process is not None and fork.kill_at is not None and fork.kill_at <= now:
                self.logger.warning(
                    "Fork process %d did not stop within the shutdown timeout; killing it.",
                    fork.index,
                )
                fork.kill_at = None
                _send(process, signal.SIGKILL)
            if fork.restart_at is not None and fork.restart_at <= now and not self.stopping:
                fork.restart_at = None
                self._start(fork)

    def _reap(self, fork: _Fork, process: SpawnProcess) -> None:
        process.join()
        fork.process = None
        fork.kill_at = None
        code = process.exitcode
        if self.stopping:
            fork.done = True
            return
        if fork.reloading:
            fork.reloading = False
            self._start(fork)
            return
        if code == 0:
            self.logger.info("Fork process %d (%s) finished.", fork.index, fork.path)
            fork.done = True
            return
        if time.monotonic() - fork.started_at >= self.stable_after:
            fork.crashes = 0
        fork.crashes += 1
        if fork.crashes > self.max_restarts:
            self.logger.critical(
                "Fork process %d (%s) crashed %d times in a row (last exit code %s); giving it "
                "up, the worker processes keep running.",
                fork.index,
                fork.path,
                fork.crashes,
                code,
            )
            fork.done = True
            return
        delay = min(self.backoff * 2 ** (fork.crashes - 1), self.max_backoff)
        self.logger.error(
            "Fork process %d (%s) exited with code %s; restarting it in %.1f s.",
            fork.index,
            fork.path,
            code,
            delay,
        )
        fork.restart_at = time.monotonic() + delay

    def reload(self) -> None:
        """Stop every fork process gracefully; each is started again once it exited."""
        for fork in self.forks:
            if fork.process is not None and not fork.reloading:
                fork.reloading = True
                _send(fork.process, signal.SIGTERM)
            elif fork.restart_at is not None:
                fork.restart_at = time.monotonic()

    def stop(self) -> None:
        """Send SIGTERM to every fork process; ``poll()`` kills those still running after
        ``--worker-shutdown-timeout`` ms."""
        if self.stopping:
            return
        self.stopping = True
        kill_at = time.monotonic() + self.options.shutdown_timeout / 1000
        for fork in self.forks:
            fork.restart_at = None
            if fork.process is not None:
                fork.kill_at = kill_at
                _send(fork.process, signal.SIGTERM)

    def kill(self) -> None:
        """Kill every fork process now."""
        self.stopping = True
        for fork in self.forks:
            fork.restart_at = None
            if fork.process is not None:
                _send(fork.process, signal.SIGKILL)


def _send(process: SpawnProcess, signum: int) -> None:
    if process.pid is not None and process.is_alive():
        try:
            os.kill(process.pid, signum)
        except OSError:  # it exited in the meantime
            pass
