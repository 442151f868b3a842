from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.middleware import Middleware, Shutdown, ShutdownNotifications


def _work_until(event: threading.Event) -> None:
    # Short sleeps: an asynchronous exception is only delivered between bytecodes.
    while not event.is_set():
        time.sleep(0.005)


class ShutdownBegun(Middleware):
    """Sets ``begun`` when the worker starts to stop, after the middleware added before it."""

    def __init__(self) -> None:
        self.begun = threading.Event()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self.begun.set()


def _shutdown_begun(broker: StubBroker) -> threading.Event:
    # Added last: by the time it is set, ShutdownNotifications has raised what it raises.
    signal = ShutdownBegun()
    broker.add_middleware(signal)
    return signal.begun


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
            _work_until(threading.Event())  # never set: only the interrupt ends it
        except Shutdown:
            outcomes.append("interrupted")
            raise
        outcomes.append("finished")

    long_job.send()
    running.wait()
    worker.stop()

    assert outcomes == ["interrupted"]


def test_actors_that_did_not_opt_in_finish_when_the_worker_stops(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    begun = _shutdown_begun(stub_broker)
    worker = worker_factory(stub_broker)
    running = threading.Event()
    outcomes: list[str] = []

    @nbqueue.actor(max_retries=0)
    def long_job() -> None:
        running.set()
        try:
            _work_until(begun)  # still running when the shutdown begins
        except Shutdown:
            outcomes.append("interrupted")
            raise
        outcomes.append("finished")

    long_job.send()
    running.wait()
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
            _work_until(threading.Event())  # never set: only the interrupt ends it
        except Shutdown:
            outcomes.append("interrupted")
            raise

    long_job.send()
    running.wait()
    worker.stop()

    assert outcomes == ["interrupted"]


def test_a_message_can_opt_out_of_the_actor_option(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    begun = _shutdown_begun(stub_broker)
    worker = worker_factory(stub_broker)
    running = threading.Event()
    outcomes: list[str] = []

    @nbqueue.actor(notify_shutdown=True, max_retries=0)
    def long_job() -> None:
        running.set()
        try:
            _work_until(begun)  # still running when the shutdown begins
        except Shutdown:
            outcomes.append("interrupted")
            raise
        outcomes.append("finished")

    long_job.send_with_options(notify_shutdown=False)
    running.wait()
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
