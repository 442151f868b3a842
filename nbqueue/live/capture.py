"""Per-message capture of ``sys.stdout`` and ``sys.stderr``.

``install()`` wraps the current streams in a thin proxy. A write goes to the live channel of the
message whose actor made it, found through a context variable: each worker thread, and each
async actor's task, has its own, so concurrent messages never mix. Writes from anywhere else
(other threads, code outside actors, threads an actor starts itself) go to the wrapped stream
unchanged, so in a Jupyter kernel they keep ipykernel's routing.

The Live middleware calls ``install()`` before every message. It is cheap and idempotent, and
it wraps whatever ``sys.stdout`` is at that moment, so capture keeps working after something
replaces the stream (ipykernel's ``OutStream``, pytest's capture, ``redirect_stdout``).

Not captured: writes to ``sys.stdout.buffer`` or to file descriptors (C extensions,
subprocesses), and logging handlers created before the proxy with a reference to the old stream.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from typing import Any, TextIO

from ..context import current_channel

__all__ = ["CaptureStream", "install", "uninstall"]

_lock = threading.Lock()


class CaptureStream:
    """A text stream that sends an actor's writes to its message and passes the rest on.

    Attribute access other than ``write``/``writelines``/``flush`` falls through to the
    wrapped stream (``encoding``, ``isatty()``, ``fileno()``...).

    Parameters:
      target: the stream to pass writes through to.
      name: ``"stdout"`` or ``"stderr"``; recorded on the captured chunks.
    """

    def __init__(self, target: TextIO, name: str) -> None:
        self._target = target
        self._name = name

    @property
    def target(self) -> TextIO:
        """The wrapped stream."""
        return self._target

    def write(self, text: str) -> int:
        channel = current_channel()
        if channel is not None and channel.capture:
            if not isinstance(text, str):
                raise TypeError(f"write() argument must be str, not {type(text).__name__}")
            if channel.output(text, self._name):
                return len(text)
        return self._target.write(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        channel = current_channel()
        if channel is None or not channel.capture:
            self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def __repr__(self) -> str:
        return f"<nbqueue capture of {self._target!r}>"


def install() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` unless they are already wrapped."""
    if type(sys.stdout) is CaptureStream and type(sys.stderr) is CaptureStream:
        return
    with _lock:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is not None and type(stream) is not CaptureStream:
                setattr(sys, name, CaptureStream(stream, name))


def uninstall() -> None:
    """Unwrap ``sys.stdout`` and ``sys.stderr`` if they are nbqueue's proxies."""
    with _lock:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if type(stream) is CaptureStream:
                setattr(sys, name, stream.target)
