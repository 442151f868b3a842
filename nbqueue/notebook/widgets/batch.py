"""The batch view: many messages (a ``send_many`` sweep, a group) as one live view.

``BatchState`` counts the records of a ``nbqueue.live.Batch`` (plain Python, no widgets);
``BatchView`` renders it with ipywidgets: an overall bar, done / failed / running / queued
counts, an ETA and a row per failure. One thread per view blocks on the live channel (the
batch's watch, never polling) and renders at most ``MAX_RATE`` times a second; it stops when
every message finished or the view is closed.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import ipywidgets as widgets

from ...broker import Broker
from ...errors import LiveUnavailable
from ...live import Batch, StatusRecord
from ...live import transport as _contract
from ...message import Message
from .html import box, escape, format_duration, short_repr, status_color, table

__all__ = ["BatchState", "BatchView"]

#: The most renders a view makes per second.
MAX_RATE = 4

#: How many failures the view lists (the count covers them all).
MAX_FAILURE_ROWS = 50

_QUEUED = frozenset({"enqueued", "delayed", "retrying"})
_FAILED = frozenset({"failed", "dead"})
_OTHER = frozenset({"skipped", "aborted"})


@dataclasses.dataclass
class Failure:
    """One failed message, as its row shows it."""

    actor: str
    args: str
    status: str
    error: str


@dataclasses.dataclass
class BatchState:
    """What a batch view shows.

    Attributes:
      total: how many messages.
      done: succeeded.
      failed: failed or dead-lettered.
      running: running now.
      queued: enqueued, delayed or waiting for a retry (or not recorded yet).
      other: skipped or aborted.
      missing: no live record and no result (``live=False`` actors, expired records).
      failures: a row per failure, oldest first.
      eta: seconds left, from the rate of completions seen by the view.
      error: why the batch cannot be watched at all (no live channel).
    """

    total: int = 0
    done: int = 0
    failed: int = 0
    running: int = 0
    queued: int = 0
    other: int = 0
    missing: int = 0
    failures: list[Failure] = dataclasses.field(default_factory=list)
    eta: float | None = None
    error: str | None = None
    _started: float = dataclasses.field(default_factory=time.monotonic)
    _finished_at_start: int | None = None

    @property
    def finished(self) -> int:
        """How many messages reached a final status."""
        return self.done + self.failed + self.other

    @property
    def fraction(self) -> float:
        """Finished over total (1.0 for an empty batch)."""
        return self.finished / self.total if self.total else 1.0

    @property
    def complete(self) -> bool:
        """Whether nothing is left to wait for."""
        return self.error is not None or self.finished + self.missing >= self.total

    def count(self, batch: Batch, now: float | None = None) -> None:
        """Count the batch's records again (and the ETA from the completions so far)."""
        now = time.monotonic() if now is None else now
        self.total = len(batch.messages)
        self.done = self.failed = self.running = self.queued = self.other = 0
        failures = []
        for message in batch.messages:
            record = batch.records.get(message.message_id)
            status = "enqueued" if record is None else str(record.status)
            if status == "succeeded":
                self.done += 1
            elif status in _FAILED:
                self.failed += 1
                failures.append(_failure(message, record))
            elif status == "running":
                self.running += 1
            elif status in _OTHER:
                self.other += 1
            else:
                self.queued += 1
        self.missing = len(batch.missing)
        self.queued -= self.missing
        self.failures = failures
        if self._finished_at_start is None:
            self._finished_at_start = self.finished
        self.eta = None
        seen = self.finished - self._finished_at_start
        left = self.total - self.finished - self.missing
        if seen > 0 and left > 0 and now > self._started:
            self.eta = left / (seen / (now - self._started))

    def counts_text(self) -> str:
        """``"7/12 finished · 6 done · 1 failed · 3 running · 2 queued"``."""
        parts = [f"{self.finished}/{self.total} finished", f"{self.done} done"]
        parts.append(f"{self.failed} failed")
        parts += [f"{self.running} running", f"{self.queued} queued"]
        if self.other:
            parts.append(f"{self.other} skipped or aborted")
        if self.missing:
            parts.append(f"{self.missing} without a live record")
        if self.eta is not None and not self.complete:
            parts.append(f"ETA {format_duration(self.eta)}")
        return " · ".join(parts)

    def text(self) -> str:
        """A one-line summary (no times)."""
        if self.error:
            return f"<nbqueue batch of {self.total} messages: {self.error}>"
        return f"<nbqueue batch {self.finished}/{self.total} finished, {self.failed} failed>"

    def failures_html(self) -> str:
        if not self.failures:
            return ""
        rows = [
            [
                f"<code>{escape(f.actor)}</code>",
                f"<code>{escape(f.args)}</code>",
                f'<span style="color: {status_color(f.status)};">{escape(f.status)}</span>',
                escape(f.error),
            ]
            for f in self.failures[:MAX_FAILURE_ROWS]
        ]
        more = len(self.failures) - MAX_FAILURE_ROWS
        note = f"<div>… and {more} more failures</div>" if more > 0 else ""
        return table(["actor", "arguments", "status", "error"], rows) + note

    def html(self) -> str:
        """The static ``text/html`` form (for saved notebooks and frontends without widgets)."""
        if self.error:
            return box(f"<div>{escape(self.error)}</div>")
        bar = f'<progress value="{self.fraction:.3f}" max="1"></progress> '
        return box(f"<div>{bar}{escape(self.counts_text())}</div>{self.failures_html()}")


