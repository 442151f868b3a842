"""``%nbqueue jobs`` and ``%nbqueue attach`` through a real shell."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from IPython.core.error import UsageError

import nbqueue
from nbqueue.live.channel import get_publisher
from nbqueue.live.middleware import transport_for


def test_nbqueue_jobs_lists_this_kernels_jobs_from_the_history(ip: Any, magics: Any) -> None:
    ip.run_cell_magic("actor", "", "def add(x, y):\n    print('adding')\n    return x + y")
    ip.run_cell("m = add.send(2, 3)\nr = m.get_result(block=True, timeout=10000)")
    assert ip.user_ns["r"] == 5
    assert magics.local is not None
    store = magics.local.store
    message_id = ip.user_ns["m"].message_id
    # the final status is recorded right after the ack, by the worker thread: wait for its write
    assert store.until(
        lambda: (found := store.job(message_id)) is not None and found.status == "succeeded", 10
    )
    table = ip.run_line_magic("nbqueue", "jobs")
    message_id = ip.user_ns["m"].message_id
    text = repr(table)
    assert text.splitlines()[0].split() == [
        "id",
        "actor",
        "args",
        "status",
        "started",
        "duration",
        "worker",
    ]
    assert message_id[:8] in text and "succeeded" in text and "2, 3" in text
    bundle = table._repr_mimebundle_()
    assert bundle["text/plain"] == text
    assert "<table" in bundle["text/html"] and "succeeded" in bundle["text/html"]
    assert repr(ip.run_line_magic("nbqueue", "jobs --limit 0")).count("\n") == 1


def test_nbqueue_attach_needs_one_known_id(ip: Any) -> None:
    with pytest.raises(UsageError, match="attach ID"):
        ip.run_line_magic("nbqueue", "attach")
    with pytest.raises(UsageError, match="No job 'nope'"):
        ip.run_line_magic("nbqueue", "attach nope")


@pytest.mark.redis
def test_attach_after_a_restart_follows_a_job_a_worker_still_runs(
    ip: Any, redis_url: str, namespace: str, worker_factory: Any
) -> None:
    from tests.brokers._redis import delete_namespace

    ip.run_line_magic("nbqueue", f"connect {redis_url} --namespace {namespace}")
    broker = nbqueue.get_broker()
    release = threading.Event()
    try:
        # the worker: another process in real life, with its own declaration of the actor
        @nbqueue.actor(actor_name="long_job", store_results=True)
        def long_job(n: int) -> int:
            release.wait(30)
            return n * 2

        worker_factory(broker)
        sent = long_job.send(21)
        get_publisher(transport_for(broker)).flush()
        # the kernel restarted: only the id is known
        attached = ip.run_line_magic("nbqueue", f"attach {sent.message_id[:10]}")
        assert isinstance(attached, nbqueue.Message)
        assert attached.message_id == sent.message_id and attached.args == (21,)
        same = nbqueue.attach(sent.message_id)
        assert same.message_id == sent.message_id
        bundle = ip.display_formatter.format(attached)[0]
        assert "text/plain" in bundle and "long_job" in bundle["text/plain"]
        release.set()
        assert attached.get_result(block=True, timeout=10000) == 42
    finally:
        release.set()
        delete_namespace(broker.client, namespace)  # type: ignore[attr-defined]
