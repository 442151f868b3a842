"""What the Live middleware records for each way a message can end, on memory and Redis."""

from __future__ import annotations

import os
import socket

import nbqueue
from nbqueue.errors import Retry
from nbqueue.live import Live, MessageStatus
from nbqueue.message import Message
from nbqueue.middleware import Middleware, SkipMessage
from tests.live.conftest import follow, record, statuses


def test_a_failure_is_recorded_with_its_error(live_broker, worker_factory):
    @nbqueue.actor(max_retries=0)
    def broken():
        raise ValueError("boom")

    worker = worker_factory(live_broker)
    message = broken.send()
    events = follow(message)
    assert statuses(events) == ["enqueued", "running", "failed"]
    final = record(message)
    assert final.error == "ValueError: boom" and events[-1].data["error"] == "ValueError: boom"
    assert final.worker_id == f"{socket.gethostname()}:{os.getpid()}:{worker.worker_id[:8]}"
    assert final.attempt == 1 and final.finished_at is not None


def test_a_retried_message_goes_through_retrying_to_its_next_attempt(live_broker, worker_factory):
    attempts = []

    # The retry starts at once, on another worker thread: "retrying" must be written before the
    # next attempt can start, or the store would drop it as stale behind attempt 2's "running".
    @nbqueue.actor(max_retries=3, min_backoff=0, max_backoff=0)
    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first time")
        print("second time lucky")

    worker_factory(live_broker)
    message = flaky.send()
    events = follow(message)
    seen = statuses(events)
    # (the retry may also show "enqueued" when it moves from the delay queue to its queue)
    assert seen[0] == "enqueued" and "enqueued" not in seen[1:3]
    assert [s for s in seen if s != "enqueued"] == ["running", "retrying", "running", "succeeded"]
    attempts_seen = [e.data.get("attempt") for e in events if e.kind == "status"]
    assert [a for a, s in zip(attempts_seen, seen, strict=True) if s != "enqueued"] == [1, 1, 2, 2]
    retrying = next(e for e in events if e.status is MessageStatus.retrying)
    assert retrying.data["error"] == "RuntimeError: first time" and "eta" in retrying.data
    final = record(message)
    assert final.attempt == 2 and final.error is None


def test_delayed_messages_say_when_they_are_due(live_broker, worker_factory):
    @nbqueue.actor
    def later():
        pass

    message = later.send_with_options(delay=100)
    delayed = record(message)
    assert delayed.status is MessageStatus.delayed and delayed.eta is not None
    worker_factory(live_broker)
    events = follow(message)
    assert statuses(events)[0] == "delayed" and statuses(events)[-1] == "succeeded"


class SkipEverything(Middleware):
    def before_process_message(self, broker, message):
        raise SkipMessage("not today")


def test_a_message_a_middleware_skips_is_skipped(live_broker, worker_factory):
    live_broker.add_middleware(SkipEverything(), before=Live)

    @nbqueue.actor
    def never():
        raise AssertionError("skipped")

    worker_factory(live_broker)
    message = never.send()
    assert statuses(follow(message)) == ["enqueued", "skipped"]


def test_messages_dead_lettered_before_they_run_are_dead(live_broker, worker_factory):
    @nbqueue.actor(max_age=1)
    def stale():
        raise AssertionError("too old to run")

    worker_factory(live_broker)
    old = stale.send_with_options(delay=50)
    ghost: Message[None] = Message(
        queue_name=stale.queue_name, actor_name="ghost", args=(), kwargs={}, options={}
    )
    live_broker.enqueue(ghost)

    assert statuses(follow(old))[-1] == "dead"
    assert record(old).error == "dead-lettered (max_age)"
    assert statuses(follow(ghost)) == ["enqueued", "dead"]
    error = record(ghost).error
    assert error is not None and error.startswith("dead-lettered (unknown_actor): ActorNotFound")


def test_a_retry_that_starts_at_once_on_another_thread_keeps_the_record_right(
    live_broker, worker_factory
):
    attempts = []

    @nbqueue.actor(max_retries=3)
    def again():
        attempts.append(1)
        if len(attempts) == 1:
            raise Retry("now", delay=0)

    worker_factory(live_broker, worker_threads=4)
    message = again.send()
    events = follow(message)
    # "retrying" is left out when the next attempt started before it was written: a late
    # write for an earlier attempt never overwrites a later one.
    runs = [e.data["attempt"] for e in events if e.status is MessageStatus.running]
    assert runs == [1, 2] and statuses(events)[-1] == "succeeded"
    assert record(message).attempt == 2


def test_live_placed_before_retries_is_reported(worker_factory, caplog):
    from nbqueue.brokers.stub import StubBroker
    from nbqueue.middleware import Retries

    broker = StubBroker(middleware=[Live(), Retries()])
    worker_factory(broker)
    assert "Live comes before Retries" in caplog.text


def test_actors_can_stay_out_of_the_live_channel(live_broker, worker_factory):
    @nbqueue.actor(live=False, max_retries=0)
    def tiny(fail):
        print("not captured")
        nbqueue.stream("nowhere")
        if fail:
            raise ValueError("boom")

    worker = worker_factory(live_broker)
    quiet = [tiny.send(False), tiny.send(True)]
    live_broker.join(tiny.queue_name, fail_fast=False)
    worker.join()
    assert [m.status() for m in quiet] == [None, None]
    assert [list(m.events(follow=False)) for m in quiet] == [[], []]
