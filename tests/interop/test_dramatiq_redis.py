"""nbqueue and real Dramatiq 2.x on the same Redis: messages, results, dead letters and crash
recovery, in both directions."""

from __future__ import annotations

import signal
import threading

import pytest

import nbqueue
from nbqueue.results import ResultFailure, Results
from nbqueue.results.backends import RedisBackend
from tests.brokers._redis import cleanup, make_broker, start_victim, wait_until

dramatiq = pytest.importorskip("dramatiq")
from dramatiq.brokers.redis import RedisBroker as DramatiqRedisBroker  # noqa: E402
from dramatiq.results import Results as DramatiqResults  # noqa: E402
from dramatiq.results.backends import RedisBackend as DramatiqRedisBackend  # noqa: E402

pytestmark = pytest.mark.redis


@pytest.fixture
def brokers(redis_url, namespace):
    """An nbqueue broker and a Dramatiq broker sharing one namespace, with result backends."""
    ours = make_broker(redis_url, namespace, heartbeat_timeout=1000, poll_interval=100)
    theirs = DramatiqRedisBroker(url=redis_url, namespace=namespace, heartbeat_timeout=1000)
    results = RedisBackend(url=redis_url, namespace=namespace)
    their_results = DramatiqRedisBackend(url=redis_url, namespace=namespace)
    ours.add_middleware(Results(backend=results))
    theirs.add_middleware(DramatiqResults(backend=their_results))
    nbqueue.set_broker(ours)
    yield ours, theirs, results, their_results
    ours.close()
    theirs.close()
    results.close()
    cleanup(ours, namespace)
    for key in _result_keys:
        results.client.delete(key)
    _result_keys.clear()


_result_keys: list[str] = []


@pytest.fixture
def dramatiq_worker_factory():
    workers = []

    def make(broker):
        worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
        worker.start()
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()


def test_a_dramatiq_worker_runs_what_nbqueue_sent(brokers, namespace, dramatiq_worker_factory):
    ours, theirs, results, their_results = brokers
    calls = []

    @nbqueue.actor(queue_name=namespace, actor_name="greet", broker=ours)
    def greet(name, *, punctuation):
        raise AssertionError("runs on Dramatiq")

    @dramatiq.actor(queue_name=namespace, actor_name="greet", broker=theirs)
    def their_greet(name, *, punctuation):
        calls.append(name + punctuation)

    greet.send("now", punctuation="!")
    greet.send_with_options(args=("later",), kwargs={"punctuation": "?"}, delay=50)
    greet.send_many([{"name": f"bulk{i}", "punctuation": "."} for i in range(3)])
    worker = dramatiq_worker_factory(theirs)
    theirs.join(namespace, timeout=10000)
    worker.join()
    assert sorted(calls) == ["bulk0.", "bulk1.", "bulk2.", "later?", "now!"]


def test_an_nbqueue_worker_runs_what_dramatiq_sent(brokers, namespace, worker_factory):
    ours, theirs, results, their_results = brokers
    calls = []

    @dramatiq.actor(queue_name=namespace, actor_name="add", broker=theirs)
    def their_add(x, y):
        raise AssertionError("runs on nbqueue")

    @nbqueue.actor(queue_name=namespace, actor_name="add", broker=ours)
    def add(x, y):
        calls.append(x + y)

    their_add.send(1, 2)
    their_add.send_with_options(args=(3, 4), delay=50)
    worker = worker_factory(ours)
    ours.join(namespace, timeout=10000)
    worker.join()
    assert sorted(calls) == [3, 7]


def test_results_written_by_either_are_read_by_the_other(
    brokers, namespace, worker_factory, dramatiq_worker_factory
):
    ours, theirs, results, their_results = brokers

    @nbqueue.actor(queue_name=namespace, actor_name="mul", broker=ours, store_results=True)
    def mul(x, y):
        if y < 0:
            raise ValueError("negative")
        return x * y

    @dramatiq.actor(
        queue_name=f"{namespace}-d",
        actor_name="dmul",
        broker=theirs,
        store_results=True,
        max_retries=0,
    )
    def dmul(x, y):
        if y < 0:
            raise ValueError("negative")
        return x * y

    # written by Dramatiq, read by nbqueue
    worker = dramatiq_worker_factory(theirs)
    sent, failing = dmul.send(6, 7), dmul.send(1, -1)
    theirs.join(f"{namespace}-d", timeout=10000)
    worker.join()
    as_ours = [nbqueue.Message(**m.asdict()) for m in (sent, failing)]
    _result_keys.extend(results.build_message_key(m) for m in as_ours)
    assert as_ours[0].get_result(backend=results, block=True, timeout=5000) == 42
    with pytest.raises(ResultFailure, match="ValueError: negative"):
        as_ours[1].get_result(backend=results, block=True, timeout=5000)

    # written by nbqueue, read by Dramatiq
    worker_factory(ours)
    mine, my_failure = mul.send(3, 5), mul.send_with_options(args=(1, -1), max_retries=0)
    _result_keys.extend(results.build_message_key(m) for m in (mine, my_failure))
    as_theirs = [dramatiq.Message(**m.asdict()) for m in (mine, my_failure)]
    assert their_results.get_result(as_theirs[0], block=True, timeout=5000) == 15
    with pytest.raises(dramatiq.results.ResultFailure, match="negative"):
        their_results.get_result(as_theirs[1], block=True, timeout=5000)


