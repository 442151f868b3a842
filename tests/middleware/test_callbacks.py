from __future__ import annotations

from typing import Any

import nbqueue
from nbqueue import Worker
from nbqueue.brokers.stub import StubBroker


def test_on_success_actor_receives_the_message_and_its_result(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    received: list[tuple[dict[str, Any], Any]] = []

    @nbqueue.actor
    def succeeded(message: dict[str, Any], result: Any) -> None:
        received.append((message, result))

    @nbqueue.actor
    def add(x: int, y: int) -> int:
        return x + y

    sent = add.send_with_options(args=(1, 2), on_success=succeeded)
    stub_broker.join(add.queue_name)
    stub_worker.join()

    [(message, result)] = received
    assert result == 3
    assert message["message_id"] == sent.message_id
    assert message["actor_name"] == "add"
    assert message["args"] == [1, 2]


def test_on_failure_actor_receives_the_exception_type_and_text(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    received: list[tuple[dict[str, Any], dict[str, str]]] = []

    @nbqueue.actor
    def failed(message: dict[str, Any], error: dict[str, str]) -> None:
        received.append((message, error))

    @nbqueue.actor(max_retries=0)
    def explode() -> None:
        raise ValueError("it broke")

    sent = explode.send_with_options(on_failure="failed")
    stub_broker.join(explode.queue_name, fail_fast=False)
    stub_worker.join()

    [(message, error)] = received
    assert message["message_id"] == sent.message_id
    assert error == {"type": "ValueError", "message": "it broke"}


def test_on_failure_runs_after_every_failed_attempt_including_retried_ones(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    errors: list[dict[str, str]] = []

    @nbqueue.actor
    def failed(message: dict[str, Any], error: dict[str, str]) -> None:
        errors.append(error)

    @nbqueue.actor(max_retries=2, min_backoff=10)
    def explode() -> None:
        raise ValueError("again")

    explode.send_with_options(on_failure=failed)
    stub_broker.join(explode.queue_name, fail_fast=False)
    stub_worker.join()

    assert len(errors) == 3


def test_on_success_does_not_run_when_the_actor_fails(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    received: list[Any] = []

    @nbqueue.actor
    def succeeded(message: dict[str, Any], result: Any) -> None:
        received.append(result)

    @nbqueue.actor(max_retries=0)
    def explode() -> None:
        raise ValueError("it broke")

    explode.send_with_options(on_success=succeeded)
    stub_broker.join(explode.queue_name, fail_fast=False)
    stub_worker.join()

    assert received == []


def test_callbacks_set_on_the_actor_apply_to_every_message(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    results: list[Any] = []

    @nbqueue.actor
    def succeeded(message: dict[str, Any], result: Any) -> None:
        results.append(result)

    @nbqueue.actor(on_success=succeeded)
    def double(x: int) -> int:
        return 2 * x

    double.send(1)
    double.send(2)
    stub_broker.join(double.queue_name)
    stub_worker.join()

    assert sorted(results) == [2, 4]


def test_a_message_callback_overrides_the_actor_callback(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    calls: list[str] = []

    @nbqueue.actor
    def first(message: dict[str, Any], result: Any) -> None:
        calls.append("first")

    @nbqueue.actor
    def second(message: dict[str, Any], result: Any) -> None:
        calls.append("second")

    @nbqueue.actor(on_success="first")
    def work() -> None:
        pass

    work.send_with_options(on_success="second")
    stub_broker.join(work.queue_name)
    stub_worker.join()

    assert calls == ["second"]
