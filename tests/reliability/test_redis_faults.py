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
import signal
import threading
import time

import pytest

import nbqueue
from nbqueue import BrokerError, ConnectionClosed, EncodeError, Message
from nbqueue.brokers.redis import RedisBroker
from nbqueue.results import ResultFailure, Results
from nbqueue.results.backends import RedisBackend
from tests.brokers._redis import (
    RecoveryWatch,
    cleanup,
    inject_raw,
    make_broker,
    private_redis,
    wait_until,
)
from tests.reliability import harness

pytestmark = pytest.mark.redis


@pytest.fixture
def oracle_broker(redis_url, namespace):
    broker = make_broker(redis_url, namespace, heartbeat_timeout=1000)
    broker.declare_queue(namespace)
    yield broker
    broker.close()
    cleanup(broker, namespace)


def test_a3_a_killed_worker_with_an_idle_tail_is_recovered_without_traffic(
    oracle_broker, namespace, redis_url, oracle, record
):
    broker = oracle_broker
    record.plan_id, record.broker, record.n = "A3", "redis", 30
    record.settings = {"heartbeat_ms": 1000, "reaper_ms": 1000, "threads": 2, "prefetch": 20}
    done, all_done = [], threading.Event()

    @nbqueue.actor(queue_name=namespace, actor_name="job", broker=broker)
    def job(i, work_ms=None):
        done.append(i)
        if len(done) == 30:
            all_done.set()

    job.send_many(range(20))
    job.send_many(range(20, 30), delay=1500)
    victim = harness.cli_worker(
        broker_url=redis_url,
        queue=namespace,
        oracle_url=oracle.url,
        threads=2,
        work_ms=60000,
        prefetch=20,
        heartbeat_ms=1000,
    )
    survivor = nbqueue.Worker(broker, worker_threads=2, worker_timeout=100)
    watch = RecoveryWatch(broker)
    try:
        wait_until(
            lambda: (
                broker.queue_stats()[namespace].in_flight == 20
                and broker.client.llen(f"{namespace}.DQ") == 0
            ),
            what="the victim to hold every message",
        )
        survivor.start()
        harness.kill_group(victim)
        killed_at = time.monotonic()
        victim.wait(10)
        assert all_done.wait(30)  # a hang guard: they are back after about 2 s
        latency = time.monotonic() - killed_at
    finally:
        harness.kill_group(victim)
        survivor.stop(timeout=5000)
    log = harness.ProducerLog()
    log.ok(range(30))
    now = time.time()
    record.accounting = harness.check(
        log,
        [harness.Execution(i, 0, now, now, "ok") for i in done],
        faults=[(now - latency, set())],
    )
    record.accounting.latency = {"p50": latency, "p99": latency, "max": latency, "n": 1}
    # The bound (heartbeat + reaper) is checked by the Redis server's clock: the recovery came
    # on the survivor's first maintenance pass after the victim's heartbeat expired. The
    # kill-to-run latency above, by the test's clock, is reported: load stretches it.
    on_time = [
        index == watch.first_pass_after(last + 1000) for index, _, last, _ in watch.recoveries
    ]
    record.figures = {
        "note": "20 ready + 10 delayed held by the victim; no other traffic",
        "recovered_ms_after_last_heartbeat_by_server_clock": [
            watch.passes[index][0] - last for index, _, last, _ in watch.recoveries
        ],
        "plan_bar_held: all back <= 2.5 s": latency <= 2.5,
    }
    record.bar("all 30 ran exactly once", sorted(done) == list(range(30)))
    record.bar(
        "recovered on the first maintenance pass after the heartbeat expired (server clock)",
        bool(on_time) and all(on_time),
    )
    record.check_bars()


