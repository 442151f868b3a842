"""The job view: one message's status, progress, streamed output and result, live.

``JobState`` folds a message's live events into what the view shows (plain Python, no widgets);
``JobView`` renders it with ipywidgets from one publisher thread per view, at most
``MAX_RATE`` times a second, and stops once the message finishes.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ...broker import Broker, get_broker
from ...common import q_name
from ...errors import LiveUnavailable
from ...live import LiveEvent, MessageStatus, Progress, transport_for
from ...message import Message
from ...results import Results
from ...results.errors import ResultFailure, ResultMissing, ResultTimeout
from .html import BAR_STYLES, badge, box, escape, format_duration, pre, short_repr

__all__ = ["JobState", "JobView"]

#: The most renders a view makes per second.
MAX_RATE = 10

#: How many lines of streamed output a view keeps.
TAIL_LINES = 40

#: How many characters of streamed output a view keeps.
TAIL_CHARS = 8000


@dataclasses.dataclass
class JobState:
    """What a job view shows, built from the message's events.

    Attributes:
      summary: the call, e.g. ``add(1, x=2)``.
      status: the latest status (``"sent"`` before any is known).
      attempt: the attempt number.
      started: when the latest attempt started (monotonic seconds), while known.
      duration: how long the finished attempt ran, in seconds.
      progress: the latest progress report.
      rate: progress units per second since the first report of this attempt.
      output: the tail of the streamed output.
      lines: how many output lines were seen in all.
      result: the result, once succeeded and stored.
      has_result: whether ``result`` is set.
      error: a one-line error, once failed.
      traceback: the traceback text of a failure, when stored.
      abort_requested: Cancel was pressed.
    """

    summary: str
    status: str = "sent"
    attempt: int = 0
    started: float | None = None
    duration: float | None = None
    progress: Progress | None = None
    rate: float | None = None
    output: collections.deque[str] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=TAIL_LINES)
    )
    lines: int = 0
    result: Any = None
    has_result: bool = False
    error: str | None = None
    traceback: str | None = None
    abort_requested: bool = False
    _first_progress: tuple[float, float] | None = None

    @property
    def finished(self) -> bool:
        """Whether the job will not run again."""
        return self.status in ("succeeded", "failed", "skipped", "aborted", "dead")

    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds the latest attempt has run (or ran)."""
        if self.duration is not None:
            return self.duration
        if self.started is None:
            return None
        return max(0.0, (now if now is not None else time.monotonic()) - self.started)

    @property
    def eta(self) -> float | None:
        """Seconds left, from the progress rate, when the total is known."""
        p = self.progress
        if p is None or not p.total or not self.rate or self.rate <= 0:
            return None
        return max(0.0, (p.total - p.done) / self.rate)

    def apply(self, event: LiveEvent, now: float | None = None) -> None:
        """Fold one event into the state."""
        now = time.monotonic() if now is None else now
        if event.kind == "status":
            status = event.status
            if status is None:
                return
            self.status = str(status)
            self.attempt = int(event.data.get("attempt") or self.attempt)
            if status is MessageStatus.running:
                self.started, self.duration = now, None
                self.progress, self.rate, self._first_progress = None, None, None
            elif status.finished or status is MessageStatus.retrying:
                duration = event.data.get("duration")
                if isinstance(duration, (int, float)):
                    self.duration = duration / 1000
                elif self.started is not None:
                    self.duration = now - self.started
                error = event.data.get("error")
                if isinstance(error, str) and error:
                    self.error = error
        elif event.kind == "progress":
            report = event.progress
            if report is None:
                return
            if self._first_progress is None:
                self._first_progress = (now, report.done)
            else:
                t0, d0 = self._first_progress
                if now > t0 and report.done > d0:
                    self.rate = (report.done - d0) / (now - t0)
            self.progress = report
        elif event.kind == "output":
            self._add_output(event.text)
        elif event.kind == "dropped":
            self._add_output(f"[... {event.data.get('events', '?')} older events dropped ...]\n")

    def _add_output(self, text: str) -> None:
        if not text:
            return
        parts = text.split("\n")
        if self.output and not self.output[-1].endswith("\n"):
            self.output[-1] += parts.pop(0) + ("\n" if parts else "")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last and not part:
                break
            self.output.append(part if last else part + "\n")
            self.lines += 1
        while sum(len(line) for line in self.output) > TAIL_CHARS and len(self.output) > 1:
            self.output.popleft()

    # -- text -------------------------------------------------------------------------------

    def progress_text(self) -> str:
        """``"3/10 · 2.5/s · ETA 2.8 s · loading"``, or ``""`` with no progress."""
        p = self.progress
        if p is None:
            return ""
        parts = [f"{p.done:g}/{p.total:g}" if p.total is not None else f"{p.done:g}"]
        if self.rate and not self.finished:
            parts.append(f"{self.rate:.3g}/s")
            if self.eta is not None:
                parts.append(f"ETA {format_duration(self.eta)}")
        if p.desc:
            parts.append(p.desc)
        return " · ".join(parts)

    def outcome_text(self) -> str:
        """The result or the error, in one line (``""`` while unfinished)."""
        if self.status == "succeeded":
            return f"-> {short_repr(self.result)}" if self.has_result else "(result not stored)"
        if self.error:
            return self.error
        return ""

    def text(self) -> str:
        """A one-line summary with the status and outcome (no times, no ids)."""
        parts = [f"{self.summary}: {self.status}"]
        if self.progress is not None and not self.finished:
            parts.append(self.progress_text())
        outcome = self.outcome_text()
        if outcome:
            parts.append(outcome)
        return "<nbqueue job " + ", ".join(parts) + ">"

    def header_html(self) -> str:
        elapsed = format_duration(self.elapsed())
        attempt = f" · attempt {self.attempt}" if self.attempt > 1 else ""
        cancelling = " · cancelling…" if self.abort_requested and not self.finished else ""
        return (
            f"<code>{escape(self.summary)}</code> {badge(self.status)}"
            f' <span style="color: var(--jp-ui-font-color2, #757575);">'
            f"{escape(elapsed)}{attempt}{cancelling}</span>"
        )

    def output_html(self) -> str:
        return pre("".join(self.output)) if self.output else ""

    def outcome_html(self) -> str:
        if self.status == "succeeded":
            if not self.has_result:
                return '<span style="color: var(--jp-ui-font-color2, #757575);">(result not stored)</span>'
            return f"<code>{escape(short_repr(self.result, 2000))}</code>"
        if not self.error:
            return ""
        color = "var(--jp-error-color1, #d32f2f)"
        text = f'<span style="color: {color};">{escape(self.error)}</span>'
        if self.traceback:
            text += f"<details><summary>Traceback</summary>{pre(self.traceback)}</details>"
        return text

    def html(self) -> str:
        """The static ``text/html`` form (for saved notebooks and frontends without widgets)."""
        parts = [f"<div>{self.header_html()}</div>"]
        progress = self.progress_text()
        if progress:
            fraction = self.progress.fraction if self.progress is not None else None
            bar = f'<progress value="{fraction:.3f}" max="1"></progress> ' if fraction else ""
            parts.append(f"<div>{bar}{escape(progress)}</div>")
        if self.output:
            parts.append(
                f"<details><summary>Output ({self.lines} lines)</summary>"
                f"{self.output_html()}</details>"
            )
        outcome = self.outcome_html()
        if outcome:
            parts.append(f"<div>{outcome}</div>")
        return box("".join(parts))


