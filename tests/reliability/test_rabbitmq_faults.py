"""Fault tests on RabbitMQ: killed workers, a killed and restarted server, resource alarms and
RabbitMQ's consumer_timeout. Slow; the server faults run on a private node of our own.

Accounting follows the Jepsen checker: acknowledged sends, lost (acknowledged, never run),
duplicated, and sends whose outcome was unknown.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pika
import pytest

import nbqueue
from nbqueue.brokers.rabbitmq import RabbitmqBroker
from nbqueue.errors import (
    BrokerConnectionError,
    ConnectionBlocked,
    PublishOutcomeUnknown,
)
from tests.brokers import _rabbitmq

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow, pytest.mark.timeout(300)]

WORKER = """
import os, sys, time
import nbqueue
from nbqueue.brokers.rabbitmq import RabbitmqBroker
url, queue, log = sys.argv[1:4]
broker = RabbitmqBroker(url=url)
broker.emit_after("process_boot")
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

@nbqueue.actor(queue_name=queue, broker=broker, max_retries=0)
def work(i):
    time.sleep(0.001)
    os.write(fd, f"{i}\\n".encode())

worker = nbqueue.Worker(broker, worker_threads=4, worker_timeout=100)
worker.start()
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def _start_worker(url: str, queue: str, log: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, url, queue, log],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def _executed(log: str) -> list[int]:
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [int(line) for line in f if line.strip().isdigit()]


def test_killing_workers_mid_run_loses_nothing(rabbitmq_url, namespace, tmp_path):
    total = 2000
    log = str(tmp_path / "executed.log")
    broker = RabbitmqBroker(url=rabbitmq_url)

    @nbqueue.actor(queue_name=namespace, broker=broker, max_retries=0)
    def work(i):
        pass

    try:
        work.send_many(range(total))
        kills = 0
        rng = random.Random(7)
        for _ in range(4):
            process = _start_worker(rabbitmq_url, namespace, log)
            time.sleep(rng.uniform(0.3, 1.0))  # let it run a while: the fault is the point
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
            kills += 1
        final = _start_worker(rabbitmq_url, namespace, log)
        deadline = time.monotonic() + 120
        while len(set(_executed(log))) < total and time.monotonic() < deadline:
            time.sleep(0.1)  # bounded polling of another process's effect
        os.killpg(final.pid, signal.SIGTERM)
        final.wait(20)
        executed = _executed(log)
        counts = collections.Counter(executed)
        lost = set(range(total)) - set(counts)
        duplicated = sum(n - 1 for n in counts.values())
        print(
            f"A2 kill -9 worker x{kills}: sent {total}, lost {len(lost)}, duplicated {duplicated}"
        )
        assert not lost
        assert broker.queue_stats()[namespace].dead == 0
    finally:
        broker.close()
        _rabbitmq.delete_queues(pika.URLParameters(rabbitmq_url), [namespace])


@pytest.fixture
def private_rabbit():
    made = []

    def start(config: str = "", advanced: str = "") -> _rabbitmq.PrivateRabbit:
        node = _rabbitmq.PrivateRabbit(config, advanced)
        made.append(node)
        node.start()
        return node

    yield start
    for node in made:
        node.stop()


