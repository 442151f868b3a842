"""The broker contract: every broker passes these, through a real worker."""

from __future__ import annotations

import datetime
import json
import threading
import time
from typing import Any

import pytest

import nbqueue
from nbqueue import EncodeError, Message, QueueJoinTimeout


def test_a_sent_message_runs_its_actor_with_its_arguments(broker, worker_factory, namespace):
    calls = []

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def record(a, b, *, c):
        calls.append((a, b, c))

    record.send(1, "two", c=[3])
    worker = worker_factory(broker)
    broker.join(namespace, timeout=10000)
    worker.join()
    assert calls == [(1, "two", [3])]


def test_many_messages_each_run_exactly_once(broker, worker_factory, namespace):
    seen = []
    lock = threading.Lock()

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def count(i):
        with lock:
            seen.append(i)

    worker = worker_factory(broker, worker_threads=4)
    for i in range(200):
        count.send(i)
    broker.join(namespace, timeout=10000)
    worker.join()
    assert sorted(seen) == list(range(200))


def test_a_delayed_message_waits_for_its_delay(broker, worker_factory, namespace):
    ran_at = []
    ran = threading.Event()

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def stamp():
        ran_at.append(time.monotonic())
        ran.set()

    worker = worker_factory(broker)
    sent_at = time.monotonic()
    message = stamp.send_with_options(delay=datetime.timedelta(milliseconds=300))
    assert message.queue_name == f"{namespace}.DQ"
    assert message.options["eta"] >= message.message_timestamp + 300
    # Wait for the run itself: RabbitMQ's join counts ready messages, and a delayed message
    # moving from q.DQ to q is briefly in neither count as this process sees it.
    assert ran.wait(30)
    broker.join(namespace, timeout=10000)
    worker.join()
    assert len(ran_at) == 1
    assert ran_at[0] - sent_at >= 0.29


def test_larger_priority_runs_first_per_actor_and_per_message(broker, worker_factory, namespace):
    order = []

    @nbqueue.actor(queue_name=namespace, broker=broker, priority=5)
    def high(i):
        order.append(("high", i))

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def low(i):
        order.append(("low", i))

    low.send(0)
    high.send(1)
    low.send(2)
    low.send_with_options(args=(3,), priority=100)
    high.send(4)
    worker_factory(broker, worker_threads=1)
    broker.join(namespace, timeout=10000)
    assert order == [("low", 3), ("high", 1), ("high", 4), ("low", 0), ("low", 2)]


def test_an_unknown_actor_is_dead_lettered_alone(broker, worker_factory, namespace):
    done = []

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def known(i):
        done.append(i)

    known.send(1)
    broker.enqueue(
        Message(queue_name=namespace, actor_name="nobody", args=(), kwargs={}, options={})
    )
    known.send(2)
    worker = worker_factory(broker)
    broker.join(namespace, timeout=10000, fail_fast=False)
    worker.join()
    assert sorted(done) == [1, 2]
    [dead] = broker.get_dead_letters(namespace)
    assert dead.reason == "unknown_actor"
    assert dead.message is not None and dead.message.actor_name == "nobody"
    assert "nobody" in (dead.error or "")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe garbage", "undecodable"),
        (b'{"queue_name": "q"', "undecodable"),
        (json.dumps({"actor_name": "x", "args": 1}).encode(), "invalid"),
        (json.dumps([1, 2, 3]).encode(), "invalid"),
    ],
)
def test_a_malformed_body_is_dead_lettered_with_a_reason_and_strands_nothing(
    broker, worker_factory, namespace, inject_raw, body, reason
):
    done = []

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def ok(i):
        done.append(i)

    ok.send(1)
    inject_raw(broker, namespace, body)
    ok.send(2)
    worker = worker_factory(broker)
    broker.join(namespace, timeout=10000, fail_fast=False)
    worker.join()
    assert sorted(done) == [1, 2]
    [dead] = broker.get_dead_letters(namespace)
    assert dead.reason == reason
    assert dead.data == body
    assert worker.consumers[namespace].is_alive()