def test_a8_an_actor_that_always_raises_is_dead_lettered_after_its_retries(
    oracle_broker, namespace, worker_factory, record
):
    broker = oracle_broker
    record.plan_id, record.broker, record.n = "A8", "redis", 1
    record.settings = {"max_retries": 3, "backoff_ms": "10-100"}
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
    record.figures = {"attempts": len(attempts), "to_dlq_s": round(time.monotonic() - sent_at, 3)}
    record.accounting = harness.check(harness.ProducerLog(), [], dead=[(None, dead.reason)])
    assert len(attempts) == 4
    assert dead.reason == "retries_exhausted" and "RuntimeError: always" in (dead.error or "")


def test_a9_acks_survive_dropped_connections_without_duplicates(
    namespace, worker_factory, caplog, record
):
    record.plan_id, record.broker, record.n = "A9", "redis", 4
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
        log = harness.ProducerLog()
        log.ok(range(4))
        record.accounting = harness.check(log, [harness.Execution(i, 0, 0, 0, "ok") for i in runs])
        record.figures = {"connections_killed": killed}
        assert sorted(runs) == [0, 1, 2, 3]
        assert "gone back to the queue" not in caplog.text
        assert broker.queue_stats()[namespace].in_flight == 0
        broker.close()


def stored_ids(broker, queue):
    """Logical ids (args[0]) of every message stored in ``queue``, with repeats."""
    out = []
    for raw in broker.client.hvals(broker.keys.messages(queue)):
        out.append(Message.decode(raw).args[0])
    return out


def send_through_outage(broker, server, queue, *, kill_after, down_for, total):
    """Send ``total`` messages one by one while the server is killed and restarted once."""
    log = harness.ProducerLog()
    restarted = threading.Event()

    def restart():
        time.sleep(kill_after)
        server.kill()
        time.sleep(down_for)
        server.start()
        restarted.set()

    killer = threading.Thread(target=restart)
    killer.start()
    first_failure = recovered_after = None
    i = 0
    while i < total or not restarted.is_set():
        message = Message(queue_name=queue, actor_name="a", args=(i,), kwargs={}, options={})
        try:
            broker.enqueue(message)
            log.ok([i])
            if first_failure is not None and recovered_after is None:
                recovered_after = time.monotonic() - first_failure
        except ConnectionClosed as e:  # the write may have happened
            log.unknown(i, e)
            first_failure = first_failure or time.monotonic()
            time.sleep(0.01)
        except BrokerError as e:
            log.fail(i, e)
            first_failure = first_failure or time.monotonic()
            time.sleep(0.01)
        i += 1
    killer.join()
    return log, recovered_after


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_b1_killing_redis_mid_enqueue_loses_no_acknowledged_send(namespace, fsync, record):
    kill_points = harness.size([0.5], [0.5, 1.0, 2.0])
    total = harness.size(5000, 20000)
    record.plan_id, record.broker = "B1", f"redis (AOF {fsync})"
    record.settings = {"appendfsync": fsync, "kill_after_s": kill_points, "down_s": 0.5}
    lost = duplicated = unknown = acknowledged = recovered = 0
    raised, first_success = {}, []
    for kill_after in kill_points:
        with private_redis("--appendonly", "yes", "--appendfsync", fsync) as server:
            broker = RedisBroker(url=server.url, namespace=namespace)
            broker.declare_queue(namespace)
            log, recovered_after = send_through_outage(
                broker, server, namespace, kill_after=kill_after, down_for=0.5, total=total
            )
            stored = stored_ids(broker, namespace)
            broker.close()
        executions = [harness.Execution(i, 0, 0.0, 0.0, "ok") for i in stored]
        acct = harness.check(log, executions)
        lost += acct.lost
        duplicated += acct.duplicated
        recovered += acct.recovered
        acknowledged += acct.acknowledged
        unknown += sum(1 for o in log.outcomes.values() if o == "unknown")
        for name, count in log.raised.items():
            raised[name] = raised.get(name, 0) + count
        first_success.append(recovered_after)
        record.n += acct.attempted
    acct.lost, acct.duplicated, acct.recovered, acct.acknowledged = (
        lost,
        duplicated,
        recovered,
        acknowledged,
    )
    record.accounting = acct
    record.figures = {
        "raised": raised,
        "unknown": unknown,
        "first_success_after_failure_s": first_success,
        "note": "executed = stored in the restarted server",
    }
    record.bar("lost == 0", lost == 0)
    record.bar(
        "every failure raised a typed error",
        bool(raised) and set(raised) <= {"ConnectionClosed", "ConnectionFailed"},
    )
    record.bar("duplicated <= unknown outcomes", duplicated <= unknown)
    record.check_bars()


