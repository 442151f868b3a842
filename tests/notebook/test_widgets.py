from __future__ import annotations

import time

import pytest

pytest.importorskip("ipywidgets")

import nbqueue  # noqa: E402
from nbqueue.live import LiveEvent, MessageStatus  # noqa: E402
from nbqueue.notebook.widgets import (  # noqa: E402
    History,
    JobState,
    JobView,
    QueueMonitor,
    ResultsTable,
)
from nbqueue.notebook.widgets import job as job_module  # noqa: E402

WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def broker(worker_factory):
    broker = nbqueue.connect("memory://")
    worker_factory(broker, worker_threads=4)
    return broker


def status(offset, name, **data):
    return LiveEvent(offset, "status", {"status": name, **data})


def test_job_state_folds_status_progress_and_output():
    state = JobState("train(3)")
    state.apply(status(1, "enqueued"), now=0.0)
    state.apply(status(2, "running", attempt=1), now=1.0)
    state.apply(LiveEvent(3, "progress", {"done": 1, "total": 10, "desc": "epoch"}), now=1.0)
    state.apply(LiveEvent(4, "progress", {"done": 5, "total": 10, "desc": "epoch"}), now=3.0)
    state.apply(LiveEvent(5, "output", {"text": "loss 0.5\nloss", "stream": "stdout"}), now=3.0)
    state.apply(LiveEvent(6, "output", {"text": " 0.4\n", "stream": "stdout"}), now=3.0)
    assert state.rate == 2.0
    assert state.eta == 2.5
    assert state.progress_text() == "5/10 · 2/s · ETA 2.5 s · epoch"
    assert "".join(state.output) == "loss 0.5\nloss 0.4\n"
    assert state.text() == "<nbqueue job train(3): running, 5/10 · 2/s · ETA 2.5 s · epoch>"
    state.apply(status(7, "failed", attempt=1, duration=2500, error="ValueError: bad"), now=4.0)
    assert state.finished
    assert state.elapsed() == 2.5
    assert state.text() == "<nbqueue job train(3): failed, ValueError: bad>"
    assert "var(--jp-error-color1" in state.html()


def test_job_state_keeps_a_bounded_tail_of_output():
    state = JobState("chatty()")
    for i in range(10_000):
        state.apply(LiveEvent(i + 1, "output", {"text": f"line {i}\n", "stream": "stdout"}))
    assert state.lines == 10_000
    assert len(state.output) == job_module.TAIL_LINES
    assert state.output[-1] == "line 9999\n"
    assert "Output (10000 lines)" in state.html()


def test_job_view_shows_status_progress_output_and_result(broker):
    @nbqueue.actor(store_results=True)
    def work(n):
        for i in range(n):
            nbqueue.progress(i + 1, total=n, desc="step")
            print(f"step {i}")
        return {"total": n}

    message = work.send(5)
    view = JobView(message, broker=broker)
    assert view.join(10)
    state = view.state
    assert state.status == "succeeded"
    assert state.result == {"total": 5}
    assert "step 4\n" in state.output
    assert view.bar.value == 1.0
    assert view.bar.bar_style == "success"
    assert "5/5" in view.progress_label.value
    assert "step 4" in view.output.value
    assert view.output_box.get_title(0) == "Output (5 lines)"
    assert "{&#x27;total&#x27;: 5}" in view.outcome.value
    assert view.cancel_button.disabled and not view.retry_button.disabled
    bundle = view._repr_mimebundle_()
    assert WIDGET in bundle
    assert bundle["text/plain"] == "<nbqueue job work(5)>"  # stable for nbval
    assert "succeeded" in bundle["text/html"] and "--jp-success-color1" in bundle["text/html"]
    assert repr(view) == "<nbqueue job work(5): succeeded, -> {'total': 5}>"


def test_job_view_shows_a_short_error_with_an_expandable_traceback(broker):
    @nbqueue.actor(store_results=True, max_retries=0)
    def broken():
        raise ValueError("no such file")

    view = JobView(broken.send(), broker=broker)
    assert view.join(10)
    assert view.state.status == "failed"
    assert view.state.error == "ValueError: no such file"
    assert "<details><summary>Traceback</summary>" in view.outcome.value
    assert "raise ValueError" in (view.state.traceback or "")
    assert repr(view) == ("<nbqueue job broken(): failed, ValueError: no such file>")


def test_cancel_stops_a_running_job(broker):
    # The job spins forever: only the cancel can end it.
    @nbqueue.actor(store_results=True)
    def spin():
        while True:
            time.sleep(0.01)

    message = spin.send()
    view = JobView(message, broker=broker)
    for event in message.events(timeout=30000):
        if event.status is MessageStatus.running:
            break
    assert view.cancel()
    assert view.join(30)
    assert view.state.status == "aborted"
    assert view.retry_button.disabled is False


def test_retry_sends_the_same_call_again_and_follows_it(broker):
    attempts = []

    @nbqueue.actor(store_results=True, max_retries=0)
    def flaky(x):
        attempts.append(x)
        if len(attempts) == 1:
            raise RuntimeError("first time")
        return x * 2

    first = flaky.send(21)
    view = JobView(first, broker=broker)
    assert view.join(10) and view.state.status == "failed"
    second = view.retry()
    assert second.message_id != first.message_id
    assert view.join(10)
    assert view.message is second
    assert view.state.status == "succeeded" and view.state.result == 42


def test_a_view_renders_at_most_ten_times_a_second(broker):
    @nbqueue.actor(store_results=True)
    def busy():
        deadline = time.monotonic() + 1.0
        i = 0
        while time.monotonic() < deadline:
            i += 1
            nbqueue.progress(i)
            if i % 100 == 0:
                print(i)
        return i

    # The bound is ten a second of the view's own life, measured around it: a slow machine
    # makes the view live longer, never render more often.
    started = time.monotonic()
    view = JobView(busy.send(), broker=broker)
    assert view.join(30)
    lived = time.monotonic() - started
    assert view.state.status == "succeeded"
    # one render at the start, at most one per 0.1 s while it follows, one at the end
    assert view.renders <= 10 * lived + 3, (view.renders, lived)


def test_queue_monitor_shows_counts_rate_and_worker(broker):
    @nbqueue.actor
    def later():
        pass

    later.send_with_options(delay=60000)
    monitor = QueueMonitor(broker, worker_status=lambda: "running", rate=lambda: 1.5)
    try:
        bundle = monitor._repr_mimebundle_()
        assert WIDGET in bundle
        assert bundle["text/plain"].splitlines()[1].split() == ["default", "0", "1", "0", "0"]
        assert "embedded worker: running" in bundle["text/plain"]
        assert "1.50 messages/s" in bundle["text/html"]
    finally:
        monitor.close()
    monitor.thread.join(2)
    assert not monitor.thread.is_alive()


def test_results_table_lists_recent_messages_with_results(broker):
    @nbqueue.actor(store_results=True, max_retries=0)
    def square(x):
        if x < 0:
            raise ValueError("negative")
        return x * x

    history = History()
    messages = [square.send(3), square.send(-1)]
    for message in messages:
        history.add(message, broker)
    for message in messages:
        list(message.events(timeout=10000))
    table = ResultsTable(history)
    try:
        table.refresh()
        text = table._repr_mimebundle_()["text/plain"].splitlines()
        assert text[0].split() == ["square(-1)", "failed", "ValueError:", "negative"]
        assert text[1].split() == ["square(3)", "succeeded", "9"]
        assert "<details><summary>9</summary>" in table.widget.value
    finally:
        table.close()
