from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.middleware import Shutdown, ShutdownNotifications


def _busy(seconds: float) -> None:
    # Short sleeps: an asynchronous exception is only delivered between bytecodes.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.005)


def test_actors_that_opt_in_are_interrupted_when_the_worker_stops(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    worker = worker_factory(stub_broker)
    running = threading.Event()
    outcomes: list[str] = []

    @nbqueue.actor(notify_shutdown=True, max_retries=0)
    def long_job() -> None:
        running.set()
        try:
            _busy(5)
        except Shutdown:
            outcomes.append("interrupted")
            raise
        outcomes.append("finished")

    long_job.send()
    assert running.wait(5)
    started = time.monotonic()
    worker.stop()

    assert outcomes == ["interrupted"]
    assert time.monotonic() - started < 2


def test_actors_that_did_not_opt_in_finish_when_the_worker_stops(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    worker = worker_factory(stub_broker)
    running = threading.Event()
    outcomes: list[str] = []

    @nbqueue.actor(max_retries=0)
    def long_job() -> None:
        running.set()
        try:
            _busy(0.2)
        except Shutdown:
            outcomes.append("interrupted")
            raise
        outcomes.append("finished")

    long_job.send()
    assert running.wait(5)
    worker.stop()

    assert outcomes == ["finished"]


def test_the_middleware_default_interrupts_actors_that_say_nothing(
    worker_factory: Any,
) -> None:
    broker = StubBroker(middleware=[ShutdownNotifications(notify_shutdown=True)])
    worker = worker_factory(broker)
    running = threading.Event()
    outcomes: list[str] = []

    @nbqueue.actor(broker=broker)
    def long_job() -> None:
        running.set()
        try:
            _busy(5)
        except Shutdown:
            outcomes.append("interrupted")
            raise

    long_job.send()
    assert running.wait(5)
    worker.stop()

    assert outcomes == ["interrupted"]


def test_a_message_can_opt_out_of_the_actor_option(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    worker = worker_factory(stub_broker)
    running = threading.Event()
    outcomes: list[str] = []

    @nbqueue.actor(notify_shutdown=True, max_retries=0)
    def long_job() -> None:
        running.set()
        try:
            _busy(0.2)
        except Shutdown:
            outcomes.append("interrupted")
            raise
        outcomes.append("finished")

    long_job.send_with_options(notify_shutdown=False)
    assert running.wait(5)
    worker.stop()

    assert outcomes == ["finished"]


def test_actors_that_already_finished_are_not_interrupted_at_shutdown(
    stub_broker: StubBroker, worker_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    uncaught: list[type[BaseException]] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: uncaught.append(args.exc_type))
    worker = worker_factory(stub_broker, worker_threads=1)
    outcomes: list[str] = []

    @nbqueue.actor(notify_shutdown=True)
    def short_job() -> None:
        outcomes.append("finished")

    short_job.send()
    stub_broker.join(short_job.queue_name)
    worker.join()
    threads = list(worker.workers)
    worker.stop()

    # An idle worker thread hit by Shutdown would die with an uncaught exception.
    assert outcomes == ["finished"]
    assert uncaught == []
    assert all(not t.is_alive() for t in threads)