def test_b3_redis_without_persistence_is_warned_about_and_loses_messages(namespace, caplog, record):
    record.plan_id, record.broker, record.n = "B3", "redis (no AOF)", 100
    record.settings = {"appendonly": "no", "save": ""}
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
        record.figures = {
            "warned": "has no persistence" in caplog.text,
            "lost_expected": 100 - left,
        }
        assert left == 0
        broker.close()


def test_b6_a_hung_redis_fails_every_call_in_time_and_workers_resume(
    namespace, worker_factory, monkeypatch, record
):
    record.plan_id, record.broker, record.n = "B6", "redis", 3
    record.settings = {"socket_timeout_s": 3, "pause": "SIGSTOP until every call returned"}
    monkeypatch.setattr(nbqueue.worker, "CONSUMER_RESTART_DELAY", 500)
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
        server.pause()
        timings, errors = {}, {}

        def timed(name, call):
            started = time.monotonic()
            try:
                call()
            except BrokerError as e:
                timings[name] = (time.monotonic() - started, type(e).__name__)
                errors[name] = str(e)

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
        record.figures = {
            "time_to_error_s": {k: [round(t, 2), kind] for k, (t, kind) in timings.items()},
            "resume_after_sigcont_s": round(resume_after, 2),
        }
        log = harness.ProducerLog()
        log.ok([0, 2])
        log.outcomes[1] = "unknown"  # its send timed out while Redis hung
        record.accounting = harness.check(log, [harness.Execution(i, 0, 0, 0, "ok") for i in runs])
        # Every call failed at its deadline, which its error names (the time each took, and
        # the time the worker took to resume, are figures: a loaded machine stretches them).
        # A call with no deadline would still be waiting at the join(15) above.
        assert set(timings) == set(calls), timings
        assert all(kind == "ConnectionClosed" for _, kind in timings.values()), timings
        assert all("did not answer within 3.0 s" in text for text in errors.values()), errors
        # lost 0, duplicated 0; job 1 timed out, so it may or may not have been enqueued
        assert {0, 2} <= set(runs) and len(runs) == len(set(runs)), runs
        broker.close()
        backend.close()


