from __future__ import annotations

from typing import Any

import nbqueue
from nbqueue import Worker
from nbqueue.brokers.stub import StubBroker
from nbqueue.message import Message
from nbqueue.middleware import Middleware


def _chain(first: Message[Any], then: Message[Any]) -> Message[Any]:
    """Build what pipeline() builds: ``first`` carrying ``then`` as its pipe target."""
    return first.copy(options={"pipe_target": then.asdict()})


class EnqueueRecorder(Middleware):
    def __init__(self) -> None:
        self.enqueued: list[tuple[str, int | None]] = []

    def after_enqueue(self, broker: Any, message: Message[Any], delay: int | None) -> None:
        self.enqueued.append((message.actor_name, delay))


def test_each_result_is_appended_to_the_next_steps_arguments(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    results: list[int] = []

    @nbqueue.actor
    def add(x: int, y: int) -> int:
        return x + y

    @nbqueue.actor
    def record(x: int, total: int) -> None:
        results.append(x * 100 + total)

    stub_broker.enqueue(_chain(add.message(1, 2), record.message_with_options(args=(5,))))
    stub_broker.join(add.queue_name)
    stub_worker.join()

    assert results == [503]


def test_pipelines_of_three_steps_thread_the_result_through(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    results: list[int] = []

    @nbqueue.actor
    def add(x: int, y: int) -> int:
        return x + y

    @nbqueue.actor
    def record(total: int) -> None:
        results.append(total)

    last = record.message_with_options()
    middle = _chain(add.message_with_options(args=(10,)), last)
    stub_broker.enqueue(_chain(add.message(1, 2), middle))
    stub_broker.join(add.queue_name)
    stub_worker.join()

    assert results == [13]


def test_pipe_ignore_on_the_next_message_drops_the_result(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    calls: list[tuple[Any, ...]] = []

    @nbqueue.actor
    def produce() -> int:
        return 42

    @nbqueue.actor
    def consume(*args: Any) -> None:
        calls.append(args)

    then = consume.message_with_options(args=("fixed",), pipe_ignore=True)
    stub_broker.enqueue(_chain(produce.message(), then))
    stub_broker.join(produce.queue_name)
    stub_worker.join()

    assert calls == [("fixed",)]


def test_pipe_ignore_on_the_finished_actor_drops_its_result(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    calls: list[tuple[Any, ...]] = []

    @nbqueue.actor(pipe_ignore=True)
    def produce() -> int:
        return 42

    @nbqueue.actor
    def consume(*args: Any) -> None:
        calls.append(args)

    stub_broker.enqueue(_chain(produce.message(), consume.message()))
    stub_broker.join(produce.queue_name)
    stub_worker.join()

    assert calls == [()]


def test_a_failed_step_does_not_enqueue_the_next_one(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    calls: list[Any] = []

    @nbqueue.actor(max_retries=0)
    def explode() -> int:
        raise ValueError("boom")

    @nbqueue.actor
    def consume(result: Any) -> None:
        calls.append(result)

    stub_broker.enqueue(_chain(explode.message(), consume.message_with_options()))
    stub_broker.join(explode.queue_name, fail_fast=False)
    stub_worker.join()

    assert calls == []
    assert len(stub_broker.dead_letters) == 1


def test_the_next_step_is_enqueued_after_its_delay_option(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    recorder = EnqueueRecorder()
    stub_broker.add_middleware(recorder)
    calls: list[Any] = []

    @nbqueue.actor
    def produce() -> int:
        return 1

    @nbqueue.actor
    def consume(result: Any) -> None:
        calls.append(result)

    then = consume.message_with_options(delay=20)
    stub_broker.enqueue(_chain(produce.message(), then))
    stub_broker.join(produce.queue_name)
    stub_worker.join()

    assert calls == [1]
    assert ("consume", 20) in recorder.enqueued
