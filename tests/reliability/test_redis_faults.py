"""Fault injection against the Redis broker (shared/reference/reliability-plan.md, section 4).

Worker faults kill real worker processes; broker faults kill or pause private redis-server
processes (never the machine's shared one). Each test names its plan id (A1, B6...) and prints
its figures. An oracle list in Redis records every completed execution, so "lost" (sent,
never completed, not dead-lettered) and "duplicated" (completions - distinct ids) are counted.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import nbqueue
from nbqueue import BrokerError, ConnectionClosed, EncodeError, Message
from nbqueue.brokers.redis import RedisBroker
from nbqueue.results import ResultFailure, Results
from nbqueue.results.backends import RedisBackend
from tests.brokers._redis import cleanup, inject_raw, make_broker, private_redis, wait_until

pytestmark = pytest.mark.redis

WORKER = """
import signal, sys, time
import nbqueue
from nbqueue.brokers.redis import RedisBroker

url, namespace, heartbeat_timeout, threads, work_ms = sys.argv[1:6]
broker = RedisBroker(url=url, namespace=namespace, heartbeat_timeout=int(heartbeat_timeout))

@nbqueue.actor(queue_name=namespace, actor_name="job", broker=broker)
def job(i):
    broker.client.rpush(namespace + ":started", i)
    time.sleep(int(work_ms) / 1000)
    broker.client.rpush(namespace + ":oracle", i)

worker = nbqueue.Worker(broker, worker_threads=int(threads), worker_timeout=100)

def stop(signum, frame):
    worker.stop(timeout=30000)
    broker.close()
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
worker.start()
broker.client.rpush(namespace + ":booted", 1)
while True:
    time.sleep(1)