def test_b6_messages_a_fetch_took_before_its_reply_was_lost_run_after_the_reconnect(
    namespace, worker_factory, monkeypatch, caplog
):
    # A fetch (or an inbox pop) runs on the server and its reply is lost: the connection timed
    # out while Redis hung and Redis ran the command once it resumed, say. Its messages are in
    # this worker's ack set, and the worker heartbeats on, so no recovery of dead workers would
    # ever take them. Here the lost reply is made deterministic: the broker's own fetch script
    # runs for this worker and its reply is dropped; then Redis hangs until the consumer gives
    # up its connection and restarts.
    monkeypatch.setattr(nbqueue.worker, "CONSUMER_RESTART_DELAY", 100)
    with private_redis() as server:
        broker = RedisBroker(
            url=server.url, namespace=namespace, heartbeat_timeout=60000, socket_timeout=1
        )
        runs = []

        @nbqueue.actor(queue_name=namespace, broker=broker)
        def job(i):
            runs.append(i)

        for i in range(5):
            job.send(i)
        keys = broker.keys.fetch(namespace, broker.broker_id)
        registration = broker.keys.idle_registration(broker.broker_id, namespace)
        args = [3, broker.broker_id, namespace, 60000, 0, 0, registration, 0, 0]
        assert len(broker.scripts["fetch"](keys=keys, args=args)[1]) > 0  # the lost reply
        worker = worker_factory(broker, worker_threads=2)
        wait_until(lambda: sorted(runs) == [3, 4], what="the two messages left in the queue")
        # ... and acknowledged: the three left are held by nobody
        wait_until(lambda: broker.queue_stats()[namespace].in_flight == 3, what="the acks")
        with caplog.at_level(logging.CRITICAL, logger="nbqueue.worker"):
            server.pause()
            wait_until(
                lambda: any(
                    r.getMessage().startswith(f"Consumer of {namespace!r} lost its broker")
                    for r in caplog.records
                ),
                what="the queue's consumer to give up its connection",
            )
            server.signal(signal.SIGCONT)
        broker.join(namespace, timeout=20000)  # well before any heartbeat timeout
        worker.join()
        assert sorted(runs) == [0, 1, 2, 3, 4], runs
        assert broker.queue_stats()[namespace].in_flight == 0
        broker.close()


def test_c1_malformed_messages_among_valid_ones(
    oracle_broker, namespace, worker_factory, caplog, record
):
    broker = oracle_broker
    record.plan_id, record.broker, record.n = "C1", "redis", 5510
    record.settings = {"valid": 5000, "malformed": 500, "ids_without_body": 10, "threads": 4}
    done = []

    @nbqueue.actor(queue_name=namespace, actor_name="ok", broker=broker)
    def ok(i):
        done.append(i)

    bad, big = harness.malformed_bodies(ok.message(0))
    ok.send_many(range(2500))
    expected = {}
    for n in range(499):
        reason, body = bad[n % len(bad)]
        expected[reason] = expected.get(reason, 0) + 1
        inject_raw(broker, namespace, body)
    inject_raw(broker, namespace, big)  # one 10 MB body
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
    log = harness.ProducerLog()
    log.ok(range(5000))
    record.accounting = harness.check(
        log,
        [harness.Execution(i, 0, 0, 0, "ok") for i in done],
        dead=[(None, reason) for reason, n in counts.items() for _ in range(n)],
    )
    record.figures = {
        "elapsed_s": round(elapsed, 2),
        "expected_dlq": expected,
        "log_lines": len(caplog.records),
        "longest_log_line": max(len(r.getMessage()) for r in caplog.records),
    }
    assert sorted(done) == list(range(5000))
    assert counts == expected
    assert worker.consumers[namespace] is consumer and consumer.is_alive()
    assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]
    assert max(len(r.getMessage()) for r in caplog.records) <= 2500


def test_c4_unencodable_arguments_and_results(
    oracle_broker, namespace, redis_url, worker_factory, record
):
    broker = oracle_broker
    record.plan_id, record.broker = "C4", "redis"
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
    # A result that was never stored would end this wait with ResultTimeout, not ResultFailure:
    # raising ResultFailure at all shows the failure was stored (how soon is a figure).
    with pytest.raises(ResultFailure, match="cannot be stored"):
        echo.send("object").get_result(backend=backend, block=True, timeout=30000)
    record.figures = {"get_result_failure_s": round(time.monotonic() - started, 3)}
    backend.close()


def test_d1_a_pickle_body_never_executes(
    oracle_broker, namespace, worker_factory, tmp_path, record
):
    broker = oracle_broker
    record.plan_id, record.broker, record.n = "D1", "redis", 2
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
    record.accounting = harness.check(harness.ProducerLog(), [], dead=[(None, dead.reason)])
    record.figures = {"marker_created": marker.exists()}
    assert dead.reason == "undecodable" and not marker.exists()


