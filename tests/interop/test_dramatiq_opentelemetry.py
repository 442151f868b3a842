"""Traced messages and real Dramatiq 2.x workers on the same Redis and RabbitMQ: Dramatiq runs
(and retries) what a traced nbqueue broker sends, and a traced nbqueue worker runs what Dramatiq
sends, starting a new trace."""

from __future__ import annotations

import threading

import pytest

import nbqueue
from tests.brokers.conftest import support
from tests.conftest import RABBITMQ_URL, REDIS_URL, require_server

dramatiq = pytest.importorskip("dramatiq")
pytest.importorskip("opentelemetry.sdk")
from dramatiq.broker import Broker as DramatiqBroker  # noqa: E402
from dramatiq.brokers.rabbitmq import RabbitmqBroker as DramatiqRabbitmqBroker  # noqa: E402
from dramatiq.brokers.redis import RedisBroker as DramatiqRedisBroker  # noqa: E402
from dramatiq.middleware import CurrentMessage  # noqa: E402

from tests.opentelemetry.conftest import Spans, span_id  # noqa: E402

SERVERS = [
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
]


@pytest.fixture
def spans():
    recorder = Spans()
    yield recorder
    recorder.provider.shutdown()


@pytest.fixture(params=SERVERS)
def pair(request, namespace, spans):
    """A traced nbqueue broker and a Dramatiq broker (with CurrentMessage) on one server."""
    kind = request.param
    theirs: DramatiqBroker
    if kind == "redis":
        url = require_server("Redis", REDIS_URL)
        theirs = DramatiqRedisBroker(url=url, namespace=namespace)
    else:
        url = require_server("RabbitMQ", RABBITMQ_URL)
        theirs = DramatiqRabbitmqBroker(url=url, max_priority=10, confirm_delivery=True)
    theirs.add_middleware(CurrentMessage())
    module = support(kind)
    ours = module.make_broker(url, namespace)
    ours.add_middleware(spans.middleware())
    ours.emit_after("process_boot")
    nbqueue.set_broker(ours)
    workers = []

    def dramatiq_worker():
        worker = dramatiq.Worker(theirs, worker_timeout=100, worker_threads=2)
        worker.start()
        workers.append(worker)
        return worker

    try:
        yield ours, theirs, dramatiq_worker
    finally:
        for worker in workers:
            worker.stop()
        theirs.close()
        module.cleanup(ours, namespace)
        ours.close()


def test_dramatiq_runs_and_retries_a_traced_message(pair, namespace, spans):
    ours, theirs, dramatiq_worker = pair
    seen = []
    lock = threading.Lock()
    retried = threading.Event()

    @dramatiq.actor(
        queue_name=namespace, broker=theirs, actor_name="greet", min_backoff=1, max_backoff=5
    )
    def their_greet(name):
        message = CurrentMessage.get_current_message()
        assert message is not None
        with lock:
            seen.append((name, message.options.get("retries", 0), message.options.get("otel")))
            first = len(seen) == 1
        if not first:
            retried.set()
        if first:
            raise RuntimeError("Dramatiq retries it")

    @nbqueue.actor(queue_name=namespace, broker=ours, actor_name="greet")
    def greet(name):
        raise AssertionError("runs on Dramatiq")

    greet.send("ada")
    worker = dramatiq_worker()
    # an event, not theirs.join(): the retry may still sit on the server when Dramatiq's join
    # sees its queues empty
    assert retried.wait(20), seen
    worker.join()

    send = spans.one(f"send {namespace}")
    assert [(name, retries) for name, retries, _ in seen] == [("ada", 0), ("ada", 1)]
    # Dramatiq kept the option through its own retry
    carriers = [carrier for _, _, carrier in seen]
    assert carriers[0] == carriers[1]
    assert isinstance(carriers[0], dict)
    assert carriers[0]["traceparent"].split("-")[2] == f"{span_id(send):016x}"


def test_a_traced_nbqueue_worker_runs_what_dramatiq_sent_in_a_new_trace(
    pair, namespace, spans, worker_factory
):
    ours, theirs, _ = pair
    got = []
    ran = threading.Event()

    @dramatiq.actor(queue_name=namespace, broker=theirs, actor_name="add")
    def their_add(x, y):
        raise AssertionError("runs on nbqueue")

    @nbqueue.actor(queue_name=namespace, broker=ours, actor_name="add")
    def add(x, y):
        got.append(x + y)
        ran.set()

    their_add.send(1, 2)
    worker = worker_factory(ours)
    # an event, not ours.join(): Dramatiq publishes to RabbitMQ unconfirmed, so the queue may
    # still look empty when the join looks
    assert ran.wait(20)
    worker.join()

    assert got == [3]
    process = spans.one(f"process {namespace}")
    assert process.parent is None
    assert dict(process.attributes or {})["nbqueue.message.outcome"] == "succeeded"
