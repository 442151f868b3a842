"""The batch view: its model state after a batch with failures, on memory and on Redis, and its
display for the list send_many returns and for a group."""

from __future__ import annotations

import threading

import pytest

import nbqueue
from nbqueue.message import MessageList
from nbqueue.notebook.widgets import BatchView
from tests.live.conftest import kind, live_broker, make_broker  # noqa: F401 - fixtures


def test_the_view_counts_a_batch_with_failures(live_broker, worker_factory):  # noqa: F811
    @nbqueue.actor(max_retries=0)
    def run(i: int) -> int:
        if i % 3 == 2:
            raise ValueError(f"run {i} failed")
        return i

    worker_factory(live_broker, worker_threads=3)
    messages = run.send_many(range(9))
    view = BatchView(messages, broker=live_broker)
    assert view.join(30)  # its thread ends once every message finished
    state = view.state
    assert (state.total, state.done, state.failed, state.running, state.queued) == (9, 6, 3, 0, 0)
    assert view.bar.value == 1.0
    assert view.bar.bar_style == "danger"
    assert [(f.actor, f.args, f.error) for f in state.failures] == [
        ("run", str(i), f"ValueError: run {i} failed") for i in (2, 5, 8)
    ]
    assert "9/9 finished · 6 done · 3 failed · 0 running · 0 queued" in view.counts.value
    assert "ValueError: run 5 failed" in view.failures.value
    bundle = view._repr_mimebundle_()
    assert bundle["text/plain"] == "<nbqueue batch of 9 messages>"
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "6 done" in bundle["text/html"]


def test_the_view_updates_while_the_batch_runs_and_stops_when_closed(
    live_broker,  # noqa: F811
    worker_factory,
):
    gate = threading.Event()

    @nbqueue.actor
    def held(i: int) -> int:
        gate.wait(30)
        return i

    worker_factory(live_broker, worker_threads=2)
    messages = held.send_many(range(4))
    view = BatchView(messages, broker=live_broker)
    try:
        with view.rendered:  # rendered from its thread as the records change
            assert view.rendered.wait_for(lambda: view.state.running >= 2, timeout=30)
        assert view.state.finished == 0 and view.bar.value == 0.0
    finally:
        view.close()
        gate.set()
    assert view.join(30)


def test_a_group_is_viewed_as_its_messages(live_broker, worker_factory):  # noqa: F811
    @nbqueue.actor
    def one(i: int) -> int:
        return i

    worker_factory(live_broker)
    g = nbqueue.group([one.message(i) for i in range(3)]).run()
    view = BatchView(g)
    assert view.join(30)
    assert (view.state.total, view.state.done) == (3, 3)


def test_send_many_returns_a_plain_list_that_a_notebook_shows_as_a_batch(ip):
    ip.run_cell_magic("actor", "", "def add(x, y):\n    return x + y\n")
    assert ip.run_cell("runs = add.send_many([(1, 2), (3, 4)])").success
    runs = ip.user_ns["runs"]
    assert isinstance(runs, list) and isinstance(runs, MessageList)
    assert runs == list(runs) and type(runs[:1]) is list
    assert [r.get_result(block=True) for r in runs] == [3, 7]
    bundle, _ = ip.display_formatter.format(runs)
    assert bundle["text/plain"] == "<nbqueue batch of 2 messages>"
    assert "application/vnd.jupyter.widget-view+json" in bundle
    bundle, _ = ip.display_formatter.format(list(runs))  # a plain list stays a list
    assert "application/vnd.jupyter.widget-view+json" not in bundle


def test_without_the_extension_the_list_displays_as_a_list():
    pytest.importorskip("IPython")
    from IPython.core.formatters import DisplayFormatter

    message = nbqueue.Message("default", "add", (1,), {}, {})
    bundle, _ = DisplayFormatter().format(MessageList([message]))
    assert "application/vnd.jupyter.widget-view+json" not in bundle
    assert bundle["text/plain"].startswith("[Message(")