def test_an_unencodable_argument_fails_at_send_and_enqueues_nothing(broker, namespace):
    @nbqueue.actor(queue_name=namespace, broker=broker)
    def takes(x):
        pass

    with pytest.raises(EncodeError, match=r"args\[0\]"):
        takes.send({1, 2})
    assert broker.queue_stats()[namespace].ready == 0


def test_send_many_with_one_unencodable_item_enqueues_none_of_the_batch(broker, namespace):
    @nbqueue.actor(queue_name=namespace, broker=broker)
    def takes(x):
        pass

    with pytest.raises(EncodeError, match=r"kwargs\['x'\]"):
        takes.send_many([{"x": 1}, {"x": 2}, {"x": {1, 2}}, {"x": 4}])
    assert broker.queue_stats()[namespace].ready == 0


class EnqueueRecorder(nbqueue.Middleware):
    """Records the enqueue hooks as (hook, message, delay) and tags each message in its before
    hook; records the tag each processed message arrived with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Message[Any], int | None]] = []
        self.processed: list[Any] = []

    def before_enqueue(self, broker, message, delay):
        self.calls.append(("before", message, delay))
        message.options["tag"] = message.args[0]

    def after_enqueue(self, broker, message, delay):
        self.calls.append(("after", message, delay))

    def before_process_message(self, broker, message):
        self.processed.append(message.options.get("tag"))


def test_enqueue_hooks_see_the_message_as_enqueued_and_what_a_before_hook_adds_is_sent(
    broker, worker_factory, namespace
):
    recorder = EnqueueRecorder()
    broker.add_middleware(recorder)
    ran: list[int] = []
    both_ran = threading.Event()

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def echo(i):
        ran.append(i)
        if len(ran) == 2:
            both_ran.set()

    now = echo.send(1)
    soon = echo.send_with_options(args=(2,), delay=0)  # 0 is a delay: it goes by the .DQ
    assert recorder.calls == [
        ("before", now, None),
        ("after", now, None),
        ("before", soon, 0),
        ("after", soon, 0),
    ]
    # the very message returned: each broker's own options (Redis: redis_message_id) included
    assert [id(message) for _, message, _ in recorder.calls] == [id(now)] * 2 + [id(soon)] * 2
    assert now.queue_name == namespace and "eta" not in now.options
    assert soon.queue_name == f"{namespace}.DQ" and soon.options["eta"] >= soon.message_timestamp
    assert (now.options["tag"], soon.options["tag"]) == (1, 2)
    worker = worker_factory(broker)
    # Wait for the runs themselves: RabbitMQ's join can miss the delayed one moving q.DQ -> q.
    assert both_ran.wait(30)
    broker.join(namespace, timeout=10000)
    worker.join()
    assert sorted(recorder.processed) == [1, 2]  # the tags were encoded: hooks run before


def test_send_many_calls_every_before_hook_then_every_after_hook_once_all_are_enqueued(
    broker, namespace
):
    recorder = EnqueueRecorder()
    broker.add_middleware(recorder)
    ran: list[int] = []
    both_ran = threading.Event()

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def echo(i):
        ran.append(i)
        if len(ran) == 2:
            both_ran.set()

    sent = echo.send_many([(1,), (2,), (3,)])
    assert [(hook, message.args, delay) for hook, message, delay in recorder.calls] == [
        ("before", (1,), None),
        ("before", (2,), None),
        ("before", (3,), None),
        ("after", (1,), None),
        ("after", (2,), None),
        ("after", (3,), None),
    ]
    assert [id(message) for _, message, _ in recorder.calls] == [id(m) for m in sent + sent]
    recorder.calls.clear()
    delayed = echo.send_many([(4,), (5,)], delay=60000)
    assert [hook for hook, _, _ in recorder.calls] == ["before", "before", "after", "after"]
    assert {m.queue_name for m in delayed} == {f"{namespace}.DQ"}
    assert all(m.options["eta"] >= m.message_timestamp + 60000 for m in delayed)
    stats = broker.queue_stats()[namespace]
    assert (stats.ready, stats.delayed) == (3, 2)


def test_a_fractional_delay_gives_an_eta_in_whole_milliseconds(broker, namespace):
    # Fixed: the in-memory and RabbitMQ brokers wrote a float eta for a float delay (a
    # pipeline's delay= option reaches enqueue as given); Redis wrote an int, as now all do.
    @nbqueue.actor(queue_name=namespace, broker=broker)
    def echo(i):
        pass

    sent = broker.enqueue(echo.message(1), delay=1.5)
    assert type(sent.options["eta"]) is int
    assert sent.options["eta"] >= sent.message_timestamp + 1


def test_a_paused_worker_runs_nothing_until_it_is_resumed(broker, worker_factory, namespace):
    ran = []

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def work(i):
        ran.append(i)

    worker = worker_factory(broker)
    worker.pause()
    for i in range(5):
        work.send(i)
    # The messages wait, fetched or not: nothing settles them while the worker is paused.
    with pytest.raises(QueueJoinTimeout):
        broker.join(namespace, timeout=500)
    assert ran == []
    worker.resume()
    broker.join(namespace, timeout=30000)
    worker.join()
    assert sorted(ran) == list(range(5))


def test_join_times_out_when_nothing_consumes(broker, namespace):
    @nbqueue.actor(queue_name=namespace, broker=broker)
    def idle():
        pass

    idle.send()
    with pytest.raises(QueueJoinTimeout):
        broker.join(namespace, timeout=50)


def test_queue_stats_count_ready_delayed_and_dead(broker, worker_factory, namespace):
    @nbqueue.actor(queue_name=namespace, broker=broker)
    def work():
        pass

    work.send()
    work.send()
    work.send_with_options(delay=60000)
    stats = broker.queue_stats()[namespace]
    assert (stats.ready, stats.delayed, stats.dead) == (2, 1, 0)


def test_flush_drops_waiting_messages(broker, namespace):
    @nbqueue.actor(queue_name=namespace, broker=broker)
    def work():
        pass

    work.send()
    work.send_with_options(delay=60000)
    broker.flush(namespace)
    stats = broker.queue_stats()[namespace]
    assert (stats.ready, stats.delayed) == (0, 0)
    broker.join(namespace, timeout=1000)


def test_stopping_a_worker_hands_prefetched_messages_back(broker, worker_factory, namespace):
    started, release = threading.Event(), threading.Event()
    done = []

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def block(i):
        started.set()
        release.wait(10)
        done.append(i)

    for i in range(5):
        block.send(i)
    worker = worker_factory(broker, worker_threads=1)
    assert started.wait(10)
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 10000})
    stopper.start()
    release.set()
    stopper.join(15)
    assert not stopper.is_alive()
    assert len(done) == 1
    assert broker.queue_stats()[namespace].ready == 4

    second = worker_factory(broker, worker_threads=2)
    broker.join(namespace, timeout=10000)
    second.join()
    assert sorted(done) == [0, 1, 2, 3, 4]


def test_delayed_messages_held_by_a_stopped_worker_are_not_lost(broker, worker_factory, namespace):
    done = []

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def later():
        done.append(1)

    held = threading.Event()

    class SeeDelay(nbqueue.Middleware):
        def before_delay_message(self, broker, message):
            held.set()

    broker.add_middleware(SeeDelay())
    worker = worker_factory(broker)
    later.send_with_options(delay=400)
    assert held.wait(10)
    worker.stop()
    assert done == []
    assert broker.queue_stats()[namespace].delayed == 1
    worker_factory(broker)
    broker.join(namespace, timeout=10000)
    assert done == [1]