def _summary(message: Message[Any], limit: int = 100) -> str:
    text = str(message)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class JobView:
    """A live view of one message: status, elapsed time, progress, output tail, result or
    error, and Cancel/Retry buttons.

    Displaying it shows the widget, with ``text/plain`` (the call only, so that it is stable)
    and ``text/html`` (the state when displayed) fallbacks for frontends without the widget
    manager. One publisher thread per view renders at most ``MAX_RATE`` times a second; it
    stops when the message finishes or ``close()`` is called.

    Parameters:
      message: the message to watch.
      broker: the broker it was sent with (default: the global broker).
      before_send: called before Retry sends again (the notebook starts its worker there).
      idle: set while no cell runs; the view builds its widgets once it is set (or after a
        second), so that building them does not slow down the cell that displays the view.
    """

    def __init__(
        self,
        message: Message[Any],
        *,
        broker: Broker | None = None,
        before_send: Callable[[], object] | None = None,
        idle: threading.Event | None = None,
    ) -> None:
        self.idle = idle
        self.broker = broker or get_broker()
        self.message = message
        self.before_send = before_send
        self.state = JobState(_summary(message))
        self._generation = 0
        self._closed = False
        self._poked = False
        self._lock = threading.Lock()
        # Only two widgets exist when the view is displayed: every widget costs a comm message
        # or three, and the cell that displays the view must return at once. The publisher
        # thread builds the rest (_build) before it first renders.
        self.header = widgets.HTML(self.state.header_html())
        self.widget = widgets.VBox([self.header])
        self._built = False
        self.thread: threading.Thread | None = None
        self.renders = 0
        self._start()

    def __repr__(self) -> str:
        return self.state.text()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = self.widget._repr_mimebundle_(**kwargs) or {}
        # Stable whatever the timing (nbval compares it); the widget and repr() show the status.
        data["text/plain"] = f"<nbqueue job {self.state.summary}>"
        data["text/html"] = self.state.html()
        return data

    # -- actions (called from the kernel's main thread by button clicks) -------------------

    def cancel(self) -> bool:
        """Abort the message (skipped if queued, interrupted if running); returns at once.

        Returns:
          False when it had already finished.
        """
        self.state.abort_requested = True
        self._poked = True
        return self.message.abort(broker=self.broker)

    def retry(self) -> Message[Any]:
        """Send the same call again and watch the new message in this view.

        Raises:
          ActorNotFound: the actor is no longer declared on the broker.
        """
        actor = self.broker.get_actor(self.message.actor_name)
        if self.before_send is not None:
            self.before_send()
        options = {
            k: v
            for k, v in self.message.options.items()
            if k not in ("eta", "retries", "traceback", "redis_message_id", "requeue_timestamp")
        }
        message = actor.message_with_options(
            args=self.message.args, kwargs=self.message.kwargs, **options
        )
        message = dataclasses.replace(message, queue_name=q_name(self.message.queue_name))
        sent = self.broker.enqueue(message)
        with self._lock:
            self.message = sent
            self.state = JobState(_summary(sent))
            self._start()
        return sent

    def close(self) -> None:
        """Stop updating and close the widgets."""
        self._closed = True
        self.widget.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the view rendered the message's end; returns whether it did."""
        thread = self.thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    # -- the publisher thread ----------------------------------------------------------------

    def _build(self) -> None:
        if self._built:
            return
        self._built = True
        if self.idle is not None:
            self.idle.wait(1.0)
        self.bar = widgets.FloatProgress(
            value=0.0, min=0.0, max=1.0, layout=widgets.Layout(display="none", width="40%")
        )
        self.progress_label = widgets.HTML("")
        self.output = widgets.HTML("")
        self.output_box = widgets.Accordion(
            children=[self.output], layout=widgets.Layout(display="none")
        )
        self.output_box.set_title(0, "Output")
        self.outcome = widgets.HTML("")
        self.cancel_button = widgets.Button(
            description="Cancel", icon="stop", layout=widgets.Layout(width="auto")
        )
        self.retry_button = widgets.Button(
            description="Retry", icon="redo", disabled=True, layout=widgets.Layout(width="auto")
        )
        self.cancel_button.on_click(lambda _: self.cancel())
        self.retry_button.on_click(lambda _: self.retry())
        self.widget.children = (
            widgets.HBox([self.header, self.cancel_button, self.retry_button]),
            widgets.HBox([self.bar, self.progress_label]),
            self.output_box,
            self.outcome,
        )

    def _start(self) -> None:
        self._generation += 1
        self.thread = threading.Thread(
            target=self._run,
            args=(self._generation, self.message, self.state),
            name="nbqueue-job-view",
            daemon=True,
        )
        self.thread.start()

    def _current(self, generation: int) -> bool:
        return not self._closed and generation == self._generation

    def _run(self, generation: int, message: Message[Any], state: JobState) -> None:
        self._build()
        try:
            transport = transport_for(self.broker)
        except LiveUnavailable:
            self._run_without_live(generation, message, state)
            return
        self._render(state)
        interval = 1 / MAX_RATE
        cursor, last, dirty, checked = 0, 0.0, False, 0.0
        while self._current(generation):
            events = transport.read(message.message_id, cursor, block=interval if dirty else 1.0)
            now = time.monotonic()
            for event in events:
                if event.offset > cursor + 1 and cursor:
                    state.apply(LiveEvent(event.offset - 1, "dropped", {"events": "some"}), now)
                state.apply(event, now)
                cursor = event.offset
            if events or self._poked:
                dirty, self._poked = True, False
            if state.status == "running" and now - last >= 1.0:
                dirty = True  # the elapsed time ticks once a second
            if not state.finished and not events and now - checked >= 1.0:
                checked = now
                record = transport.status(message.message_id)
                if record is not None and record.finished and record.offset <= cursor:
                    state.status = str(record.status)
                    state.error = record.error
            if state.finished:
                break
            if dirty and now - last >= interval:
                self._render(state)
                last, dirty = now, False
        if self._current(generation):
            self._finish(message, state)

    def _run_without_live(self, generation: int, message: Message[Any], state: JobState) -> None:
        # No live channel (e.g. RabbitMQ without a RedisBackend): wait for the result alone.
        self._build()
        self._render(state)
        while self._current(generation):
            try:
                state.result = message.get_result(
                    backend=self.broker.get_results_backend(), block=True, timeout=1000
                )
                state.has_result, state.status = True, "succeeded"
            except ResultTimeout:
                continue
            except ResultFailure as e:
                state.status, state.error = "failed", f"{e.orig_exc_type}: {e.orig_exc_msg}"
                state.traceback = e.traceback
            except (RuntimeError, ResultMissing):
                break  # no result backend: nothing more to learn
            break
        if self._current(generation):
            self._render(state)

    def _finish(self, message: Message[Any], state: JobState) -> None:
        if state.status == "succeeded" or state.status == "failed":
            try:
                backend = self.broker.get_results_backend()
                # Stores write the result with the final status (Redis) or before it (memory);
                # should a Live placed before Results write the status first, a stored result
                # is a moment away: wait for it when one is coming.
                results = next((m for m in self.broker.middleware if isinstance(m, Results)), None)
                wait = results is not None and results.stores(self.broker, message)
                state.result = message.get_result(backend=backend, block=wait, timeout=5000)
                state.has_result = True
            except ResultFailure as e:
                state.error = f"{e.orig_exc_type}: {e.orig_exc_msg}"
                state.traceback = e.traceback
            except (ResultMissing, ResultTimeout, RuntimeError):
                pass
        self._render(state)

    def _render(self, state: JobState) -> None:
        self.renders += 1
        self.header.value = state.header_html()
        progress = state.progress
        if progress is not None:
            fraction = progress.fraction
            self.bar.value = fraction if fraction is not None else 0.0
            self.bar.layout.display = "" if fraction is not None else "none"
            self.bar.bar_style = BAR_STYLES.get(state.status, "")
            self.progress_label.value = escape(state.progress_text())
        if state.output:
            self.output.value = state.output_html()
            self.output_box.set_title(0, f"Output ({state.lines} lines)")
            self.output_box.layout.display = ""
        self.outcome.value = state.outcome_html()
        self.cancel_button.disabled = state.finished or state.abort_requested
        self.retry_button.disabled = not state.finished