def test_dead_letters_written_by_dramatiq_are_listed_by_nbqueue(
    brokers, namespace, dramatiq_worker_factory
):
    ours, theirs, results, their_results = brokers

    @dramatiq.actor(queue_name=namespace, actor_name="boom", broker=theirs, max_retries=0)
    def boom():
        raise RuntimeError("boom")

    ours.declare_queue(namespace)
    sent = boom.send()
    worker = dramatiq_worker_factory(theirs)
    theirs.join(namespace, timeout=10000)
    worker.join()
    [dead] = ours.get_dead_letters(namespace)
    assert dead.reason == "failed" and dead.message.message_id == sent.message_id
    assert ours.queue_stats()[namespace].dead == 1


def test_prioritized_messages_are_invisible_to_dramatiq_workers(brokers, namespace):
    ours, theirs, results, their_results = brokers

    @nbqueue.actor(queue_name=namespace, actor_name="job", broker=ours)
    def job(kind):
        pass

    job.send("default")
    job.send_with_options(args=("urgent",), priority=5)
    theirs.declare_queue(namespace)
    consumer = theirs.consume(namespace, prefetch=10, timeout=100)
    taken = [next(consumer) for _ in range(2)]
    assert [m.args[0] for m in taken if m is not None] == ["default"]
    consumer.ack(taken[0])
    assert ours.queue_stats()[namespace].ready == 1


def test_nbqueue_recovers_the_messages_of_a_crashed_dramatiq_worker(
    brokers, namespace, worker_factory
):
    ours, theirs, results, their_results = brokers
    done, finished = [], threading.Event()

    @nbqueue.actor(queue_name=namespace, actor_name="job", broker=ours)
    def job(i):
        done.append(i)
        if len(done) == 5:
            finished.set()

    job.send_many(range(5))
    theirs.declare_queue(namespace)
    crashed = theirs.consume(namespace, prefetch=5, timeout=100)
    assert next(crashed) is not None  # Dramatiq fetched all five, then "crashed": no acks,
    assert ours.queue_stats()[namespace].in_flight == 5  # no more heartbeats
    worker_factory(ours)
    assert finished.wait(10), (done, ours.queue_stats()[namespace])
    ours.join(namespace, timeout=10000)
    assert sorted(done) == list(range(5))
    heartbeats = ours.client.zrange(ours.keys.heartbeats, 0, -1, withscores=True)
    assert theirs.broker_id.encode() not in dict(heartbeats), heartbeats


def test_dramatiq_recovers_the_messages_of_a_killed_nbqueue_worker(
    redis_url, brokers, namespace, dramatiq_worker_factory
):
    ours, _, results, _ = brokers
    theirs = DramatiqRedisBroker(
        url=redis_url, namespace=namespace, heartbeat_timeout=1000, maintenance_chance=1000000
    )
    done, finished = [], threading.Event()

    @nbqueue.actor(queue_name=namespace, actor_name="job", broker=ours)
    def job(i):
        pass

    @dramatiq.actor(queue_name=namespace, actor_name="job", broker=theirs)
    def their_job(i):
        done.append(i)
        if len(done) == 6:
            finished.set()

    job.send_many(range(6))
    victim = start_victim(redis_url, namespace, heartbeat_timeout=1000, prefetch=6)
    try:
        wait_until(
            lambda: ours.queue_stats()[namespace].in_flight == 6,
            what="the nbqueue worker to fetch all six messages",
        )
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        dramatiq_worker_factory(theirs)
        assert finished.wait(15)
        assert sorted(done) == list(range(6))
    finally:
        victim.kill()
        theirs.close()