"""


def start_worker(url, namespace, *, heartbeat_timeout=1000, threads=4, work_ms=2, prefetch=0):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    if prefetch:
        env["NBQUEUE_QUEUE_PREFETCH"] = str(prefetch)
    args = [url, namespace, str(heartbeat_timeout), str(threads), str(work_ms)]
    return subprocess.Popen([sys.executable, "-c", WORKER, *args], env=env)


def executions(broker, namespace):
    return [int(i) for i in broker.client.lrange(f"{namespace}:oracle", 0, -1)]


def held_by_others(broker, namespace):
    """The redis message ids in the ack sets of every other worker, by worker id."""
    held = {}
    for worker in broker.client.zrange(broker.keys.heartbeats, 0, -1):
        worker = worker.decode()
        if worker != broker.broker_id:
            ids = broker.client.smembers(broker.keys.ack_set(worker, namespace))
            held[worker] = {i.decode() for i in ids}
    return held


@pytest.fixture
def oracle_broker(redis_url, namespace):
    broker = make_broker(redis_url, namespace, heartbeat_timeout=1000)
    broker.declare_queue(namespace)
    yield broker
    broker.close()
    cleanup(broker, namespace)


@pytest.mark.slow
def test_a1_killing_workers_mid_run_loses_nothing(oracle_broker, namespace, redis_url):
    broker = oracle_broker

    @nbqueue.actor(queue_name=namespace, actor_name="job", broker=broker)
    def job(i):
        time.sleep(0.002)
        broker.client.rpush(f"{namespace}:oracle", i)

    total = 8000
    sent = job.send_many(range(total))
    by_rid = {m.options["redis_message_id"]: m.args[0] for m in sent}
    survivor = nbqueue.Worker(broker, worker_threads=1, worker_timeout=100)
    survivor.start()
    latencies, orphans_per_kill = [], []
    booted = f"{namespace}:booted"
    try:
        for cycle in range(3):
            victim = start_worker(redis_url, namespace, threads=4, prefetch=8)
            wait_until(lambda n=cycle: broker.client.llen(booted) > n, what="the victim to boot")
            time.sleep(random.uniform(0.3, 0.8))  # let it work for a while before the kill
            victim.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            victim.wait(10)
            orphans = {by_rid[r] for ids in held_by_others(broker, namespace).values() for r in ids}
            orphans_per_kill.append(len(orphans))
            seen_before = len(executions(broker, namespace))
            wait_until(
                lambda o=orphans, n=seen_before: o <= set(executions(broker, namespace)[n:]),
                what="the orphans to run again",
            )
            latencies.append(time.monotonic() - killed_at)
        broker.join(namespace, timeout=60000)
        survivor.join()
    finally:
        survivor.stop(timeout=5000)
    done = executions(broker, namespace)
    lost = set(range(total)) - set(done)
    duplicated = len(done) - len(set(done))
    print(
        f"A1: {total} messages, 3 kills, orphans {orphans_per_kill}, lost {len(lost)}, "
        f"duplicated {duplicated}, redelivery latency max {max(latencies):.2f} s (heartbeat 1 s)"
    )
    assert not lost
    assert duplicated <= sum(orphans_per_kill)
    assert max(latencies) <= 1.0 + 1.0 + 0.5  # heartbeat + tick + the orphans' own work


def test_a3_a_killed_worker_with_an_idle_tail_is_recovered_without_traffic(
    oracle_broker, namespace, redis_url
):
    broker = oracle_broker
    done, all_done = [], threading.Event()

    @nbqueue.actor(queue_name=namespace, actor_name="job", broker=broker)
    def job(i):
        done.append(i)
        if len(done) == 30:
            all_done.set()

    job.send_many(range(20))
    job.send_many(range(20, 30), delay=1500)
    victim = start_worker(redis_url, namespace, threads=2, work_ms=60000, prefetch=20)
    survivor = nbqueue.Worker(broker, worker_threads=2, worker_timeout=100)
    try:
        wait_until(
            lambda: (
                broker.queue_stats()[namespace].in_flight == 20
                and broker.client.llen(f"{namespace}.DQ") == 0
            ),
            what="the victim to hold every message",
        )
        survivor.start()
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.wait(10)
        assert all_done.wait(10)
        latency = time.monotonic() - killed_at
        print(f"A3: 20 ready + 10 delayed held by the victim, all back in {latency:.2f} s")
        assert sorted(done) == list(range(30))
        assert latency <= 2.5  # heartbeat 1 s + tick; the delayed ones were due at 1.5 s
    finally:
        victim.kill()
        survivor.stop(timeout=5000)


@pytest.mark.slow
def test_a4_sigterm_requeues_prefetched_messages_at_once(oracle_broker, namespace, redis_url):
    broker = oracle_broker

    @nbqueue.actor(queue_name=namespace, actor_name="job", broker=broker)
    def job(i):
        broker.client.rpush(f"{namespace}:oracle", i)

    job.send_many(range(20))
    victim = start_worker(redis_url, namespace, threads=2, work_ms=1500, prefetch=8)
    try:
        wait_until(
            lambda: (
                broker.queue_stats()[namespace].in_flight == 8
                and broker.client.llen(f"{namespace}:started") == 2
            ),
            what="the victim to run two messages and prefetch six more",
        )
        victim.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_until(lambda: broker.queue_stats()[namespace].ready >= 18, what="the requeue")
        back_after = time.monotonic() - signalled
        assert victim.wait(20) == 0
        worker = nbqueue.Worker(broker, worker_threads=4, worker_timeout=100)
        worker.start()
        broker.join(namespace, timeout=20000)
        worker.stop()
    finally:
        victim.kill()
    done = executions(broker, namespace)
    print(f"A4: prefetched messages back {back_after:.3f} s after SIGTERM; {len(done)} runs")
    assert back_after <= 1.0
    assert sorted(done) == list(range(20)), done  # lost 0, duplicated 0


def test_a8_an_actor_that_always_raises_is_dead_lettered_after_its_retries(
    oracle_broker, namespace, worker_factory
):
    broker = oracle_broker
    attempts = []

    @nbqueue.actor(
        queue_name=namespace, broker=broker, max_retries=3, min_backoff=10, max_backoff=100
    )
    def always_fails():
        attempts.append(time.monotonic())
        raise RuntimeError("always")

    sent_at = time.monotonic()
    always_fails.send()
    worker_factory(broker)
    broker.join(namespace, timeout=10000)
    [dead] = broker.get_dead_letters(namespace)
    print(f"A8: {len(attempts)} attempts, dead-lettered after {time.monotonic() - sent_at:.2f} s")
    assert len(attempts) == 4
    assert dead.reason == "retries_exhausted" and "RuntimeError: always" in (dead.error or "")


def test_a9_acks_survive_dropped_connections_without_duplicates(namespace, worker_factory, caplog):
    with private_redis() as server:
        broker = RedisBroker(url=server.url, namespace=namespace)
        started, release = threading.Semaphore(0), threading.Event()
        runs = []

        @nbqueue.actor(queue_name=namespace, broker=broker)
        def hold(i):
            started.release()
            release.wait(10)
            runs.append(i)

        hold.send_many(range(4))
        worker = worker_factory(broker, worker_threads=4)
        for _ in range(4):
            assert started.acquire(timeout=10)
        killed = broker.client.client_kill_filter(_type="normal", skipme=False)
        release.set()
        broker.join(namespace, timeout=10000)
        worker.join()
        worker.stop()
        print(f"A9: {killed} connections killed mid-run; runs {sorted(runs)}")
        assert sorted(runs) == [0, 1, 2, 3]
        assert "gone back to the queue" not in caplog.text
        assert broker.queue_stats()[namespace].in_flight == 0
        broker.close()


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_b1_killing_redis_mid_enqueue_loses_no_acknowledged_send(namespace, fsync):
    with private_redis("--appendonly", "yes", "--appendfsync", fsync) as server:
        broker = RedisBroker(url=server.url, namespace=namespace)
        broker.declare_queue(namespace)
        acknowledged, failures = [], {}
        message = Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})

        restarted = threading.Event()

        def restart():
            time.sleep(0.3)
            server.kill()
            time.sleep(0.3)
            server.start()
            restarted.set()

        killer = threading.Thread(target=restart)
        killer.start()
        first_failure = recovered_after = None
        after_restart = 0
        while after_restart < 500:  # keep sending through the outage and a while after
            after_restart += restarted.is_set()
            try:
                acknowledged.append(broker.enqueue(message).options["redis_message_id"])
                if first_failure is not None and recovered_after is None:
                    recovered_after = time.monotonic() - first_failure
            except BrokerError as e:
                failures[type(e).__name__] = failures.get(type(e).__name__, 0) + 1
                first_failure = first_failure or time.monotonic()
                time.sleep(0.01)
        killer.join()
        stored = set(broker.client.hkeys(broker.keys.messages(namespace)))
        lost = [rid for rid in acknowledged if rid.encode() not in stored]
        print(
            f"B1 (appendfsync {fsync}): {len(acknowledged)} acknowledged, lost {len(lost)}, "
            f"failures {failures}, first success {recovered_after} s after the first failure"
        )
        assert not lost, (len(lost), failures)
        assert failures and set(failures) <= {"ConnectionClosed", "ConnectionFailed"}, failures
        broker.close()


def test_b3_redis_without_persistence_is_warned_about_and_loses_messages(namespace, caplog):
    with private_redis() as server:
        broker = RedisBroker(url=server.url, namespace=namespace)
        broker.declare_queue(namespace)
        for _ in range(100):
            broker.enqueue(
                Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
            )
        assert "has no persistence" in caplog.text
        server.kill()
        server.start()
        left = broker.queue_stats()[namespace].ready
        print(f"B3: warned at connect; {100 - left} of 100 messages lost in a restart")
        assert left == 0
        broker.close()


@pytest.mark.slow
def test_b6_a_hung_redis_fails_every_call_in_time_and_workers_resume(
    namespace, worker_factory, monkeypatch
):
    monkeypatch.setattr(nbqueue.worker, "RESTART_DELAY", 500)
    with private_redis() as server:
        broker = RedisBroker(url=server.url, namespace=namespace, heartbeat_timeout=60000)
        backend = RedisBackend(url=server.url)
        broker.add_middleware(Results(backend=backend))
        nbqueue.set_broker(broker)
        release, runs = threading.Event(), []

        @nbqueue.actor(queue_name=namespace, broker=broker, store_results=True)
        def job(i):
            if i == 0:
                release.wait(20)
            runs.append(i)
            return i

        first = job.send(0)
        worker = worker_factory(broker, worker_threads=2)
        wait_until(lambda: broker.queue_stats()[namespace].in_flight == 1, what="job 0 to run")
        server.signal(signal.SIGSTOP)
        timings = {}

        def timed(name, call):
            started = time.monotonic()
            try:
                call()
            except BrokerError as e:
                timings[name] = (time.monotonic() - started, type(e).__name__)

        calls = {
            "send": lambda: job.send(1),
            "get_result": lambda: first.get_result(backend=backend, block=True, timeout=20000),
            "queue_stats": broker.queue_stats,
            "join": lambda: broker.join(namespace, timeout=20000),
        }
        threads = [threading.Thread(target=timed, args=item) for item in calls.items()]
        for thread in threads:
            thread.start()
        release.set()  # job 0 finishes while Redis hangs: its ack must wait, not be lost
        for thread in threads:
            thread.join(15)
        server.signal(signal.SIGCONT)
        resumed = time.monotonic()
        fresh = job.send(2)
        assert fresh.get_result(backend=backend, block=True, timeout=10000) == 2
        resume_after = time.monotonic() - resumed
        broker.join(namespace, timeout=10000)
        worker.join()
        print(f"B6: {timings}; a fresh message ran {resume_after:.2f} s after SIGCONT")
        assert set(timings) == set(calls), timings
        assert all(s < 5 and kind == "ConnectionClosed" for s, kind in timings.values()), timings
        # lost 0, duplicated 0; job 1 timed out, so it may or may not have been enqueued
        assert {0, 2} <= set(runs) and len(runs) == len(set(runs)), runs
        assert resume_after <= 2.0, resume_after
        broker.close()
        backend.close()


@pytest.mark.slow
def test_c1_malformed_messages_among_valid_ones(oracle_broker, namespace, worker_factory, caplog):
    broker = oracle_broker
    done = []

    @nbqueue.actor(queue_name=namespace, actor_name="ok", broker=broker)
    def ok(i):
        done.append(i)

    valid = ok.message(0).asdict()
    undecodable = [b"\xc3\x28", b"{", b"null nope", b"[" * 100000, b"\x80\x04K\x01."]
    invalid = [
        b"[1, 2]",
        b"42",
        b'"text"',
        Message.encode(Message(**{**valid, "args": [1]})).replace(b"[1]", b"5"),
        Message.encode(Message(**valid)).replace(b'"kwargs":{}', b'"kwargs":[]'),
        Message.encode(Message(**valid)).replace(b'"options":{}', b'"options":"x"'),
        Message.encode(Message(**valid))[:-1] + b',"extra":1}',
    ]
    unknown = [
        Message.encode(Message(**{**valid, "actor_name": "nobody"})),
        Message.encode(Message(**{**valid, "actor_name": "nobody", "args": ["x" * 10_000_000]})),
    ]
    bad = [("undecodable", b) for b in undecodable] + [("invalid", b) for b in invalid]
    bad += [("unknown_actor", b) for b in unknown[:1]]
    ok.send_many(range(2500))
    expected = {}
    for n in range(499):
        reason, body = bad[n % len(bad)]
        expected[reason] = expected.get(reason, 0) + 1
        inject_raw(broker, namespace, body)
    inject_raw(broker, namespace, unknown[1])  # one 10 MB body
    expected["unknown_actor"] += 1
    for _ in range(10):  # ids with no body at all
        broker.client.rpush(broker.keys.queue(namespace), os.urandom(8).hex())
    ok.send_many(range(2500, 5000))
    started = time.monotonic()
    worker = worker_factory(broker, worker_threads=4)
    consumer = worker.consumers[namespace]
    broker.join(namespace, timeout=60000, fail_fast=False)
    worker.join()
    elapsed = time.monotonic() - started
    counts = {}
    for letter in broker.get_dead_letters(namespace):
        counts[letter.reason] = counts.get(letter.reason, 0) + 1
    print(f"C1: 5000 valid + 500 malformed + 10 empty ids in {elapsed:.2f} s; DLQ {counts}")
    assert sorted(done) == list(range(5000))
    assert counts == expected
    assert worker.consumers[namespace] is consumer and consumer.is_alive()
    assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]
    assert max(len(r.getMessage()) for r in caplog.records) <= 2500


def test_c4_unencodable_arguments_and_results(oracle_broker, namespace, redis_url, worker_factory):
    broker = oracle_broker
    backend = RedisBackend(url=redis_url, namespace=namespace, use_namespace_prefix_keys=True)
    broker.add_middleware(Results(backend=backend))

    @nbqueue.actor(queue_name=namespace, broker=broker, store_results=True)
    def echo(value=None):
        return object() if value == "object" else value

    for bad, where in [
        ({1, 2}, r"args\[0\]"),
        (float("nan"), r"args\[0\]: nan is not valid JSON"),
        (b"x", r"args\[0\]"),
    ]:
        with pytest.raises(EncodeError, match=where):
            echo.send(bad)
    assert broker.queue_stats()[namespace].ready == 0
    worker_factory(broker)
    started = time.monotonic()
    with pytest.raises(ResultFailure, match="cannot be stored"):
        echo.send("object").get_result(backend=backend, block=True, timeout=5000)
    assert time.monotonic() - started < 1.0
    backend.close()


def test_d1_a_pickle_body_never_executes(oracle_broker, namespace, worker_factory, tmp_path):
    broker = oracle_broker
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def ok():
        pass

    inject_raw(broker, namespace, pickle.dumps(Exploit()))
    ok.send()
    worker_factory(broker)
    broker.join(namespace, timeout=10000)
    [dead] = broker.get_dead_letters(namespace)
    assert dead.reason == "undecodable" and not marker.exists()


def test_d3_a_canary_password_reaches_no_sink(namespace, worker_factory, caplog):
    from nbqueue.rate_limits.backends import RedisBackend as LimitsBackend

    caplog.set_level(logging.DEBUG)
    canary = f"nbq-CANARY-{namespace}"
    sinks = []
    acl = ["--user", "alice", "on", f">{canary}", "~*", "&*", "+@all"]
    with private_redis("--requirepass", canary, *acl) as srv:
        for url in (
            f"redis://:{canary}@127.0.0.1:{srv.port}/0",
            f"redis://alice:{canary}@127.0.0.1:{srv.port}/0",
        ):
            broker = RedisBroker(url=url, namespace=namespace)
            backend = RedisBackend(url=url)
            broker.add_middleware(Results(backend=backend))

            @nbqueue.actor(queue_name=namespace, broker=broker, store_results=True, max_retries=0)
            def leak(url=url):
                raise ValueError(f"could not reach {url}")

            worker = worker_factory(broker)
            message = leak.send()
            with pytest.raises(ResultFailure) as failure:
                message.get_result(backend=backend, block=True, timeout=10000)
            broker.join(namespace, timeout=10000)
            worker.stop()
            [dead] = broker.get_dead_letters(namespace)
            broker.flush(namespace)
            sinks += [repr(broker), str(broker), repr(backend), repr(LimitsBackend(url=url))]
            sinks += [str(failure.value), failure.value.traceback or "", dead.error or ""]
            broker.close()
            backend.close()
        for url, error in (
            (f"redis://:{canary}x@127.0.0.1:{srv.port}/0", "refused the credentials"),
            (f"redis://:{canary}@127.0.0.1:1/0", "Could not connect"),
            (f"rediss://:{canary}@127.0.0.1:{srv.port}/0", None),
        ):
            broker = RedisBroker(url=url, namespace=namespace)
            with pytest.raises((BrokerError, ConnectionClosed), match=error) as info:
                broker.queue_stats()
            sinks += [str(info.value), repr(broker)]
            broker.close()
    # The worker logs what an actor raised verbatim: that text is the application's, not ours.
    sinks += [r.getMessage() for r in caplog.records if r.name != "nbqueue.worker.thread"]
    leaks = [sink for sink in sinks if canary in sink]
    assert not leaks