def test_restarting_the_server_during_confirmed_sends_loses_no_confirmed_message(
    private_rabbit, namespace, worker_factory
):
    # A producer sends one confirmed message at a time while a worker consumes; the server is
    # killed (-9) and restarted. Every confirmed message must run; both sides reconnect.
    node = private_rabbit()
    broker = RabbitmqBroker(url=node.url)
    broker.emit_after("process_boot")
    executed: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def work(i):
        with lock:
            executed[i] += 1

    confirmed: list[int] = []
    unknown: list[int] = []
    raised: collections.Counter[str] = collections.Counter()
    slowest_failure = 0.0
    attempted = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal slowest_failure, attempted
        while not stop.is_set():
            i = attempted
            attempted += 1
            started = time.monotonic()
            try:
                work.send(i)
                confirmed.append(i)
            except PublishOutcomeUnknown:
                unknown.append(i)
                raised["PublishOutcomeUnknown"] += 1
            except BrokerConnectionError as e:
                raised[type(e).__name__] += 1
                slowest_failure = max(slowest_failure, time.monotonic() - started)
                stop.wait(0.05)

    producer = threading.Thread(target=produce)
    try:
        worker = worker_factory(broker, worker_threads=4)
        producer.start()
        time.sleep(1.0)  # let traffic flow: the fault lands mid-stream
        node.kill()
        down_since = time.monotonic()
        node.start()
        back_after = time.monotonic() - down_since
        deadline = time.monotonic() + 30
        before = len(confirmed)
        while len(confirmed) < before + 200 and time.monotonic() < deadline:
            time.sleep(0.05)  # bounded: wait for the producer to get going again
        stop.set()
        producer.join(30)
        broker.join(namespace, timeout=60000)
        worker.join(30000)
        lost = set(confirmed) - set(executed)
        duplicated = sum(n - 1 for n in executed.values())
        recovered = len(set(unknown) & set(executed))
        unexpected = set(executed) - set(range(attempted))
        print(
            f"B2 kill -9 + restart of RabbitMQ ({back_after:.1f} s down): attempted {attempted}, "
            f"confirmed {len(confirmed)}, raised {dict(raised)}, lost {len(lost)}, duplicated "
            f"{duplicated}, unknown {len(unknown)} (ran anyway: {recovered}), unexpected "
            f"{len(unexpected)}, slowest failed send {slowest_failure:.2f} s"
        )
        assert not lost
        assert not unexpected
        assert len(confirmed) > 200
        assert slowest_failure < 5.5
        worker.stop()
    finally:
        stop.set()
        broker.close()


def test_a_resource_alarm_blocks_sends_with_a_clear_error_within_5_seconds(
    private_rabbit, namespace
):
    node = private_rabbit()
    broker = RabbitmqBroker(url=node.url, max_priority=None)

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def work():
        pass

    try:
        work.send()
        node.ctl("set_vm_memory_high_watermark", "0.0000001")
        with pytest.raises((ConnectionBlocked, PublishOutcomeUnknown)) as info:
            for _ in range(10):
                started = time.monotonic()
                work.send()
        took = time.monotonic() - started
        print(f"B8 memory alarm: {type(info.value).__name__} after {took:.2f} s: {info.value}")
        assert took < 5.5
        assert "block" in str(info.value) or "confirm" in str(info.value)
        started = time.monotonic()
        with pytest.raises(ConnectionBlocked, match="Free memory or disk"):
            work.send()  # now the client knows: nothing is sent
        assert time.monotonic() - started < 5.5
        node.ctl("set_vm_memory_high_watermark", "0.4")
        deadline = time.monotonic() + 20
        while True:
            try:
                work.send()
                break
            except BrokerConnectionError:
                assert time.monotonic() < deadline
    finally:
        broker.close()


def test_long_jobs_and_delayed_messages_outlive_the_servers_consumer_timeout(
    private_rabbit, namespace, worker_factory, caplog
):
    # consumer_timeout 2 s, checked every 0.5 s: a delivery held 2 s closes its channel (and
    # without leases and re-published delays, both messages below would run twice).
    node = private_rabbit("consumer_timeout = 2000\n", "{channel_tick_interval, 500}")
    broker = RabbitmqBroker(url=node.url, consumer_timeout=2000)
    broker.emit_after("process_boot")
    runs = []

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def later(i):
        runs.append((i, time.monotonic()))

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def long_job():
        runs.append(("long", time.monotonic()))
        time.sleep(6)

    try:
        worker = worker_factory(broker)
        sent_at = time.monotonic()
        later.send_with_options(args=(1,), delay=7000)
        later.send_with_options(args=(2,), delay=500)
        long_job.send()
        broker.join(namespace, timeout=30000)
        worker.join()
        assert sorted(str(i) for i, _ in runs) == ["1", "2", "long"]
        ran_at = dict(runs)
        assert ran_at[1] - sent_at >= 6.9
        assert "lost its broker connection" not in caplog.text
        assert "timed out" not in caplog.text
        assert broker.queue_stats()[namespace].dead == 0
        worker.stop()
    finally:
        broker.close()
