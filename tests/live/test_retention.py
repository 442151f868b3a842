"""The embedded broker keeps a bounded number of finished jobs, and every job whose handle lives.

Counts, not memory readings: what the stores hold is counted directly.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.errors import ResultMissing
from nbqueue.live import Live, MessageStatus
from nbqueue.live import memory as memory_module
from nbqueue.live.memory import MemoryTransport
from nbqueue.live.retention import Retention
from nbqueue.middleware import default_middleware
from nbqueue.results import Results
from nbqueue.results.backends import StubBackend


@pytest.fixture
def bounded() -> Iterator[tuple[StubBroker, StubBackend, MemoryTransport]]:
    """The embedded stack (Results with a Retention, Live) with small limits."""
    backend = StubBackend(retention=Retention(max_jobs=20, max_bytes=None))
    broker = StubBroker(
        middleware=[
            *(m() for m in default_middleware),
            Results(backend=backend, store_results=True),
            Live(),
        ]
    )
    previous = nbqueue.get_broker()
    nbqueue.set_broker(broker)
    transport = backend.live_transport()
    assert isinstance(transport, MemoryTransport)
    yield broker, backend, transport
    nbqueue.set_broker(previous)
    broker.close()


def _run(broker: StubBroker, queue: str) -> None:
    worker = nbqueue.Worker(broker, worker_threads=2)
    worker.start()
    try:
        broker.join(queue)
        worker.join()
    finally:
        worker.stop()


def _kept(backend: StubBackend, transport: MemoryTransport) -> tuple[int, int]:
    return len(backend.results), len(transport._logs)


def test_finished_jobs_whose_handles_are_gone_are_released_past_the_newest_n(bounded):
    broker, backend, transport = bounded

    @nbqueue.actor(queue_name="retention_released")
    def noop(i: int) -> int:
        return i

    for i in range(200):
        noop.send(i)  # the handle is dropped at once
    gc.collect()
    _run(broker, "retention_released")
    results, logs = _kept(backend, transport)
    # released in batches once past the limit by a tenth
    assert 20 <= results <= 22 and 20 <= logs <= 22
    assert backend.retention is not None and backend.retention.released == 200 - results
    assert backend.retention.kept == logs and backend.retention.held == 0


def test_a_handle_the_user_holds_keeps_its_result_and_its_events(bounded):
    broker, backend, transport = bounded

    @nbqueue.actor(queue_name="retention_held")
    def shout(i: int) -> int:
        print(f"job {i}")
        return i * 2

    held = shout.send(0)
    for i in range(1, 200):
        shout.send(i)
    gc.collect()
    _run(broker, "retention_held")
    assert held.get_result() == 0
    status = held.status()
    assert status is not None and status.status is MessageStatus.succeeded
    events = list(held.events(follow=False))
    assert any(e.kind == "output" and e.data.get("text") == "job 0\n" for e in events)
    results, logs = _kept(backend, transport)
    assert results <= 23 and logs <= 23  # the newest 20 to 22, and the held one
    assert backend.retention is not None and backend.retention.held == 1


def test_a_held_job_is_released_once_its_handle_goes(bounded, monkeypatch):
    broker, backend, transport = bounded
    monkeypatch.setattr(memory_module, "HELD_CHECK_INTERVAL", 0.0)

    @nbqueue.actor(queue_name="retention_handle_gone")
    def noop(i: int) -> int:
        return i

    held = noop.send(0)
    held_id, held_key = held.message_id, backend.build_message_key(held)
    for i in range(1, 50):
        noop.send(i)
    _run(broker, "retention_handle_gone")
    assert held_key in backend.results and held_id in transport._logs
    del held
    gc.collect()
    for i in range(50, 52):  # the next finished jobs check the held ones again
        noop.send(i)
    _run(broker, "retention_handle_gone")
    assert held_key not in backend.results and held_id not in transport._logs
    with pytest.raises(ResultMissing):
        backend.get_result(noop.message(0).copy(message_id=held_id))


def test_a_reader_waiting_on_a_released_job_keeps_its_events(bounded):
    broker, backend, transport = bounded
    started = threading.Event()

    @nbqueue.actor(queue_name="retention_reader")
    def noop(i: int) -> int:
        return i

    message = noop.send(0)
    read: list[Any] = []

    def follow() -> None:
        started.set()
        read.extend(message.events(follow=True))

    reader = threading.Thread(target=follow)
    reader.start()
    assert started.wait(30)
    for i in range(1, 100):
        noop.send(i)
    _run(broker, "retention_reader")
    reader.join(60)
    assert not reader.is_alive()
    assert [str(e.status) for e in read if e.kind == "status"][-1] == "succeeded"


def test_the_byte_limit_releases_the_oldest_large_results_and_output():
    retention = Retention(max_jobs=None, max_bytes=20_000)
    backend = StubBackend(retention=retention)
    broker = StubBroker(middleware=[Results(backend=backend, store_results=True), Live()])
    try:

        @nbqueue.actor(queue_name="retention_bytes", broker=broker)
        def big(i: int) -> str:
            print("y" * 1_000)
            return "x" * 1_000

        for i in range(100):
            big.send(i)
        gc.collect()
        _run(broker, "retention_bytes")
        assert len(backend.results) <= 12
        assert retention.result_bytes + retention.text_bytes <= 20_000 + 2_100
        assert retention.released == 100 - len(backend.results)
        # what the counters say is what the stores hold
        assert retention.result_bytes == sum(len(data) for data, _ in backend.results.values())
    finally:
        broker.close()


def test_without_a_retention_the_stub_backend_keeps_every_result_until_its_ttl():
    backend = StubBackend()
    broker = StubBroker(middleware=[Results(backend=backend, store_results=True)])
    try:

        @nbqueue.actor(queue_name="retention_none", broker=broker)
        def noop(i: int) -> int:
            return i

        for i in range(300):
            noop.send(i)
        _run(broker, "retention_none")
        assert len(backend.results) == 300
    finally:
        broker.close()


def test_the_embedded_broker_has_a_retention_with_the_documented_defaults():
    from nbqueue.connection import connect

    previous = nbqueue.get_broker()
    broker = connect("memory://")
    try:
        backend = broker.get_results_backend()
        retention = getattr(backend, "retention", None)
        assert isinstance(retention, Retention)
        assert (retention.max_jobs, retention.max_bytes) == (10_000, 64 * 2**20)
        assert "the newest 10,000" in retention.describe()
    finally:
        nbqueue.set_broker(previous)
        broker.close()


@pytest.mark.parametrize("bad", [0, -1, True])
def test_bad_limits_are_refused_with_what_to_pass(bad):
    with pytest.raises(ValueError, match="positive int or None"):
        Retention(max_jobs=bad)


def test_the_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("NBQUEUE_KEEP_JOBS", "500")
    monkeypatch.setenv("NBQUEUE_KEEP_BYTES", "8M")
    retention = Retention.from_environment()
    assert (retention.max_jobs, retention.max_bytes) == (500, 8 << 20)
    monkeypatch.setenv("NBQUEUE_KEEP_JOBS", "none")
    monkeypatch.setenv("NBQUEUE_KEEP_BYTES", "0")
    assert Retention.from_environment().max_jobs is None
    assert "no limit" in Retention.from_environment().describe()
    monkeypatch.setenv("NBQUEUE_KEEP_BYTES", "lots")
    with pytest.raises(ValueError, match="NBQUEUE_KEEP_BYTES='lots' is not a size"):
        Retention.from_environment()
