"""Traces across brokers: a sender and a worker on separate broker instances with separate
tracer providers (as two processes are), on real Redis and RabbitMQ servers. The only thing
they share is the message on the server."""

from __future__ import annotations

import pytest

import nbqueue
from tests.brokers.conftest import support
from tests.conftest import RABBITMQ_URL, REDIS_URL, require_server
from tests.opentelemetry.conftest import parent_id, span_id, trace_id

SERVERS = [
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
]

_URLS = {"redis": ("Redis", REDIS_URL), "rabbitmq": ("RabbitMQ", RABBITMQ_URL)}


@pytest.fixture(params=SERVERS)
def pair(request, namespace, spans, sender_spans):
    """(sender broker, worker broker), both traced, on the same server and namespace."""
    name, url = _URLS[request.param]
    url = require_server(name, url)
    module = support(request.param)
    sender = module.make_broker(url, namespace)
    sender.add_middleware(sender_spans.middleware())
    receiver = module.make_broker(url, namespace)
    receiver.add_middleware(spans.middleware())
    receiver.emit_after("process_boot")
    try:
        yield sender, receiver
    finally:
        module.cleanup(receiver, namespace)
        sender.close()
        receiver.close()


def declare(pair, namespace, fn, **options):
    """Declare the same actor on both brokers (the notebook's and the worker's module)."""
    sender, receiver = pair
    on_sender = nbqueue.actor(fn, broker=sender, queue_name=namespace, **options)
    nbqueue.actor(fn, broker=receiver, queue_name=namespace, **options)
    return on_sender


def test_the_workers_span_is_a_child_of_the_notebooks_span(
    pair, namespace, spans, sender_spans, worker_factory
):
    sender, receiver = pair
    ran = []

    def work(x):
        with spans.tracer.start_as_current_span("inside the actor"):
            ran.append(x)

    actor = declare(pair, namespace, work)
    with sender_spans.tracer.start_as_current_span("notebook cell"):
        actor.send(1)
        actor.send_with_options(args=(2,), delay=20)
    worker = worker_factory(receiver)
    receiver.join(namespace, timeout=20000)
    worker.join()

    assert sorted(ran) == [1, 2]
    cell = sender_spans.one("notebook cell")
    sends = sender_spans.named(f"send {namespace}")
    processes = spans.named(f"process {namespace}")
    assert [parent_id(s) for s in sends] == [span_id(cell)] * 2
    by_message = {dict(p.attributes or {})["messaging.message.id"]: p for p in processes}
    for send in sends:
        process = by_message[dict(send.attributes or {})["messaging.message.id"]]
        assert parent_id(process) == span_id(send)
        assert trace_id(process) == trace_id(cell)
        assert process.parent is not None and process.parent.is_remote
        assert dict(process.attributes or {})["nbqueue.message.outcome"] == "succeeded"
    assert {parent_id(s) for s in spans.named("inside the actor")} == {
        span_id(p) for p in processes
    }
    # the worker's provider saw no send: moving the delayed message kept its context
    assert not spans.named(f"send {namespace}")


def test_a_retry_through_the_server_keeps_the_trace(
    pair, namespace, spans, sender_spans, worker_factory
):
    sender, receiver = pair
    attempts = []

    def flaky():
        attempts.append(len(attempts))
        if len(attempts) == 1:
            raise RuntimeError("first attempt")

    actor = declare(pair, namespace, flaky, max_retries=2, min_backoff=1, max_backoff=5)
    actor.send()
    worker = worker_factory(receiver)
    receiver.join(namespace, timeout=20000)
    worker.join()

    assert attempts == [0, 1]
    send = sender_spans.one(f"send {namespace}")
    # an attempt's span ends once it is acknowledged, which may come after the retry ran
    processes = sorted(spans.named(f"process {namespace}"), key=lambda p: p.start_time or 0)
    assert [parent_id(p) for p in processes] == [span_id(send)] * 2
    assert [dict(p.attributes or {})["nbqueue.message.retries"] for p in processes] == [0, 1]
    assert [dict(p.attributes or {})["nbqueue.message.outcome"] for p in processes] == [
        "retrying",
        "succeeded",
    ]
    assert [e.name for e in processes[0].events] == ["exception", "nbqueue.retry"]
