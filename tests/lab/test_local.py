"""The embedded broker's jobs in the sidebar: written by a kernel's SQLite history, acted on
through the commands table that kernel serves."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.history import set_origin
from nbqueue.history.base import origin
from nbqueue.notebook.jobs import LocalHistory
from nbqueue.results.backends import StubBackend
from tests.lab.conftest import body

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


@pytest.fixture
def kernel(history_path: str) -> Iterator[tuple[StubBroker, LocalHistory]]:
    """This process as a kernel: an embedded broker whose jobs its LocalHistory records."""
    previous = origin()
    set_origin("lab/nb.ipynb", "kernel-under-test")
    broker = StubBroker()
    broker.add_middleware(nbqueue.results.Results(backend=StubBackend()))
    broker.add_middleware(nbqueue.live.Live())
    broker.emit_after("process_boot")
    local = LocalHistory(history_path)
    assert local.attach(broker)
    yield broker, local
    local.detach()
    broker.close()
    set_origin(*previous)


async def test_a_local_job_is_listed_and_cancelled_through_its_kernel(
    jp_fetch: Any, kernel: tuple[StubBroker, LocalHistory], worker_factory: Any
) -> None:
    broker, local = kernel
    started = threading.Event()

    @nbqueue.actor(broker=broker, max_retries=0)
    def spin() -> None:
        started.set()
        for _ in range(12000):  # Python bytecode, where the Abort lands
            time.sleep(0.005)

    worker_factory(broker)
    message = spin.send()
    assert started.wait(10)
    assert local.store.flush()
    listed = body(await jp_fetch("nbqueue", "api", "jobs", params={"notebook": "lab/nb.ipynb"}))
    [job] = [j for j in listed["jobs"] if j["source"] == "local"]
    assert (job["id"], job["status"], job["kernel"]) == (
        message.message_id,
        "running",
        "kernel-under-test",
    )
    assert local.store.kernel_seen("kernel-under-test") is not None

    answer = await jp_fetch(
        "nbqueue", "api", "jobs", message.message_id, "cancel", method="POST", body=""
    )
    assert body(answer) == {"ok": True}
    # the kernel's writer thread picks the command up (within a second) and aborts the job
    statuses = [e.data.get("status") for e in message.events(broker=broker, timeout=20000)]
    assert statuses[-1] == "aborted"
    assert local.store.until(
        lambda: (
            (found := local.store.job(message.message_id)) is not None and found.status == "aborted"
        ),
        10,
    )
    detail = body(await jp_fetch("nbqueue", "api", "jobs", message.message_id))
    assert detail["status"] == "aborted"


async def test_a_local_job_shows_its_result_and_a_failed_one_its_traceback(
    jp_fetch: Any, kernel: tuple[StubBroker, LocalHistory], worker_factory: Any
) -> None:
    broker, local = kernel

    @nbqueue.actor(broker=broker, max_retries=0, store_results=True)
    def triple(x: int) -> dict[str, Any]:
        return {"value": 3 * x, "unit": "m"}

    @nbqueue.actor(broker=broker, max_retries=0, store_results=True)
    def explode() -> None:
        raise KeyError("missing-column")

    worker_factory(broker)
    good, bad = triple.send(20), explode.send()
    finals = {good.message_id: "succeeded", bad.message_id: "failed"}

    def written() -> bool:
        return all(
            (job := local.store.job(i)) is not None and job.status == status
            for i, status in finals.items()
        )

    assert local.store.until(written, 20)
    detail = body(await jp_fetch("nbqueue", "api", "jobs", good.message_id))
    assert detail["result"] == {"value": 60, "unit": "m"}
    assert detail["result_repr"] == "{'value': 60, 'unit': 'm'}"
    assert detail["error"] is None
    detail = body(await jp_fetch("nbqueue", "api", "jobs", bad.message_id))
    assert detail["result"] is None
    assert detail["error"]["type"] == "KeyError"
    assert "missing-column" in detail["error"]["traceback"]
    assert 'raise KeyError("missing-column")' in detail["error"]["traceback"]


async def test_the_schedules_of_a_running_kernel_are_listed(
    jp_fetch: Any, history_path: str
) -> None:
    previous = origin()
    set_origin("lab/nb.ipynb", "kernel-with-schedules")
    broker = StubBroker()
    broker.add_middleware(nbqueue.results.Results(backend=StubBackend()))
    broker.add_middleware(nbqueue.live.Live())
    broker.emit_after("process_boot")

    @nbqueue.actor(broker=broker)
    def report() -> None:
        pass

    nbqueue.schedule(report, nbqueue.every(3_600_000), name="hourly-report")
    local = LocalHistory(history_path)
    try:
        assert local.attach(broker)
        assert local.store.until(lambda: local.store.kernel_schedules(60_000) != [], 20)
        found = body(await jp_fetch("nbqueue", "api", "schedules"))["schedules"]
        (row,) = [r for r in found if r["name"] == "hourly-report"]
        assert row["actor"] == "report" and row["rule"] == str(nbqueue.every(3_600_000))
        assert row["paused"] is False and row["last_run"] is None
        assert row["next_run"] > time.time() * 1000
        assert row["kernel"] == "kernel-with-schedules"
    finally:
        local.detach()
        broker.close()
        set_origin(*previous)


async def test_a_job_of_a_kernel_that_is_gone_is_refused(
    jp_fetch: Any, kernel: tuple[StubBroker, LocalHistory], worker_factory: Any
) -> None:
    broker, local = kernel

    @nbqueue.actor(broker=broker)
    def noop() -> None:
        pass

    worker_factory(broker)
    message = noop.send()
    broker.join(noop.queue_name, timeout=10000)
    local.detach()  # the kernel shuts down: it says so in the history
    with pytest.raises(HTTPClientError) as gone:
        await jp_fetch(
            "nbqueue", "api", "jobs", message.message_id, "retry", method="POST", body=""
        )
    assert gone.value.code == 409
    assert "not running" in body(gone.value.response)["message"]
