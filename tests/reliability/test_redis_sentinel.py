"""Failover through Redis Sentinel: kill -9 the master mid-stream and watch sends and workers
follow the sentinels to the replica they promote.

A private deployment per test (tests/brokers/_sentinel.py): a master, two replicas and three
sentinels (quorum 2, down-after 1 s). The broker and its result store connect through the
``redis+sentinel://`` URL. Each test reports how long sends and processing paused and how many
acknowledged sends were lost (their send() returned, they never ran). Without ``min_replicas``
that figure is reported, never asserted: replication is asynchronous, and a send acknowledged
just before the kill may not have reached the replica. With ``min_replicas=1`` it must be 0.
"""

from __future__ import annotations

import collections
import shutil
import threading
import time
from collections.abc import Iterator

import pytest

import nbqueue
from nbqueue import BrokerError
from nbqueue.brokers.redis import RedisBroker
from nbqueue.connection import broker_from_url
from nbqueue.results import Results
from tests.brokers._sentinel import Deployment, SwitchWatch

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]

#: Messages processed before the master is killed, and acknowledged sends after it resumed.
BEFORE, AFTER = 100, 50


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    if shutil.which("redis-server") is None:
        pytest.fail("the failover tests need redis-server (apt-get install redis-server)")
    cluster = Deployment(down_after_ms=1000)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class Stream:
    """A producer thread sending ``job(i)`` one by one, and what the actor saw."""

    def __init__(self, job: nbqueue.Actor[[int], int]) -> None:
        self.job = job
        self.cond = threading.Condition()
        self.runs: collections.Counter[int] = collections.Counter()
        self.run_at: dict[int, float] = {}
        self.send_started: dict[int, float] = {}
        self.acked: dict[int, float] = {}
        self.raised: collections.Counter[str] = collections.Counter()
        self.last_message: nbqueue.Message[int] | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="sentinel-producer")

    def ran(self, i: int) -> None:
        with self.cond:
            self.runs[i] += 1
            self.run_at.setdefault(i, time.monotonic())
            self.cond.notify_all()

    def _produce(self) -> None:
        i = 0
        while not self.stop.is_set():
            self.send_started[i] = time.monotonic()
            try:
                message = self.job.send(i)
            except BrokerError as e:  # typed: the send did not (surely) happen
                with self.cond:
                    self.raised[type(e).__name__] += 1
            else:
                with self.cond:
                    self.acked[i] = time.monotonic()
                    self.last_message = message
                    self.cond.notify_all()
            i += 1
            self.stop.wait(0.004)  # pacing, about 200 sends a second

    def wait(self, condition: collections.abc.Callable[[], bool], timeout: float, what: str):
        with self.cond:
            assert self.cond.wait_for(condition, timeout), f"timed out waiting for {what}"


@pytest.mark.parametrize("min_replicas", [0, 1])
def test_sends_and_workers_follow_the_sentinels_to_the_new_master(
    deployment, namespace, worker_factory, monkeypatch, record, min_replicas
):
    record.plan_id, record.broker = "S1", f"redis sentinel (min_replicas={min_replicas})"
    record.settings = {"down_after_ms": 1000, "replicas": 2, "sentinels": 3, "quorum": 2}
    monkeypatch.setattr(nbqueue.worker, "CONSUMER_RESTART_DELAY", 500)
    url = f"{deployment.url}?min_replicas={min_replicas}"
    broker = broker_from_url(url, namespace=namespace, heartbeat_timeout=5000)
    assert isinstance(broker, RedisBroker) and broker.min_replicas == min_replicas
    [results] = [m for m in broker.middleware if isinstance(m, Results)]
    stream: Stream

    @nbqueue.actor(queue_name=namespace, broker=broker, store_results=True)
    def job(i: int) -> int:
        stream.ran(i)
        return i * 2

    stream = Stream(job)
    worker = worker_factory(broker, worker_threads=2)
    try:
        stream.thread.start()
        stream.wait(lambda: len(stream.runs) >= BEFORE, 30, f"{BEFORE} runs before the kill")
        watch = SwitchWatch(deployment.sentinels)
        killed_at = time.monotonic()
        deployment.master.kill()
        new_port, switched_at = watch.wait(30)

        def resumed() -> bool:
            return any(
                stream.send_started[i] > killed_at and i in stream.runs for i in stream.acked
            )

        # The only deadline: a generous one for the resume, counted from the switch.
        stream.wait(resumed, 10, "a message sent after the kill to run on the new master")
        resumed_at = time.monotonic()
        stream.wait(
            lambda: sum(1 for at in stream.acked.values() if at > resumed_at) >= AFTER,
            30,
            f"{AFTER} sends after the resume",
        )
    finally:
        stream.stop.set()
        stream.thread.join(30)
    acked = set(stream.acked)
    last = max(acked)
    # FIFO: once the last acknowledged send ran and nothing runs, every earlier one that the
    # new master has ran too; what is missing then is lost.
    stream.wait(lambda: acked <= set(stream.runs) or last in stream.runs, 30, "the last send")
    worker.join()
    lost = sorted(acked - set(stream.runs))
    duplicated = sum(n - 1 for n in stream.runs.values() if n > 1)
    after_resume = [i for i in acked if stream.send_started[i] > resumed_at]
    first_ack = min(at for at in stream.acked.values() if at > killed_at)
    first_run = min(stream.run_at[i] for i in stream.runs if stream.send_started[i] > killed_at)
    record.n = len(stream.send_started)
    record.figures = {
        "failover_s (kill to +switch-master)": round(switched_at - killed_at, 3),
        "send_pause_s (kill to first acknowledged send)": round(first_ack - killed_at, 3),
        "processing_pause_s (kill to first run of a message sent after it)": round(
            first_run - killed_at, 3
        ),
        "acknowledged": len(acked),
        "raised": dict(stream.raised),
        "lost_acknowledged": len(lost),
        "duplicated_runs": duplicated,
        "new_master_port": new_port,
    }
    print(f"\nSentinel failover (min_replicas={min_replicas}): {record.figures}")
    assert new_port in (6401, 6402)
    # The stream resumed on the new master, and what was sent there ran exactly once.
    assert after_resume and all(stream.runs[i] == 1 for i in after_resume)
    # Results went through the sentinels too.
    assert stream.last_message is not None
    expected = stream.last_message.args[0] * 2
    assert stream.last_message.get_result(backend=results.backend, block=True) == expected
    if min_replicas:
        assert lost == [], f"acknowledged sends lost despite min_replicas=1: {lost}"
    broker.close()
