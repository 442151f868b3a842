"""The context of the running message: what ``stream()`` and ``progress()`` write to.

While a worker runs an actor for a message that has a live channel, the ``Live`` middleware sets
that message's channel as the current one (a context variable, so each worker thread and each
asyncio task sees its own). ``stream()`` and ``progress()`` write to it; outside of an actor run
by a worker they do nothing. This module sits low in the core, so that actors can stream
without importing the live channel's machinery (``nbqueue.live``).
"""

from __future__ import annotations

import contextvars
import json
import math
from typing import Any, Protocol

from .errors import EncodeError

__all__ = ["RunningChannel", "current_channel", "progress", "set_channel", "stream"]


class RunningChannel(Protocol):
    """Where a running message's output, values and progress go (``nbqueue.live.channel``)."""

    #: whether the actor's stdout and stderr are captured into ``output``
    capture: bool

    def output(self, text: str, stream: str) -> bool:
        """Append text written to ``stream`` (``"stream"``, ``"stdout"``, ``"stderr"``)."""

    def value(self, data: dict[str, Any]) -> bool:
        """Append a JSON value streamed by the actor."""

    def progress(self, data: dict[str, Any]) -> None:
        """Record the latest progress report (``done``, ``total``, ``desc``)."""


_current: contextvars.ContextVar[RunningChannel | None] = contextvars.ContextVar(
    "nbqueue_live_channel", default=None
)


def current_channel() -> RunningChannel | None:
    """Return the channel of the message the calling actor runs for, or ``None``."""
    return _current.get()


def set_channel(channel: RunningChannel | None) -> contextvars.Token[RunningChannel | None]:
    """Make ``channel`` the current one in this context (the ``Live`` middleware does)."""
    return _current.set(channel)


def stream(chunk: Any) -> None:
    """Stream a chunk of output from the running actor to whoever watches its message.

    Text chunks may reach watchers merged with their neighbours; any other JSON value arrives
    as one event. Outside of an actor run by a worker (e.g. when calling an actor directly),
    this does nothing.

    Parameters:
      chunk: text, or a JSON value (dict, list, number...).

    Raises:
      EncodeError: ``chunk`` is neither text nor a JSON value.
    """
    channel = current_channel()
    if channel is None:
        return
    if isinstance(chunk, str):
        channel.output(chunk, "stream")
        return
    try:
        json.dumps(chunk, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise EncodeError(
            f"stream() takes text or a JSON value, got {type(chunk).__name__}; pass str(value) "
            f"or a dict of JSON types instead."
        ) from e
    channel.value({"value": chunk, "stream": "stream"})


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(
            f"progress() takes a number for {name}, got {value!r}; call it like "
            f"nbqueue.progress(3, total=10)."
        )


def progress(done: float, total: float | None = None, desc: str | None = None) -> None:
    """Report the running actor's progress to whoever watches its message.

    Cheap enough for a tight loop: reports are coalesced to at most one event per
    ``progress_interval`` (100 ms) per message, and the latest report is always delivered before
    the message's final status. Outside of an actor run by a worker, this does nothing.

    Parameters:
      done: how much is done, in any unit.
      total: how much there is in all, in the same unit (``None``: unknown).
      desc: a short description of the current step.

    Raises:
      TypeError: ``done`` or ``total`` is not a number.
    """
    channel = current_channel()
    if channel is None:
        return
    _number("done", done)
    if total is not None:
        _number("total", total)
    channel.progress({"done": done, "total": total, "desc": None if desc is None else str(desc)})
