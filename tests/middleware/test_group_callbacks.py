from __future__ import annotations

import threading
from typing import Any

import pytest

import nbqueue
from nbqueue import Worker, group
from nbqueue.brokers.stub import StubBroker
from nbqueue.message import Message
from nbqueue.middleware.group_callbacks import GroupCallbacks
from nbqueue.rate_limits.backends import StubBackend as RateLimiterStubBackend
from nbqueue.results import Results
from nbqueue.results.backends import StubBackend


class Recorder:
    """Collects what the callback actor receives; wait() returns once ``count`` calls arrived."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self._cond = threading.Condition()

    def record(self, value: Any) -> None:
        with self._cond:
            self.calls.append(value)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 5) -> list[Any]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.calls) >= count, timeout)
            return list(self.calls)


@pytest.fixture
def rate_limiter_backend(stub_broker: StubBroker) -> RateLimiterStubBackend:
    backend = RateLimiterStubBackend()
    stub_broker.add_middleware(GroupCallbacks(backend))
    stub_broker.add_middleware(Results(backend=StubBackend()))
    return backend


def test_group_callbacks_accept_dramatiqs_arguments() -> None:
    backend = RateLimiterStubBackend()
    middleware = GroupCallbacks(backend)
    assert middleware.rate_limiter_backend is backend
    assert middleware.barrier_ttl == 86400000
    assert GroupCallbacks(backend, barrier_ttl=1000).barrier_ttl == 1000


def test_callbacks_run_once_after_every_member_succeeded(
    stub_broker: StubBroker, stub_worker: Worker, rate_limiter_backend: RateLimiterStubBackend
) -> None:
    recorder = Recorder()

    @nbqueue.actor(store_results=True)
    def add(x: int, y: int = 0) -> int:
        return x + y

    @nbqueue.actor
    def done(label: str) -> None:
        recorder.record(label)

    g = group([add.message(1), add.message(2) | add.message(3), add.message(4)])
    g.add_completion_callback(done.message("first"))
    g.add_completion_callback(done.message("second"))
    g.run()
    g.wait(timeout=5000)
    stub_broker.join(done.queue_name)
    stub_worker.join()

    assert sorted(recorder.calls) == ["first", "second"]


def test_callback_options_reach_the_last_message_of_each_member(
    stub_broker: StubBroker, rate_limiter_backend: RateLimiterStubBackend
) -> None:
    enqueued: list[Message[Any]] = []

    class Recorder(nbqueue.Middleware):
        def after_enqueue(self, broker: Any, message: Message[Any], delay: int | None) -> None:
            enqueued.append(message)

    stub_broker.add_middleware(Recorder())

    @nbqueue.actor
    def step(x: int = 0) -> int:
        return x

    g = group([step.message(), step.message(1) | step.message(2)])
    callback = step.message(9)
    g.add_completion_callback(callback)
    g.run()
    g.run()

    first_run = enqueued[:2]
    completion_uuid = first_run[0].options["group_completion_uuid"]
    assert first_run[0].options["group_completion_callbacks"] == [callback.asdict()]
    piped = first_run[1].options["pipe_target"]["options"]
    assert piped["group_completion_uuid"] == completion_uuid
    assert "group_completion_uuid" not in first_run[1].options
    # Every run gets a barrier of its own.
    assert enqueued[2].options["group_completion_uuid"] != completion_uuid
    assert rate_limiter_backend.db[completion_uuid][0] == 2
    # The caller's messages are unchanged.
    assert "group_completion_uuid" not in g.children[0].options  # type: ignore[union-attr]


def test_callbacks_do_not_run_when_a_member_fails(
    stub_broker: StubBroker, stub_worker: Worker, rate_limiter_backend: RateLimiterStubBackend
) -> None:
    recorder = Recorder()

    @nbqueue.actor(max_retries=0)
    def maybe_fail(fail: bool) -> None:
        if fail:
            raise RuntimeError("failed on purpose")

    @nbqueue.actor
    def done() -> None:
        recorder.record("done")  # pragma: no cover

    g = group([maybe_fail.message(False), maybe_fail.message(True)])
    g.add_completion_callback(done.message())
    g.run()
    stub_broker.join(maybe_fail.queue_name, fail_fast=False)
    stub_worker.join()

    assert recorder.calls == []


def test_fire_on_failure_runs_callbacks_once_the_group_is_finished(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    recorder = Recorder()
    stub_broker.add_middleware(GroupCallbacks(RateLimiterStubBackend(), fire_on_failure=True))

    @nbqueue.actor(max_retries=0)
    def maybe_fail(fail: bool) -> None:
        if fail:
            raise RuntimeError("failed on purpose")

    @nbqueue.actor
    def done() -> None:
        recorder.record("done")

    g = group([maybe_fail.message(True), maybe_fail.message(False), maybe_fail.message(True)])
    g.add_completion_callback(done.message())
    g.run()
    stub_broker.join(maybe_fail.queue_name, fail_fast=False)
    stub_worker.join()
    # The last member enqueued the callback; wait for it too.
    stub_broker.join(done.queue_name, fail_fast=False)
    stub_worker.join()

    assert recorder.calls == ["done"]


def test_nested_groups_cannot_have_callbacks(
    stub_broker: StubBroker, rate_limiter_backend: RateLimiterStubBackend
) -> None:
    @nbqueue.actor
    def step() -> None:
        pass  # pragma: no cover

    g = group([step.message(), group([step.message()])])
    g.add_completion_callback(step.message())
    with pytest.raises(NotImplementedError, match="flatten"):
        g.run()


def test_an_empty_group_runs_its_callbacks_at_once(
    stub_broker: StubBroker, stub_worker: Worker, rate_limiter_backend: RateLimiterStubBackend
) -> None:
    recorder = Recorder()

    @nbqueue.actor
    def done() -> None:
        recorder.record("done")

    g = group([])
    g.add_completion_callback(done.message())
    g.run()
    stub_broker.join(done.queue_name)
    stub_worker.join()

    assert recorder.calls == ["done"]
