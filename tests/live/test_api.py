"""nbqueue.live's functions, the Message methods that delegate to them, and the top-level names."""

from __future__ import annotations

import logging
import time

import pytest

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.errors import EncodeError, LiveUnavailable
from nbqueue.live import Live, MessageStatus, transport_for
from nbqueue.results import Results
from nbqueue.results.backends import StubBackend
from tests.live.conftest import follow, record, reports, statuses, text


def test_the_top_level_names_are_exported():
    assert nbqueue.progress is nbqueue.live.progress
    assert nbqueue.stream is nbqueue.live.stream
    assert nbqueue.MessageStatus is MessageStatus
    assert issubclass(nbqueue.Abort, nbqueue.middleware.Interrupt)
    assert not issubclass(nbqueue.Abort, Exception)  # `except Exception` does not swallow it


def test_stream_and_progress_do_nothing_outside_of_a_worker():
    nbqueue.stream("ignored")
    nbqueue.stream({"ignored": True})
    nbqueue.progress(1, total=2, desc="ignored")


def test_bad_progress_and_stream_arguments_fail_in_the_actor(live_broker, worker_factory):
    errors = []

    @nbqueue.actor(max_retries=0)
    def careless():
        for call in (
            lambda: nbqueue.progress("3"),  # type: ignore[arg-type]
            lambda: nbqueue.progress(1, total=float("nan")),
            lambda: nbqueue.stream(object()),
        ):
            try:
                call()
            except (TypeError, EncodeError) as e:
                errors.append(type(e).__name__)
        nbqueue.progress(1, total=2, desc=3)  # type: ignore[arg-type]  # made into text

    worker_factory(live_broker)
    message = careless.send()
    events = follow(message)
    assert errors == ["TypeError", "TypeError", "EncodeError"]
    assert reports(events)[-1].desc == "3"


def test_the_default_in_memory_broker_is_live(worker_factory):
    broker = nbqueue.get_broker()
    assert any(isinstance(m, Live) for m in broker.middleware)
    assert isinstance(broker.middleware[-1], Live)  # last: right around the actor

    @nbqueue.actor
    def hello():
        print("hi")

    worker_factory(broker)
    message = hello.send()
    events = follow(message)
    assert statuses(events) == ["enqueued", "running", "succeeded"]
    assert text(events, "stdout") == "hi\n"


def test_functions_take_a_message_id_and_a_broker(live_broker, worker_factory):
    @nbqueue.actor
    def quick():
        nbqueue.stream("x")

    worker_factory(live_broker)
    message = quick.send()
    follow(message)
    nbqueue.set_broker(StubBroker())  # the global broker no longer is the one
    found = nbqueue.live.status(message.message_id, broker=live_broker)
    assert found is not None and found.status is MessageStatus.succeeded
    events = list(nbqueue.live.events(message.message_id, broker=live_broker, follow=False))
    assert text(events) == "x"
    assert nbqueue.live.abort(message.message_id, broker=live_broker) is False


def test_watching_without_a_live_channel_says_what_to_add():
    broker = StubBroker(middleware=[Results(backend=StubBackend())])
    nbqueue.set_broker(broker)

    @nbqueue.actor
    def job():
        pass

    message = job.send()
    for call in (message.status, message.events, message.abort):
        with pytest.raises(LiveUnavailable, match=r"add one with broker\.add_middleware"):
            call()
    with pytest.raises(LiveUnavailable, match=message.message_id):
        message.status()
    with pytest.raises(LiveUnavailable):
        transport_for(broker)


def test_a_broker_without_a_result_backend_keeps_the_channel_in_memory(worker_factory, caplog):
    broker = StubBroker(middleware=[Live()])
    nbqueue.set_broker(broker)

    @nbqueue.actor
    def job():
        nbqueue.stream("ok")

    worker_factory(broker)
    with caplog.at_level(logging.WARNING, logger="nbqueue.live"):
        message = job.send()
    assert "kept in this process only" in caplog.text
    assert text(follow(message)) == "ok"


def test_an_aborted_sync_actor_is_logged_as_aborted_not_as_a_failure(
    live_broker, worker_factory, caplog
):
    @nbqueue.actor
    def spin():
        nbqueue.stream("spinning")
        while True:
            time.sleep(0.005)

    caplog.set_level(logging.INFO, logger="nbqueue.worker")
    worker = worker_factory(live_broker)
    message = spin.send()
    for event in message.events(timeout=5000):
        if event.kind == "output":
            message.abort()
    live_broker.join(spin.queue_name, fail_fast=False)
    worker.join()
    assert record(message).status is MessageStatus.aborted
    assert f"Message {message.message_id} was aborted." in caplog.text
    assert "Failed to process" not in caplog.text
