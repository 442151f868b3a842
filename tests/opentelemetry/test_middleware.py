"""The OpenTelemetry middleware on the in-memory broker, with a Worker in this process."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

import pytest
from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

import nbqueue
from nbqueue._opentelemetry import tracing
from nbqueue.broker import MessageProxy
from nbqueue.brokers.stub import StubBroker
from nbqueue.common import current_millis
from nbqueue.middleware import AsyncIO, Middleware, SkipMessage
from nbqueue.middleware.opentelemetry import OpenTelemetry
from tests.opentelemetry.conftest import parent_id, span_id, trace_id


@pytest.fixture
def broker(spans):
    broker = StubBroker()
    broker.add_middleware(spans.middleware())
    broker.emit_after("process_boot")
    nbqueue.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.close()


def run(broker, worker_factory, queue_name):
    worker = worker_factory(broker)
    broker.join(queue_name, fail_fast=False, timeout=10000)
    worker.join()


def test_the_workers_span_is_a_child_of_the_senders_span(broker, spans, worker_factory, namespace):
    @nbqueue.actor(broker=broker, queue_name=namespace)
    def work():
        with spans.tracer.start_as_current_span("inside the actor"):
            pass

    with spans.tracer.start_as_current_span("notebook cell"):
        work.send()
    run(broker, worker_factory, namespace)

    cell = spans.one("notebook cell")
    send = spans.one(f"send {namespace}")
    process = spans.one(f"process {namespace}")
    inside = spans.one("inside the actor")
    assert parent_id(send) == span_id(cell)
    assert parent_id(process) == span_id(send)
    assert parent_id(inside) == span_id(process)
    assert len({trace_id(s) for s in (cell, send, process, inside)}) == 1
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    # the context came through the message, as it would from another process
    assert process.parent is not None and process.parent.is_remote


def test_the_spans_carry_the_messaging_attributes(broker, spans, worker_factory, namespace):
    @nbqueue.actor(broker=broker, queue_name=namespace, actor_name="add")
    def add(x, y):
        return x + y

    message = add.send(1, 2)
    run(broker, worker_factory, namespace)

    send = spans.one(f"send {namespace}")
    assert dict(send.attributes or {}) == {
        "messaging.system": "nbqueue",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": namespace,
        "messaging.message.id": message.message_id,
        "nbqueue.actor.name": "add",
    }
    process = spans.one(f"process {namespace}")
    assert dict(process.attributes or {}) == {
        "messaging.system": "nbqueue",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": namespace,
        "messaging.message.id": message.message_id,
        "nbqueue.actor.name": "add",
        "nbqueue.message.retries": 0,
        "nbqueue.message.outcome": "succeeded",
    }
    assert process.status.status_code is StatusCode.UNSET
    assert not process.events


def test_the_context_travels_in_one_json_option(broker, spans, namespace):
    @nbqueue.actor(broker=broker, queue_name=namespace)
    def work():
        pass

    message = work.send()
    carrier = json.loads(message.encode())["options"]["otel"]
    send = spans.one(f"send {namespace}")
    version, trace, parent, _flags = carrier["traceparent"].split("-")
    assert (version, trace, parent) == ("00", f"{trace_id(send):032x}", f"{span_id(send):016x}")
    assert set(message.options) == {"otel"}


def test_a_failing_actor_records_its_exception_and_an_error_status(
    broker, spans, worker_factory, namespace
):
    @nbqueue.actor(broker=broker, queue_name=namespace, max_retries=0)
    def fail():
        raise ValueError("no good")

    fail.send()
    run(broker, worker_factory, namespace)

    process = spans.one(f"process {namespace}")
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "ValueError: no good"
    attributes = dict(process.attributes or {})
    assert attributes["error.type"] == "ValueError"
    assert attributes["nbqueue.message.outcome"] == "failed"
    assert attributes["nbqueue.message.dead_reason"] == "retries_exhausted"
    (event,) = process.events
    assert event.name == "exception"
    assert dict(event.attributes or {})["exception.type"] == "ValueError"
    assert dict(event.attributes or {})["exception.message"] == "no good"


def test_every_retry_is_a_child_of_the_first_send(broker, spans, worker_factory, namespace):
    attempts = []

    @nbqueue.actor(broker=broker, queue_name=namespace, max_retries=3, min_backoff=1, max_backoff=5)
    def flaky():
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise RuntimeError(f"attempt {len(attempts)}")

    flaky.send()
    run(broker, worker_factory, namespace)

    assert attempts == [0, 1, 2]
    send = spans.one(f"send {namespace}")
    # an attempt's span ends once it is acknowledged, which may come after the retry ran
    processes = sorted(spans.named(f"process {namespace}"), key=lambda p: p.start_time or 0)
    assert [parent_id(p) for p in processes] == [span_id(send)] * 3
    assert {trace_id(p) for p in processes} == {trace_id(send)}
    attributes = [dict(p.attributes or {}) for p in processes]
    assert [a["nbqueue.message.retries"] for a in attributes] == [0, 1, 2]
    assert [a["nbqueue.message.outcome"] for a in attributes] == [
        "retrying",
        "retrying",
        "succeeded",
    ]
    assert [p.status.status_code for p in processes] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    retry_events = [e for p in processes for e in p.events if e.name == "nbqueue.retry"]
    assert [dict(e.attributes or {})["nbqueue.message.retries"] for e in retry_events] == [1, 2]
    assert all(1 <= dict(e.attributes or {})["nbqueue.retry.delay"] <= 5 for e in retry_events)


def test_a_delayed_message_keeps_its_trace(broker, spans, worker_factory, namespace):
    @nbqueue.actor(broker=broker, queue_name=namespace)
    def later():
        pass

    later.send_with_options(delay=20)
    run(broker, worker_factory, namespace)

    send = spans.one(f"send {namespace}")  # moving it from the delay queue sends no second span
    assert dict(send.attributes or {})["nbqueue.message.delay"] == 20
    assert dict(send.attributes or {})["messaging.destination.name"] == namespace
    process = spans.one(f"process {namespace}")
    assert parent_id(process) == span_id(send)


def test_a_message_without_a_trace_context_starts_a_new_trace(
    broker, spans, worker_factory, namespace
):
    @nbqueue.actor(broker=broker, queue_name=namespace)
    def work():
        pass

    # As a Dramatiq producer (or nbqueue without the middleware) would send it.
    message = work.message()
    assert "otel" not in message.options
    (middleware,) = [m for m in broker.middleware if isinstance(m, OpenTelemetry)]
    broker.remove_middleware(middleware)
    broker.enqueue(message)
    broker.add_middleware(middleware)
    with spans.tracer.start_as_current_span("unrelated"):
        pass
    run(broker, worker_factory, namespace)

    assert not spans.named(f"send {namespace}")
    process = spans.one(f"process {namespace}")
    assert process.parent is None
    assert trace_id(process) != trace_id(spans.one("unrelated"))
    assert dict(process.attributes or {})["nbqueue.message.outcome"] == "succeeded"


def test_a_message_with_a_broken_context_starts_a_new_trace(
    broker, spans, worker_factory, namespace
):
    ran = []

    @nbqueue.actor(broker=broker, queue_name=namespace)
    def work():
        ran.append(True)

    work.send_with_options(otel={"traceparent": "garbage"})
    work.send_with_options(otel="not a dict")
    run(broker, worker_factory, namespace)

    assert ran == [True, True]
    processes = spans.named(f"process {namespace}")
    assert [p.parent for p in processes] == [None, None]


def test_sends_from_an_actor_are_children_of_its_span(broker, spans, worker_factory, namespace):
    @nbqueue.actor(broker=broker, queue_name=namespace, actor_name="first")
    def first():
        return 1

    @nbqueue.actor(broker=broker, queue_name=namespace, actor_name="second")
    def second(value=None):
        assert value == 1

    # the Pipelines middleware sends the next step after the actor returned
    nbqueue.pipeline([first.message(), second.message()], broker=broker).run()
    run(broker, worker_factory, namespace)

    by_actor = {
        (s.name, dict(s.attributes or {})["nbqueue.actor.name"]): s for s in spans.finished()
    }
    first_send = by_actor[(f"send {namespace}", "first")]
    first_process = by_actor[(f"process {namespace}", "first")]
    second_send = by_actor[(f"send {namespace}", "second")]
    second_process = by_actor[(f"process {namespace}", "second")]
    assert parent_id(first_process) == span_id(first_send)
    assert parent_id(second_send) == span_id(first_process)
    assert parent_id(second_process) == span_id(second_send)


def test_an_async_actors_spans_are_children_of_its_span(broker, spans, worker_factory, namespace):
    broker.add_middleware(AsyncIO())

    @nbqueue.actor(broker=broker, queue_name=namespace)
    async def work():
        with spans.tracer.start_as_current_span("awaiting"):
            await asyncio.sleep(0)

    work.send()
    run(broker, worker_factory, namespace)

    assert parent_id(spans.one("awaiting")) == span_id(spans.one(f"process {namespace}"))


class _SkipAll(Middleware):
    def before_process_message(self, broker, message):
        raise SkipMessage("not today")


def test_a_skipped_message_says_so(broker, spans, worker_factory, namespace):
    broker.add_middleware(_SkipAll())

    @nbqueue.actor(broker=broker, queue_name=namespace)
    def work():
        raise AssertionError("skipped")

    work.send()
    run(broker, worker_factory, namespace)

    process = spans.one(f"process {namespace}")
    assert dict(process.attributes or {})["nbqueue.message.outcome"] == "skipped"
    assert process.status.status_code is StatusCode.UNSET


def test_a_message_an_earlier_middleware_dead_letters_has_a_span(
    broker, spans, worker_factory, namespace
):
    # AgeLimit comes before OpenTelemetry (added last), so this middleware's
    # before_process_message never runs for a message that is too old.
    @nbqueue.actor(broker=broker, queue_name=namespace, max_age=1000)
    def work():
        raise AssertionError("too old to run")

    message = work.message()
    broker.enqueue(dataclasses.replace(message, message_timestamp=current_millis() - 60_000))
    run(broker, worker_factory, namespace)

    process = spans.one(f"process {namespace}")
    assert parent_id(process) == span_id(spans.one(f"send {namespace}"))
    attributes = dict(process.attributes or {})
    assert attributes["nbqueue.message.outcome"] == "dead"
    assert attributes["nbqueue.message.dead_reason"] == "max_age"
    assert process.status.status_code is StatusCode.ERROR


def test_without_a_tracing_sdk_messages_carry_nothing_more(namespace, worker_factory):
    broker = StubBroker()
    broker.add_middleware(OpenTelemetry(tracer_provider=NoOpTracerProvider()))
    ran = []

    @nbqueue.actor(broker=broker, queue_name=namespace)
    def work():
        ran.append(True)

    message = work.send()
    assert message.options == {}
    run(broker, worker_factory, namespace)
    assert ran == [True]


def test_without_opentelemetry_the_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "nbqueue._opentelemetry.tracing", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'nbqueue\[opentelemetry\]'"):
        OpenTelemetry()


def test_sends_that_never_completed_are_ended_past_a_bound(spans, monkeypatch):
    monkeypatch.setattr(tracing, "MAX_PENDING_SENDS", 2)
    middleware = spans.middleware()
    broker = StubBroker(middleware=[middleware])
    messages = [nbqueue.Message("q", "a", (), {}, {}) for _ in range(3)]
    for message in messages:  # as if each enqueue raised before its after_enqueue
        middleware.before_enqueue(broker, message, None)
    (ended,) = spans.finished()
    assert dict(ended.attributes or {})["messaging.message.id"] == messages[0].message_id
    for message in messages:
        middleware.after_enqueue(broker, message, None)
    assert len(spans.named("send q")) == 3


def test_a_span_left_open_ends_when_its_thread_moves_on_or_stops(spans):
    middleware = spans.middleware()
    broker = StubBroker(middleware=[middleware])
    first, second = (MessageProxy(nbqueue.Message("q", "a", (), {}, {})) for _ in range(2))
    # settling the first raised, so no after_ack came: the next message ends its span
    middleware.before_process_message(broker, first)
    middleware.before_process_message(broker, second)
    assert [dict(s.attributes or {})["messaging.message.id"] for s in spans.finished()] == [
        first.message_id
    ]
    middleware.before_worker_thread_shutdown(broker, None)
    assert len(spans.named("process q")) == 2
    # the thread's context is back to what it was
    assert not trace.get_current_span().get_span_context().is_valid
