from __future__ import annotations

import logging
from typing import Any

import pytest

import nbqueue
from nbqueue import Worker
from nbqueue.brokers.stub import StubBroker
from nbqueue.errors import Retry
from nbqueue.message import Message
from nbqueue.middleware import Middleware, Retries


class EnqueueRecorder(Middleware):
    """Records the delay of every enqueue, to check the backoff Retries chose."""

    def __init__(self) -> None:
        self.delays: list[int | None] = []

    def after_enqueue(self, broker: Any, message: Message[Any], delay: int | None) -> None:
        self.delays.append(delay)


def test_retries_stop_after_max_retries(stub_broker: StubBroker, stub_worker: Worker) -> None:
    attempts: list[int] = []

    @nbqueue.actor(max_retries=3, min_backoff=10, max_backoff=20)
    def flaky() -> None:
        attempts.append(1)
        raise ValueError("boom")

    flaky.send()
    stub_broker.join(flaky.queue_name, fail_fast=False)
    stub_worker.join()

    assert len(attempts) == 4
    [dead] = stub_broker.get_dead_letters(flaky.queue_name)
    assert dead.reason == "retries_exhausted"
    assert stub_broker.dead_letters[0].dead_reason == "retries_exhausted"


def test_retries_record_the_attempt_count_traceback_and_requeue_time(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    @nbqueue.actor(max_retries=1, min_backoff=10)
    def flaky() -> None:
        raise ValueError("boom")

    flaky.send()
    stub_broker.join(flaky.queue_name, fail_fast=False)
    stub_worker.join()

    [proxy] = stub_broker.dead_letters
    assert proxy.options["retries"] == 2
    assert "ValueError: boom" in proxy.options["traceback"]
    assert isinstance(proxy.options["requeue_timestamp"], int)


def test_a_failing_actor_succeeds_on_a_later_retry(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    attempts: list[int] = []

    @nbqueue.actor(min_backoff=10)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise ValueError("not yet")

    flaky.send()
    stub_broker.join(flaky.queue_name, fail_fast=False)
    stub_worker.join()

    assert len(attempts) == 3
    assert stub_broker.dead_letters == []


def test_max_retries_zero_on_the_actor_means_no_retry(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    attempts: list[int] = []

    @nbqueue.actor(max_retries=0)
    def fails() -> None:
        attempts.append(1)
        raise ValueError("boom")

    fails.send()
    stub_broker.join(fails.queue_name, fail_fast=False)
    stub_worker.join()

    assert attempts == [1]
    assert [d.reason for d in stub_broker.get_dead_letters(fails.queue_name)] == [
        "retries_exhausted"
    ]


def test_max_retries_zero_on_the_message_overrides_the_actor_option(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    attempts: list[int] = []

    @nbqueue.actor(max_retries=5, min_backoff=10)
    def fails() -> None:
        attempts.append(1)
        raise ValueError("boom")

    fails.send_with_options(max_retries=0)
    stub_broker.join(fails.queue_name, fail_fast=False)
    stub_worker.join()

    assert attempts == [1]


def test_the_middleware_defaults_apply_when_the_actor_sets_nothing(
    worker_factory: Any,
) -> None:
    broker = StubBroker(middleware=[Retries(max_retries=2, min_backoff=10)])
    attempts: list[int] = []

    @nbqueue.actor(broker=broker)
    def fails() -> None:
        attempts.append(1)
        raise ValueError("boom")

    worker = worker_factory(broker)
    fails.send()
    broker.join(fails.queue_name, fail_fast=False)
    worker.join()

    assert len(attempts) == 3


def test_retry_with_a_delay_overrides_the_backoff(worker_factory: Any) -> None:
    recorder = EnqueueRecorder()
    # With the default 15 s min_backoff the join below would time out if the delay were ignored.
    broker = StubBroker(middleware=[Retries(), recorder])
    attempts: list[int] = []

    @nbqueue.actor(broker=broker)
    def later() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise Retry("try again soon", delay=10)

    worker = worker_factory(broker)
    later.send()
    broker.join(later.queue_name, timeout=5000, fail_fast=False)
    worker.join()

    assert len(attempts) == 2
    assert recorder.delays[1] == 10


def test_retry_is_not_logged_as_an_error(
    stub_broker: StubBroker, stub_worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    @nbqueue.actor
    def later() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise Retry(delay=10)

    with caplog.at_level(logging.DEBUG, logger="nbqueue"):
        later.send()
        stub_broker.join(later.queue_name, fail_fast=False)
        stub_worker.join()

    assert len(attempts) == 2
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_backoff_doubles_with_each_retry_starting_at_min_backoff(worker_factory: Any) -> None:
    recorder = EnqueueRecorder()
    broker = StubBroker(middleware=[Retries(max_retries=3, min_backoff=10), recorder])

    @nbqueue.actor(broker=broker)
    def fails() -> None:
        raise ValueError("boom")

    worker = worker_factory(broker)
    fails.send()
    broker.join(fails.queue_name, fail_fast=False)
    worker.join()

    # The first enqueue is send(); each delayed retry enqueues twice (into the delay queue,
    # then back to the queue when due), and only the first of those carries a delay.
    retry_delays = [d for d in recorder.delays if d is not None]
    assert len(retry_delays) == 3
    for n, delay in enumerate(retry_delays):
        assert 10 * 2**n <= delay < 10 * 2 ** (n + 1)


def test_max_backoff_caps_the_delay(worker_factory: Any) -> None:
    recorder = EnqueueRecorder()
    broker = StubBroker(
        middleware=[Retries(max_retries=4, min_backoff=10, max_backoff=30), recorder]
    )

    @nbqueue.actor(broker=broker)
    def fails() -> None:
        raise ValueError("boom")

    worker = worker_factory(broker)
    fails.send()
    broker.join(fails.queue_name, fail_fast=False)
    worker.join()

    retry_delays = [d for d in recorder.delays if d is not None]
    assert len(retry_delays) == 4
    assert all(d <= 30 for d in retry_delays)


def test_exceptions_the_actor_throws_are_dead_lettered_without_retry(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    attempts: list[int] = []

    @nbqueue.actor(throws=(KeyError,), min_backoff=10)
    def strict() -> None:
        attempts.append(1)
        raise KeyError("missing")

    strict.send()
    stub_broker.join(strict.queue_name, fail_fast=False)
    stub_worker.join()

    assert attempts == [1]
    assert [d.reason for d in stub_broker.get_dead_letters(strict.queue_name)] == ["throws"]
    assert "retries" not in stub_broker.dead_letters[0].options


def test_exceptions_the_actor_does_not_throw_are_still_retried(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    attempts: list[int] = []

    @nbqueue.actor(throws=KeyError, max_retries=1, min_backoff=10)
    def strict() -> None:
        attempts.append(1)
        raise ValueError("boom")

    strict.send()
    stub_broker.join(strict.queue_name, fail_fast=False)
    stub_worker.join()

    assert len(attempts) == 2
    assert [d.reason for d in stub_broker.get_dead_letters(strict.queue_name)] == [
        "retries_exhausted"
    ]


def test_retry_when_decides_instead_of_max_retries(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    seen: list[tuple[int, str]] = []

    def retry_when(retries: int, exception: BaseException) -> bool:
        seen.append((retries, type(exception).__name__))
        return retries < 2

    @nbqueue.actor(retry_when=retry_when, max_retries=0, min_backoff=10)
    def fails() -> None:
        raise ValueError("boom")

    fails.send()
    stub_broker.join(fails.queue_name, fail_fast=False)
    stub_worker.join()

    assert seen == [(0, "ValueError"), (1, "ValueError"), (2, "ValueError")]
    assert [d.reason for d in stub_broker.get_dead_letters(fails.queue_name)] == [
        "retries_exhausted"
    ]


def test_on_retry_exhausted_actor_receives_the_message_and_the_counts(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    received: list[tuple[dict[str, Any], dict[str, Any]]] = []

    @nbqueue.actor
    def exhausted(message: dict[str, Any], info: dict[str, Any]) -> None:
        received.append((message, info))

    @nbqueue.actor(max_retries=1, min_backoff=10, on_retry_exhausted="exhausted")
    def fails(x: int) -> None:
        raise ValueError("boom")

    sent = fails.send(7)
    stub_broker.join(fails.queue_name, fail_fast=False)
    stub_worker.join()

    [(message, info)] = received
    assert message["message_id"] == sent.message_id
    assert message["args"] == [7]
    assert info == {"retries": 1, "max_retries": 1}


def test_messages_that_succeed_are_not_retried(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    recorder = EnqueueRecorder()
    stub_broker.add_middleware(recorder)

    @nbqueue.actor
    def works() -> int:
        return 1

    works.send()
    stub_broker.join(works.queue_name)
    stub_worker.join()

    assert recorder.delays == [None]


class FailFirst(Middleware):
    """Fails every message whose actor raised, before Retries sees it (as Live does on abort)."""

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is not None:
            message.fail("aborted")


def test_a_message_another_middleware_failed_is_not_retried(stub_broker: StubBroker) -> None:
    stub_broker.add_middleware(FailFirst())  # added last, so its after-hook runs before Retries'
    worker = Worker(stub_broker, worker_timeout=100)
    worker.start()
    attempts: list[int] = []

    @nbqueue.actor(max_retries=5, min_backoff=10)
    def doomed() -> None:
        attempts.append(1)
        raise ValueError("boom")

    try:
        doomed.send()
        stub_broker.join(doomed.queue_name, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    assert attempts == [1]
    [dead] = stub_broker.get_dead_letters(doomed.queue_name)
    assert dead.reason == "aborted"
