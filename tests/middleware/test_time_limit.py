from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import nbqueue
from nbqueue import Worker
from nbqueue.brokers.stub import StubBroker
from nbqueue.middleware import AsyncIO, TimeLimit, TimeLimitExceeded


def _busy(seconds: float) -> None:
    # Short sleeps: an asynchronous exception is only delivered between bytecodes.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.005)


def _until_interrupted() -> None:
    # No end of its own: the test passes only if the time limit interrupts it, however late.
    while True:
        time.sleep(0.005)


def _time_limit(broker: StubBroker) -> TimeLimit:
    return next(m for m in broker.middleware if isinstance(m, TimeLimit))


def test_actors_that_exceed_their_time_limit_are_interrupted(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    outcomes: list[str] = []

    @nbqueue.actor(time_limit=50, max_retries=0)
    def slow() -> None:
        try:
            _until_interrupted()
        except TimeLimitExceeded:
            outcomes.append("interrupted")
            raise
        outcomes.append("finished")

    slow.send()
    stub_broker.join(slow.queue_name, fail_fast=False)
    stub_worker.join()

    assert outcomes == ["interrupted"]
    [dead] = stub_broker.get_dead_letters(slow.queue_name)
    assert dead.reason == "retries_exhausted"
    assert dead.error is not None and "TimeLimitExceeded" in dead.error


def test_actors_within_their_time_limit_finish(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    outcomes: list[str] = []

    @nbqueue.actor(time_limit=600_000, max_retries=0)
    def quick() -> None:
        _busy(0.05)
        outcomes.append("finished")

    quick.send()
    stub_broker.join(quick.queue_name)
    stub_worker.join()

    assert outcomes == ["finished"]


def test_the_message_time_limit_overrides_the_actor_option(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    outcomes: list[str] = []

    @nbqueue.actor(time_limit=60000, max_retries=0)
    def slow() -> None:
        try:
            _until_interrupted()
        except TimeLimitExceeded:
            outcomes.append("interrupted")
            raise

    slow.send_with_options(time_limit=50)
    stub_broker.join(slow.queue_name, fail_fast=False)
    stub_worker.join()

    assert outcomes == ["interrupted"]


def test_the_deadline_is_met_even_when_the_check_interval_is_long(
    worker_factory: Any,
) -> None:
    # The watcher sleeps until the earliest deadline, not a whole interval (an hour here).
    broker = StubBroker(middleware=[TimeLimit(time_limit=50, interval=3_600_000)])
    outcomes: list[str] = []

    @nbqueue.actor(broker=broker)
    def slow() -> None:
        try:
            _until_interrupted()
        except TimeLimitExceeded:
            outcomes.append("interrupted")
            raise

    worker = worker_factory(broker)
    slow.send()
    broker.join(slow.queue_name, fail_fast=False)
    worker.join()

    assert outcomes == ["interrupted"]


def test_the_watcher_starts_with_a_worker_booted_without_the_cli(
    worker_factory: Any,
) -> None:
    time_limit = TimeLimit(time_limit=50)
    broker = StubBroker(middleware=[time_limit])  # no after_process_boot, as in a notebook
    assert time_limit._watcher is None
    outcomes: list[str] = []

    @nbqueue.actor(broker=broker)
    def slow() -> None:
        try:
            _until_interrupted()
        except TimeLimitExceeded:
            outcomes.append("interrupted")
            raise

    worker = worker_factory(broker)
    slow.send()
    broker.join(slow.queue_name, fail_fast=False)
    worker.join()

    assert outcomes == ["interrupted"]


def test_the_watcher_thread_stops_when_the_worker_shuts_down(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    worker = worker_factory(stub_broker)
    watcher = _time_limit(stub_broker)._watcher
    assert watcher is not None and watcher.is_alive()

    worker.stop()

    assert not watcher.is_alive()
    assert watcher not in threading.enumerate()


def test_a_worker_started_after_another_stopped_still_enforces_limits(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    worker_factory(stub_broker).stop()
    worker = worker_factory(stub_broker)
    outcomes: list[str] = []

    @nbqueue.actor(time_limit=50, max_retries=0)
    def slow() -> None:
        try:
            _until_interrupted()
        except TimeLimitExceeded:
            outcomes.append("interrupted")
            raise

    slow.send()
    stub_broker.join(slow.queue_name, fail_fast=False)
    worker.join()

    assert outcomes == ["interrupted"]


def test_a_finished_actor_is_never_interrupted_later(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    worker = worker_factory(stub_broker, worker_threads=1)
    outcomes: list[str] = []

    @nbqueue.actor(time_limit=500, max_retries=0)
    def quick(n: int) -> None:
        _busy(0.2)  # 300 ms short of its limit, a margin a loaded machine does not eat
        outcomes.append(f"done {n}")

    # Three messages back to back on one thread take longer than one time limit in total.
    for n in range(3):
        quick.send(n)
    stub_broker.join(quick.queue_name)
    worker.join()

    assert outcomes == [f"done {n}" for n in range(3)]


def test_a_time_limit_ends_with_its_message(stub_broker: StubBroker, worker_factory: Any) -> None:
    worker = worker_factory(stub_broker, worker_threads=1)
    outcomes: list[str] = []

    @nbqueue.actor(time_limit=50, max_retries=0)
    def limited() -> None:
        outcomes.append("limited")

    @nbqueue.actor(time_limit=float("inf"), max_retries=0)
    def unlimited() -> None:
        # Runs on the same thread right after limited(), past limited()'s deadline.
        try:
            _busy(0.2)
        except TimeLimitExceeded:
            outcomes.append("interrupted")
            raise
        outcomes.append("unlimited")

    limited.send()
    unlimited.send()
    stub_broker.join(limited.queue_name, fail_fast=False)
    worker.join()

    assert outcomes == ["limited", "unlimited"]


def test_async_actors_that_exceed_their_time_limit_are_cancelled(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    stub_broker.add_middleware(AsyncIO())
    worker = worker_factory(stub_broker)
    outcomes: list[str] = []

    @nbqueue.actor(time_limit=50, max_retries=0)
    async def slow() -> None:
        try:
            await asyncio.sleep(3600)  # only the time limit can end it within the test
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            raise

    slow.send()
    stub_broker.join(slow.queue_name, fail_fast=False)
    worker.join()

    assert outcomes == ["cancelled"]
    [dead] = stub_broker.get_dead_letters(slow.queue_name)
    assert dead.error is not None and "TimeLimitExceeded" in dead.error
