"""Signals: the first SIGTERM or SIGINT asks for a graceful stop, a second one kills."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, Protocol

__all__ = [
    "Killed",
    "SignalCatcher",
    "flush_and_exit",
    "signal_name",
    "start_shielded",
    "termination_signals",
]


class _Startable(Protocol):
    def start(self) -> None: ...


def start_shielded(process: _Startable) -> None:
    """Start a child process with SIGINT and SIGHUP ignored, which it inherits until it installs
    handlers of its own: a Ctrl-C in the terminal reaches the whole process group, and only the
    main process forwards it (once, as SIGTERM); SIGHUP means reload, decided by the main process.
    """
    ignored = [signal.SIGINT] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in ignored}
    try:
        process.start()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Killed(BaseException):
    """Raised in the main thread by the second termination signal, to exit without waiting."""


class SignalCatcher:
    """Turns SIGTERM/SIGINT into a wake-up of the main thread, through a socket pair.

    The handlers only write a byte, so they never take a lock the interrupted code may hold.
    With ``kill_on_second`` the second signal raises ``Killed`` in the main thread, which
    interrupts whatever it is waiting for (such as a graceful stop); later ones are ignored.

    Parameters:
      signums: the signals to catch.
      kill_on_second: whether a second signal raises ``Killed``.
      same_within: seconds after the first signal during which a repeat counts as the same one.
    """

    def __init__(
        self, signums: Sequence[int], *, kill_on_second: bool, same_within: float = 0.0
    ) -> None:
        self.signums = list(signums)
        self.kill_on_second = kill_on_second
        self.same_within = same_within
        self.received: list[int] = []
        self._first_at = 0.0
        self._count = 0
        self.stop_requested = False
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._previous: dict[int, Any] = {}
        self._previous_wakeup_fd = -1

    def install(self) -> None:
        """Install the handlers; call from the main thread."""
        for signum in self.signums:
            self._previous[signum] = signal.signal(signum, self._handle)
        # The kernel may deliver the signal to any thread; then only this wake-up fd (written by
        # Python's C-level handler) interrupts the main thread's select().
        self._previous_wakeup_fd = signal.set_wakeup_fd(
            self._wsock.fileno(), warn_on_full_buffer=False
        )

    def restore(self) -> None:
        """Put the previous handlers back and release the sockets."""
        if self._previous:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        self._rsock.close()
        self._wsock.close()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.received and now - self._first_at < self.same_within:
            return
        if not self.received:
            self._first_at = now
        self.received.append(signum)
        self.request_stop(counts_as_signal=True)

    def request_stop(self, *, counts_as_signal: bool = False) -> None:
        """Ask for a graceful stop and wake ``wait()``.

        Parameters:
          counts_as_signal: whether this counts like a signal, so that the next one is the
            second (which kills when ``kill_on_second`` is set); later ones are ignored.
        """
        if counts_as_signal:
            self._count += 1
            if self.kill_on_second and self._count == 2:
                raise Killed()
        self.stop_requested = True
        self.wake()

    def wake(self) -> None:
        """Make ``wait()`` return."""
        try:
            self._wsock.send(b"\0")
        except OSError:  # the buffer is full: a wake-up is already pending
            pass

    def fileno(self) -> int:
        """The file descriptor that becomes readable on a wake-up."""
        return self._rsock.fileno()

    def drain(self) -> None:
        """Consume pending wake-ups."""
        try:
            while self._rsock.recv(4096):
                pass
        except OSError:
            pass

    def wait(self, timeout: float | None = None, *, also: Sequence[int] = ()) -> bool:
        """Block until a wake-up, until a file descriptor in ``also`` is readable or for
        ``timeout`` seconds.

        Returns:
          Whether a file descriptor in ``also`` is readable.
        """
        fds = [self._rsock.fileno(), *also]
        ready, _, _ = select.select(fds, [], [], timeout)
        self.drain()
        return any(fd in ready for fd in also)


def signal_name(signum: int) -> str:
    """Return ``"SIGTERM"`` for SIGTERM, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def termination_signals() -> list[int]:
    """Return the signals that stop a worker on this platform."""
    signums: list[int] = [signal.SIGTERM, signal.SIGINT]
    if hasattr(signal, "SIGBREAK"):  # pragma: no cover - Windows
        signums.append(signal.SIGBREAK)
    return signums


def flush_and_exit(code: int) -> None:
    """Exit the process now, without waiting for worker threads that are still running."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # pragma: no cover - a closed stream
            pass
    os._exit(code)
