"""Interop with real Dramatiq on the same RabbitMQ: each side consumes what the other sends."""

from __future__ import annotations

import threading
import time

import dramatiq
import pika
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker as DramatiqRabbitmqBroker
from dramatiq.results import Results as DramatiqResults
from dramatiq.results.backends import RedisBackend as DramatiqRedisBackend

import nbqueue
from nbqueue.brokers.rabbitmq import RabbitmqBroker
from nbqueue.results import Results
from nbqueue.results.backends import RedisBackend
from tests.brokers import _rabbitmq

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def pair(rabbitmq_url, namespace):
    """An nbqueue broker and a Dramatiq broker on the same server and queue settings."""
    ours = RabbitmqBroker(url=rabbitmq_url, max_priority=10)
    ours.emit_after("process_boot")
    nbqueue.set_broker(ours)
    theirs = DramatiqRabbitmqBroker(url=rabbitmq_url, max_priority=10, confirm_delivery=True)
    workers = []

    def dramatiq_worker(**options):
        worker = dramatiq.Worker(theirs, worker_timeout=100, **options)
        worker.start()
        workers.append(worker)
        return worker

    yield ours, theirs, dramatiq_worker
    for worker in workers:
        worker.stop()
    theirs.close()
    ours.close()
    _rabbitmq.delete_queues(pika.URLParameters(rabbitmq_url), [namespace])


def _wait_for(predicate, timeout=10.0):
    # Bounded polling of the effect of another library's worker (no join across libraries).
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_dramatiq_workers_run_what_nbqueue_sends(pair, namespace):
    ours, theirs, dramatiq_worker = pair
    got = []
    lock = threading.Lock()

    @dramatiq.actor(queue_name=namespace, broker=theirs, actor_name="add")
    def their_add(x, y):
        with lock:
            got.append(x + y)

    @nbqueue.actor(queue_name=namespace, broker=ours, actor_name="add")
    def our_add(x, y):
        raise AssertionError("runs on the Dramatiq worker")

    our_add.send(1, 2)
    our_add.send_with_options(args=(3, 4), delay=200)
    our_add.send_many([(10, 10), (20, 20)])
    dramatiq_worker()
    _wait_for(lambda: len(got) == 4)
    assert sorted(got) == [3, 7, 20, 40]


def test_nbqueue_workers_run_what_dramatiq_sends(pair, namespace, worker_factory):
    ours, theirs, _ = pair
    got = []
    lock = threading.Lock()

    @dramatiq.actor(queue_name=namespace, broker=theirs, actor_name="mul")
    def their_mul(x, y):
        raise AssertionError("runs on the nbqueue worker")

    @nbqueue.actor(queue_name=namespace, broker=ours, actor_name="mul")
    def our_mul(x, y):
        with lock:
            got.append(x * y)

    their_mul.send(2, 3)
    their_mul.send_with_options(args=(4, 5), delay=200)
    their_mul.send_with_options(args=(6, 7), broker_priority=5)
    worker = worker_factory(ours)
    ours.join(namespace, timeout=10000)
    worker.join()
    assert sorted(got) == [6, 20, 42]


def test_dramatiq_broker_priority_and_nbqueue_priority_order_the_same_queue(
    pair, namespace, worker_factory, monkeypatch
):
    ours, theirs, _ = pair
    monkeypatch.setattr(nbqueue.worker, "QUEUE_PREFETCH", 1)
    order = []

    @dramatiq.actor(queue_name=namespace, broker=theirs, actor_name="rec")
    def their_rec(p):
        pass

    @nbqueue.actor(queue_name=namespace, broker=ours, actor_name="rec")
    def our_rec(p):
        order.append(p)

    their_rec.send_with_options(args=(1,), broker_priority=1)
    our_rec.send_with_options(args=(8,), priority=8)
    their_rec.send_with_options(args=(5,), broker_priority=5)
    our_rec.send(0)
    worker = worker_factory(ours, worker_threads=1)
    ours.join(namespace, timeout=10000)
    worker.join()
    assert order == [8, 5, 1, 0]


def test_a_message_dramatiq_dead_lettered_is_readable_here(pair, namespace):
    ours, theirs, dramatiq_worker = pair

    @dramatiq.actor(queue_name=namespace, broker=theirs, actor_name="boom", max_retries=0)
    def boom():
        raise RuntimeError("no")

    @nbqueue.actor(queue_name=namespace, broker=ours, actor_name="boom")
    def our_boom():
        pass

    sent = our_boom.send()
    dramatiq_worker()
    _wait_for(lambda: ours.queue_stats()[namespace].dead == 1)
    [dead] = ours.get_dead_letters(namespace)
    assert dead.reason == "rejected"  # from RabbitMQ's x-death header
    assert dead.message is not None and dead.message.message_id == sent.message_id


def test_results_cross_over_through_the_redis_backend(pair, namespace, redis_url, worker_factory):
    ours, theirs, dramatiq_worker = pair
    results_ns = f"{namespace}-results"
    theirs.add_middleware(
        DramatiqResults(backend=DramatiqRedisBackend(url=redis_url, namespace=results_ns))
    )
    our_backend = RedisBackend(url=redis_url, namespace=results_ns)
    ours.add_middleware(Results(backend=our_backend))

    @dramatiq.actor(queue_name=namespace, broker=theirs, actor_name="square", store_results=True)
    def their_square(x):
        return x * x

    @nbqueue.actor(queue_name=namespace, broker=ours, actor_name="square", store_results=True)
    def our_square(x):
        return x * x

    # nbqueue sends, Dramatiq runs it and stores the result, nbqueue reads it.
    message = our_square.send(7)
    worker = dramatiq_worker()
    assert our_backend.get_result(message, block=True, timeout=10000) == 49
    worker.stop()
    # Dramatiq sends, nbqueue runs it and stores the result, Dramatiq reads it.
    their_message = their_square.send(9)
    worker_factory(ours)
    backend = DramatiqRedisBackend(url=redis_url, namespace=results_ns)
    assert backend.get_result(their_message, block=True, timeout=10000) == 81
