"""Helpers for the worker-registry and ``nbqueue status`` tests: a heartbeat counter to wait on,
and real ``nbqueue worker`` processes that say when they are ready."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable

from nbqueue import Broker, Worker
from nbqueue.middleware import Middleware
from nbqueue.services import WorkerInfo

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

#: How long a test waits for anything at most, in seconds (a loaded 2-core machine).
DEADLINE = 60.0


class Beats(Middleware):
    """Counts the heartbeats of the workers on its broker; tests block on the next ones."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def after_worker_heartbeat(self, broker: Broker, worker: Worker) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait(self, beats: int = 1) -> None:
        """Block until ``beats`` more heartbeats happened (after their records were published)."""
        with self._cond:
            target = self.count + beats
            if not self._cond.wait_for(lambda: self.count >= target, DEADLINE):
                raise AssertionError(f"no {beats} heartbeats within {DEADLINE} s")

    def until(self, check: Callable[[], bool], *, beats: int) -> bool:
        """Return whether ``check()`` held after one of the next ``beats`` heartbeats (it is
        checked once now and once after each, so at most ``beats + 1`` times)."""
        for _ in range(beats):
            if check():
                return True
            self.wait()
        return check()


def find(records: list[WorkerInfo], *, pid: int | None = None, worker_id: str | None = None):
    """Return the record with this pid (on this host) or id, or ``None``."""
    for info in records:
        if worker_id is not None and info.id == worker_id:
            return info
        if pid is not None and info.pid == pid:
            return info
    return None


class CliWorker:
    """A real ``nbqueue worker`` process serving ``queue`` (actor ``noop``), started by
    ``start()``, which returns once it logged that it is ready."""

    def __init__(self, tmp_path: pathlib.Path, queue: str, args: list[str]) -> None:
        module = f"fleet_tasks_{queue.replace('-', '_')}"
        (tmp_path / f"{module}.py").write_text(
            textwrap.dedent(
                f"""
                import nbqueue

                @nbqueue.actor(queue_name={queue!r})
                def noop():
                    pass
                """
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
        env["NBQUEUE_WORKER_TIMEOUT"] = "100"
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
        self.command = [sys.executable, "-m", "nbqueue", "worker", module, "-P", str(tmp_path)]
        self.command += args
        self.cwd, self.env = tmp_path, env
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> CliWorker:
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(DEADLINE) or "Worker is ready" not in "".join(self.lines):
            self.kill()
            raise AssertionError("the worker did not get ready:\n" + "".join(self.lines))
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "Worker is ready" in line:
                self._ready.set()
        self._ready.set()  # the process ended: whoever waits looks at the lines

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the process and reap it (blocking)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(DEADLINE)

    def stop(self) -> int:
        """SIGTERM the process and return its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(DEADLINE)
        finally:
            self.kill()


def run_status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m nbqueue status ARGS`` to the end (bounded by ``DEADLINE``)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "nbqueue", "status", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
