from __future__ import annotations

from typing import Any

import nbqueue
from nbqueue import Worker
from nbqueue.brokers.stub import StubBroker
from nbqueue.common import current_millis
from nbqueue.message import Message
from nbqueue.middleware import AgeLimit


def _aged(message: Message[Any], age_ms: int) -> Message[Any]:
    return message.copy(message_timestamp=current_millis() - age_ms)


def test_messages_older_than_max_age_are_dead_lettered_without_running(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    calls: list[int] = []

    @nbqueue.actor(max_age=1000)
    def do_work(x: int) -> None:
        calls.append(x)

    stub_broker.enqueue(_aged(do_work.message(1), 5000))
    stub_broker.join(do_work.queue_name, fail_fast=False)
    stub_worker.join()

    assert calls == []
    [dead] = stub_broker.get_dead_letters(do_work.queue_name)
    assert dead.reason == "max_age"
    assert stub_broker.dead_letters[0].dead_reason == "max_age"


def test_messages_younger_than_max_age_run(stub_broker: StubBroker, stub_worker: Worker) -> None:
    calls: list[int] = []

    @nbqueue.actor(max_age=60000)
    def do_work(x: int) -> None:
        calls.append(x)

    stub_broker.enqueue(_aged(do_work.message(1), 100))
    stub_broker.join(do_work.queue_name, fail_fast=False)
    stub_worker.join()

    assert calls == [1]
    assert stub_broker.get_dead_letters(do_work.queue_name) == []


def test_message_max_age_option_overrides_the_actor_option(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    calls: list[int] = []

    @nbqueue.actor(max_age=60000)
    def do_work(x: int) -> None:
        calls.append(x)

    stub_broker.enqueue(_aged(do_work.message_with_options(args=(1,), max_age=1000), 5000))
    stub_broker.join(do_work.queue_name, fail_fast=False)
    stub_worker.join()

    assert calls == []
    assert [d.reason for d in stub_broker.get_dead_letters(do_work.queue_name)] == ["max_age"]


def test_a_zero_max_age_on_the_message_falls_through_to_the_actor_option(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    calls: list[int] = []

    @nbqueue.actor(max_age=1000)
    def do_work(x: int) -> None:
        calls.append(x)

    stub_broker.enqueue(_aged(do_work.message_with_options(args=(1,), max_age=0), 5000))
    stub_broker.join(do_work.queue_name, fail_fast=False)
    stub_worker.join()

    assert calls == []
    assert [d.reason for d in stub_broker.get_dead_letters(do_work.queue_name)] == ["max_age"]


def test_the_middleware_default_applies_when_neither_message_nor_actor_sets_max_age(
    worker_factory: Any,
) -> None:
    broker = StubBroker(middleware=[AgeLimit(max_age=1000)])
    calls: list[int] = []

    @nbqueue.actor(broker=broker)
    def do_work(x: int) -> None:
        calls.append(x)

    worker = worker_factory(broker)
    broker.enqueue(_aged(do_work.message(1), 5000))
    broker.enqueue(_aged(do_work.message(2), 10))
    broker.join(do_work.queue_name, fail_fast=False)
    worker.join()

    assert calls == [2]
    assert [d.reason for d in broker.get_dead_letters(do_work.queue_name)] == ["max_age"]


def test_messages_never_expire_without_any_max_age(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    calls: list[int] = []

    @nbqueue.actor
    def do_work(x: int) -> None:
        calls.append(x)

    stub_broker.enqueue(_aged(do_work.message(1), 10**9))
    stub_broker.join(do_work.queue_name, fail_fast=False)
    stub_worker.join()

    assert calls == [1]