def _failure(message: Message[Any], record: StatusRecord | None) -> Failure:
    args = ", ".join(short_repr(a, 40) for a in message.args)
    if message.kwargs:
        kwargs = ", ".join(f"{k}={short_repr(v, 40)}" for k, v in message.kwargs.items())
        args = f"{args}, {kwargs}" if args else kwargs
    status = "failed" if record is None else str(record.status)
    error = (record.error if record is not None else None) or ""
    return Failure(message.actor_name, short_repr(args, 120).strip("'\""), status, error)


class BatchView:
    """A live view of many messages: an overall progress bar, counts, ETA and the failures.

    Displaying it shows the widget, with ``text/plain`` (stable: the number of messages) and
    ``text/html`` (the state when displayed) fallbacks. Its thread reads every record once,
    then blocks on the live channel for changes and renders at most ``MAX_RATE`` times a
    second; it stops when every message finished or ``close()`` is called.

    Parameters:
      messages: the messages (the list ``send_many()`` returns), or a group after ``run()``.
      broker: the broker they were sent with (default: a group's, else the global broker).
      idle: set while no cell runs; the view builds its widgets once it is set (or after a
        second), as the job view does.
    """

    def __init__(
        self,
        messages: Any,
        *,
        broker: Broker | None = None,
        idle: threading.Event | None = None,
    ) -> None:
        self.messages = messages
        self.broker = broker
        self.idle = idle
        self.state = BatchState()
        self.renders = 0
        #: notified after each render, for whoever waits for the view to show a state
        self.rendered = threading.Condition()
        self._stop = threading.Event()
        self.bar = widgets.FloatProgress(
            value=0.0, min=0.0, max=1.0, bar_style="info", layout=widgets.Layout(width="40%")
        )
        self.counts = widgets.HTML("")
        self.failures = widgets.HTML("")
        self.widget = widgets.VBox([widgets.HBox([self.bar, self.counts]), self.failures])
        self.thread = threading.Thread(target=self._run, name="nbqueue-batch-view", daemon=True)
        self.thread.start()

    def __repr__(self) -> str:
        return self.state.text()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = self.widget._repr_mimebundle_(**kwargs) or {}
        size = len(self.messages) if hasattr(self.messages, "__len__") else "?"
        data["text/plain"] = f"<nbqueue batch of {size} messages>"
        data["text/html"] = self.state.html()
        return data

    def close(self) -> None:
        """Stop updating and close the widgets."""
        self._stop.set()
        self.widget.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the view rendered the batch's end (or was closed); returns whether."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _run(self) -> None:
        state = self.state
        try:
            batch = Batch(self.messages, broker=self.broker)
        except (LiveUnavailable, TypeError) as e:
            state.error = str(e)
            self._render()
            return
        try:
            if self.idle is not None:
                self.idle.wait(1.0)
            state.count(batch)
            self._render()
            interval, last = 1 / MAX_RATE, time.monotonic()
            while not self._stop.is_set() and batch.unfinished:
                changed = batch.update(_contract.WAIT_BLOCK)
                now = time.monotonic()
                if now - last < interval:
                    # Throttled: changes arriving meanwhile are read together afterwards.
                    if self._stop.wait(interval - (now - last)):
                        break
                    changed += batch.update(0)
                if changed or state.running:  # the ETA moves while something runs
                    state.count(batch)
                    self._render()
                    last = time.monotonic()
            if not self._stop.is_set():
                state.count(batch)
                self._render()
        finally:
            batch.close()

    def _render(self) -> None:
        state = self.state
        self.renders += 1
        self.bar.value = state.fraction
        if state.complete:
            self.bar.bar_style = "danger" if state.failed else "success"
        self.counts.value = escape(state.error or state.counts_text())
        self.failures.value = state.failures_html()
        with self.rendered:
            self.rendered.notify_all()