def test_d3_a_canary_password_reaches_no_sink(namespace, worker_factory, caplog, record):
    from nbqueue.rate_limits.backends import RedisBackend as LimitsBackend

    record.plan_id, record.broker = "D3", "redis"

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
    sinks += [r.getMessage() for r in caplog.records if r.name != "nbqueue.worker.WorkerThread"]
    leaks = [sink for sink in sinks if canary in sink]
    record.figures = {"sinks": len(sinks), "leaks": len(leaks)}
    assert not leaks


def test_c3_a_send_above_the_size_limit_raises_before_any_io(oracle_broker, namespace, record):
    broker = oracle_broker
    broker.max_message_size = 1 << 20  # the plan's 1 MiB (nbqueue's default is 16 MiB)
    record.plan_id, record.broker, record.n = "C3", "redis (send)", 4
    record.settings = {"limit": "1 MiB (max_message_size)"}

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def echo(blob):
        pass

    echo.send("x" * (512 * 1024))  # 0.5x the limit goes through
    for factor in (1.01, 10):
        with pytest.raises(nbqueue.NbqueueError, match="too large|limit"):
            echo.send("x" * int(factor * 1024 * 1024))
    assert broker.queue_stats()[namespace].ready == 1


def test_c3_an_injected_oversized_body_is_dead_lettered_too_large(
    oracle_broker, namespace, worker_factory, record
):
    broker = oracle_broker
    body_mb = harness.size(20, 50)
    record.plan_id, record.broker, record.n = "C3", "redis (injected)", 1
    record.settings = {"body_mb": body_mb}
    runs = []

    @nbqueue.actor(queue_name=namespace, actor_name="echo", broker=broker)
    def echo(blob):
        runs.append(len(blob))

    body = Message.encode(echo.message("x" * (body_mb << 20)))
    inject_raw(broker, namespace, body)
    del body
    rss_before = harness.process_sample([os.getpid()])[os.getpid()][0]
    worker_factory(broker)
    broker.join(namespace, timeout=30000, fail_fast=False)
    rss_delta = harness.process_sample([os.getpid()])[os.getpid()][0] - rss_before
    dead = harness.dead_letters(broker, namespace)
    record.accounting = harness.check(harness.ProducerLog(), [], dead=dead)
    record.figures = {"ran": len(runs), "rss_delta_mb": round(rss_delta / 1024, 1)}
    assert not runs
    assert [reason for _, reason in dead] == ["too_large"]
    assert rss_delta < 3 * body_mb * 1024


def test_a6_a_late_failure_after_hand_back_does_not_dead_letter_the_requeued_message(
    oracle_broker, namespace, record
):
    broker = oracle_broker
    record.plan_id, record.broker, record.n = "A6", "redis (late nack)", 1
    started, release = threading.Event(), threading.Event()
    runs, thread = [], []

    @nbqueue.actor(queue_name=namespace, broker=broker, max_retries=0)
    def interrupted(i):
        runs.append(i)
        thread.append(threading.current_thread())
        if len(runs) == 1:
            started.set()
            release.wait(10)
            raise RuntimeError("the interpreter is shutting down")

    interrupted.send(0)
    worker = nbqueue.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    assert started.wait(10)
    worker.stop(timeout=200)  # the actor outlives the stop: its message is handed back
    release.set()
    wait_until(lambda: not thread[0].is_alive(), what="the late failure")
    try:  # the late nack is written in the background: give it up to 3 s to land
        wait_until(lambda: broker.queue_stats()[namespace].dead, timeout=3)
    except AssertionError:
        pass
    stats = broker.queue_stats()[namespace]
    record.figures = {"after_late_failure": str(stats)}
    assert stats.dead == 0, stats
    again = nbqueue.Worker(broker, worker_threads=1, worker_timeout=100)
    again.start()
    try:
        broker.join(namespace, timeout=10000)
    finally:
        again.stop()
    assert runs == [0, 0]
