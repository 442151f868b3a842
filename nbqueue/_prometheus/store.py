"""The directory of prometheus_client's multiprocess files: pointing the library at it, and
emptying it once per run of the worker CLI.

Each worker process writes its metrics to files named after its pid (``counter_<pid>.db``,
``gauge_livesum_<pid>.db``, ...), and the exposition server sums them at scrape time. Counters
of a process that died stay counted until the next run, so a restarted worker process does not
make a counter go down. The files of an earlier run are removed by the first process of a new
run that boots: a run is identified by the process that started the worker processes (the
supervisor of ``nbqueue worker --processes N``, or the worker process itself when it is the
only one), under a file lock so that the processes of one run agree.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import multiprocessing
import os
from collections.abc import Iterator

from .settings import MULTIPROC_ENVS

__all__ = ["multiprocess_enabled", "run_id", "start_run", "use_directory"]

#: Names, inside the directory, of the lock and of the file that names the current run.
LOCK_FILE = ".nbqueue-run.lock"
RUN_FILE = ".nbqueue-run"


def use_directory(path: str) -> None:
    """Create ``path`` and make it prometheus_client's multiprocess directory in this process.

    Takes effect only if prometheus_client is imported afterwards (see ``multiprocess_enabled``).
    """
    os.makedirs(path, exist_ok=True)
    for name in MULTIPROC_ENVS:
        os.environ[name] = path


def multiprocess_enabled() -> bool:
    """Whether prometheus_client writes this process's metrics to the multiprocess files.

    The library decides when it is first imported; imported before ``use_directory``, it keeps
    its metrics in memory, where the exposition server cannot read them.
    """
    # prometheus_client is an optional extra, imported only once its directory is set.
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


def _start_time(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or ``""``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces; the fields after it do not.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def run_id() -> str:
    """Name the current run: the pid and start time of the process that started this one's
    worker processes (its ``multiprocessing`` parent), else of this process."""
    pid = os.getppid() if multiprocessing.parent_process() is not None else os.getpid()
    return f"{pid}:{_start_time(pid)}"


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(os.path.join(path, LOCK_FILE), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start_run(path: str, run: str | None = None) -> bool:
    """Empty ``path`` of metric files unless this run already did; return whether it did now.

    Parameters:
      path: the multiprocess directory, which must exist.
      run: the run's name; ``run_id()`` by default.
    """
    run = run_id() if run is None else run
    marker = os.path.join(path, RUN_FILE)
    with _locked(path):
        try:
            with open(marker) as f:
                if f.read() == run:
                    return False
        except FileNotFoundError:
            pass
        for name in glob.glob(os.path.join(path, "*.db")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        with open(marker, "w") as f:
            f.write(run)
    return True
