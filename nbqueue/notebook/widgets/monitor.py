"""The queue monitor and the results table: live tables refreshed by one thread per view."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ...broker import Broker, QueueStats, get_broker
from ...errors import LiveUnavailable
from ...live import StatusRecord
from ...message import Message
from ...results.errors import ResultFailure, ResultMissing
from .html import badge, box, escape, format_duration, pre, short_repr, table

__all__ = ["History", "QueueMonitor", "ResultsTable"]

#: How often the tables refresh, in seconds (well under ``MAX_RATE``).
REFRESH = 0.5


class _LiveTable:
    """A widget showing HTML that one daemon thread refreshes every ``REFRESH`` seconds."""

    name = "view"

    def __init__(self) -> None:
        self.widget = widgets.HTML(self.html())
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"nbqueue-{self.name}", daemon=True)
        self.thread.start()

    def html(self) -> str:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = self.widget._repr_mimebundle_(**kwargs) or {}
        data["text/plain"] = self.text()
        data["text/html"] = self.widget.value
        return data

    def refresh(self) -> None:
        """Render now (the thread does this on its own)."""
        value = self.html()
        if value != self.widget.value:
            self.widget.value = value

    def close(self) -> None:
        """Stop refreshing and close the widget."""
        self._stop.set()
        self.widget.close()

    def _run(self) -> None:
        while not self._stop.wait(REFRESH):
            try:
                self.refresh()
            except Exception as e:  # a broker hiccup must not end the monitor
                self.widget.value = box(f"<i>{escape(type(e).__name__)}: {escape(str(e))}</i>")


class QueueMonitor(_LiveTable):
    """Per queue: ready, delayed, in flight and dead messages; the recent rate; the worker.

    Parameters:
      broker: the broker to watch (default: the global broker at each refresh).
      worker_status: returns a one-line worker status.
      rate: returns the recent rate of finished messages per second.
    """

    name = "queue-monitor"

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        worker_status: Callable[[], str] | None = None,
        rate: Callable[[], float] | None = None,
    ) -> None:
        self.broker = broker
        self.worker_status = worker_status
        self.rate = rate
        super().__init__()

    def _stats(self) -> dict[str, QueueStats]:
        return (self.broker or get_broker()).queue_stats()

    def html(self) -> str:
        rows = [
            [
                f"<code>{escape(name)}</code>",
                str(s.ready),
                str(s.delayed),
                "?" if s.in_flight is None else str(s.in_flight),
                str(s.dead),
            ]
            for name, s in sorted(self._stats().items())
        ]
        if not rows:
            rows = [["<i>no queues yet</i>", "", "", "", ""]]
        footer = []
        if self.rate is not None:
            footer.append(f"{self.rate():.2f} messages/s (last 10 s)")
        if self.worker_status is not None:
            footer.append(f"embedded worker: {escape(self.worker_status())}")
        return box(
            table(["queue", "ready", "delayed", "in flight", "dead"], rows)
            + (f"<div>{' · '.join(footer)}</div>" if footer else "")
        )

    def text(self) -> str:
        lines = [f"{'queue':<20} {'ready':>6} {'delayed':>7} {'in flight':>9} {'dead':>5}"]
        for name, s in sorted(self._stats().items()):
            flight = "?" if s.in_flight is None else str(s.in_flight)
            lines.append(f"{name:<20} {s.ready:>6} {s.delayed:>7} {flight:>9} {s.dead:>5}")
        if self.worker_status is not None:
            lines.append(f"embedded worker: {self.worker_status()}")
        return "\n".join(lines)


class History:
    """The messages sent from this kernel, most recent last (bounded).

    Parameters:
      size: how many are kept.
    """

    def __init__(self, size: int = 50) -> None:
        self.messages: collections.deque[tuple[Message[Any], Broker]] = collections.deque(
            maxlen=size
        )
        self._lock = threading.Lock()

    def add(self, message: Message[Any], broker: Broker) -> None:
        """Remember a sent message."""
        with self._lock:
            self.messages.append((message, broker))

    def recent(self) -> list[tuple[Message[Any], Broker]]:
        """The remembered messages, newest first."""
        with self._lock:
            return list(reversed(self.messages))


class _Row:
    __slots__ = ("status", "duration", "summary", "detail", "final")

    def __init__(self) -> None:
        self.status = "sent"
        self.duration = ""
        self.summary = ""
        self.detail = ""
        self.final = False


class ResultsTable(_LiveTable):
    """Recent messages with their status, duration and result; click a row to expand it.

    Parameters:
      history: the messages to show.
    """

    name = "results-table"

    def __init__(self, history: History) -> None:
        self.history = history
        self._rows: dict[str, _Row] = {}
        super().__init__()

    def _row(self, message: Message[Any], broker: Broker) -> _Row:
        row = self._rows.get(message.message_id)
        if row is None:
            row = self._rows[message.message_id] = _Row()
        if row.final:
            return row
        try:
            record: StatusRecord | None = message.status(broker=broker)
        except LiveUnavailable:
            record = None
        if record is not None:
            row.status = str(record.status)
            duration = record.duration
            row.duration = format_duration(duration / 1000 if duration is not None else None)
            if record.finished:
                row.final = True
                row.summary = record.error or ""
        if row.final and row.status in ("succeeded", "failed"):
            try:
                value = message.get_result(backend=broker.get_results_backend())
                row.summary = short_repr(value, 80)
                row.detail = pre(short_repr(value, 5000))
            except ResultFailure as e:
                row.summary = short_repr(f"{e.orig_exc_type}: {e.orig_exc_msg}", 80)[1:-1]
                row.detail = pre(e.traceback or f"{e.orig_exc_type}: {e.orig_exc_msg}")
            except (ResultMissing, RuntimeError):
                row.summary = row.summary or "(result not stored)"
        return row

    def _table(self) -> list[tuple[str, _Row]]:
        recent = self.history.recent()
        keep = {m.message_id for m, _ in recent}
        self._rows = {k: v for k, v in self._rows.items() if k in keep}
        return [(str(m), self._row(m, b)) for m, b in recent]

    def html(self) -> str:
        rows = []
        for call, row in self._table():
            summary = escape(row.summary)
            if row.detail:
                summary = f"<details><summary>{summary}</summary>{row.detail}</details>"
            rows.append(
                [f"<code>{escape(short_repr(call, 60)[1:-1])}</code>", badge(row.status),
                 escape(row.duration), summary]
            )  # fmt: skip
        if not rows:
            rows = [["<i>nothing sent yet</i>", "", "", ""]]
        return box(table(["message", "status", "duration", "result"], rows))

    def text(self) -> str:
        lines = []
        for call, row in self._table():
            lines.append(f"{call[:40]:<40} {row.status:<10} {row.summary}")
        return "\n".join(lines) or "(nothing sent yet)"
