"""``--pid-file``: the main process's PID in a file, as Dramatiq writes it.

A file left by a process that is gone (a crash, a ``kill -9``) is replaced. A file naming a
process that runs, a file that does not hold a PID (perhaps a config file given by mistake,
which must not be overwritten) and a file that cannot be written stop the command with exit
code 4, Dramatiq's ``RET_PIDFILE``.
"""

from __future__ import annotations

import contextlib
import os

from .boot import BootError
from .options import ExitCode

__all__ = ["remove_pid_file", "write_pid_file"]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def write_pid_file(path: str) -> int:
    """Write this process's PID to ``path`` (mode 0644) and return it.

    A file that already holds this PID (a reload that re-executed this process) is kept.

    Raises:
      BootError: (code 4) the file names a running process, holds something other than a PID,
        or cannot be read or written.
    """
    pid = os.getpid()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        text = None
    except OSError as e:
        raise BootError(
            ExitCode.PIDFILE,
            f"Could not read --pid-file {path!r}: {e.strerror or e}; pass a readable path.",
        ) from None
    if text is not None:
        try:
            old = int(text)
        except ValueError:
            raise BootError(
                ExitCode.PIDFILE,
                f"--pid-file {path!r} holds something other than a PID; check the path, or "
                f"delete the file if it is an old PID file.",
            ) from None
        if old == pid:
            return pid
        if old > 0 and _running(old):
            raise BootError(
                ExitCode.PIDFILE,
                f"nbqueue is already running with PID {old} (from --pid-file {path!r}); stop it "
                f"first or pass another --pid-file.",
            )
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(str(pid))
        os.chmod(path, 0o644)
    except OSError as e:
        raise BootError(
            ExitCode.PIDFILE,
            f"Could not write --pid-file {path!r}: {e.strerror or e}; pass a writable path.",
        ) from None
    return pid


def remove_pid_file(path: str) -> None:
    """Remove ``path`` if it still holds this process's PID."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.remove(path)
    except (OSError, ValueError):
        pass
