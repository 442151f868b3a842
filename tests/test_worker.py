from __future__ import annotations

import threading

import pytest

import nbqueue
from nbqueue import QueueJoinTimeout, Worker


def test_worker_threads_run_messages_concurrently(stub_broker, worker_factory):
    barrier = threading.Barrier(3, timeout=10)

    @nbqueue.actor
    def meet():
        barrier.wait()

    for _ in range(3):
        meet.send()
    worker = worker_factory(stub_broker, worker_threads=3)
    stub_broker.join("default", timeout=10000)
    worker.join()
    assert barrier.broken is False


@pytest.mark.parametrize("burst", [True, False])
def test_every_idle_thread_is_woken_for_long_messages(stub_broker, worker_factory, burst):
    # The work queue wakes one thread at a time and each passes the baton on: eight messages
    # that only finish together must still all be running at once, whether they arrive in one
    # burst or one by one to a worker whose threads are all asleep.
    barrier = threading.Barrier(8, timeout=5)
    started = threading.Semaphore(0)

    @nbqueue.actor
    def meet():
        started.release()
        barrier.wait()

    # Threads that were never woken would sleep for the whole worker_timeout, past the barrier's.
    worker = worker_factory(stub_broker, worker_threads=8, worker_timeout=20000)
    for _ in range(8):
        meet.send()
        if not burst:
            assert started.acquire(timeout=10)
    stub_broker.join("default", timeout=15000)
    worker.join()
    assert barrier.broken is False


def test_a_failing_actor_does_not_stop_the_worker(stub_broker, worker_factory):
    done = []

    @nbqueue.actor(max_retries=0)
    def flaky(i):
        if i == 0:
            raise RuntimeError("boom")
        done.append(i)

    for i in range(3):
        flaky.send(i)
    worker = worker_factory(stub_broker)
    with pytest.raises(RuntimeError, match="boom"):
        stub_broker.join("default", timeout=10000)
    worker.join()
    assert sorted(done) == [1, 2]
    assert [d.reason for d in stub_broker.get_dead_letters("default")] == ["retries_exhausted"]


def test_actors_declared_after_start_get_a_consumer(stub_broker, stub_worker):
    done = []

    @nbqueue.actor(queue_name="late")
    def late():
        done.append(1)

    late.send()
    stub_broker.join("late", timeout=10000)
    stub_worker.join()
    assert done == [1]
    assert "late" in stub_worker.consumers and "late.DQ" in stub_worker.consumers


def test_a_queue_whitelist_limits_what_the_worker_consumes(stub_broker, worker_factory):
    @nbqueue.actor(queue_name="a")
    def on_a():
        pass

    @nbqueue.actor(queue_name="b")
    def on_b():
        pass

    worker = worker_factory(stub_broker, queues=["a"])
    on_a.send()
    on_b.send()
    stub_broker.join("a", timeout=10000)
    assert set(worker.consumers) == {"a", "a.DQ"}
    with pytest.raises(QueueJoinTimeout):
        stub_broker.join("b", timeout=100)


def test_a_paused_worker_runs_nothing_until_resumed(stub_broker, stub_worker):
    done = []

    @nbqueue.actor
    def work():
        done.append(1)

    stub_worker.pause()
    work.send()
    with pytest.raises(QueueJoinTimeout):
        stub_broker.join("default", timeout=300)
    assert done == []
    stub_worker.resume()
    stub_broker.join("default", timeout=10000)
    assert done == [1]


def test_a_pause_right_after_a_resume_waits_for_every_thread_and_keeps_them_paused(
    stub_broker, worker_factory
):
    # Fixed: a thread woken by resume() that saw the next pause() before it left its wait
    # stayed paused without saying so, and that pause() waited for it forever.
    done = []

    @nbqueue.actor
    def work():
        done.append(1)

    worker = worker_factory(stub_broker, worker_threads=8)
    worker.pause()
    flipped = threading.Event()

    def flip():
        for _ in range(20):
            worker.resume()
            worker.pause()
        flipped.set()

    threading.Thread(target=flip, daemon=True).start()
    assert flipped.wait(30), "pause() did not return after a resume()"
    assert all(t.paused_event.is_set() for t in [*worker.workers, *worker.consumers.values()])
    work.send()
    with pytest.raises(QueueJoinTimeout):
        stub_broker.join("default", timeout=200)
    assert done == []
    worker.resume()
    stub_broker.join("default", timeout=10000)
    worker.join()
    assert done == [1]


def test_pause_called_from_an_actor_does_not_wait_for_its_own_thread(stub_broker, worker_factory):
    paused = threading.Event()

    @nbqueue.actor
    def pause_my_worker():
        worker.pause()
        paused.set()

    worker = worker_factory(stub_broker, worker_threads=2)
    pause_my_worker.send()
    assert paused.wait(30)
    worker.resume()
    stub_broker.join("default", timeout=10000)


def test_worker_join_waits_for_running_actors(stub_broker, stub_worker):
    started, release = threading.Event(), threading.Event()
    finished = []

    @nbqueue.actor
    def slow():
        started.set()
        release.wait(10)
        finished.append(1)

    slow.send()
    assert started.wait(10)
    with pytest.raises(QueueJoinTimeout):
        stub_worker.join(timeout=100)
    release.set()
    stub_worker.join(timeout=10000)
    assert finished == [1]


def test_a_stopped_worker_can_be_started_again(stub_broker):
    done = []

    @nbqueue.actor
    def work():
        done.append(1)

    worker = Worker(stub_broker, worker_timeout=100, worker_threads=1)
    worker.start()
    worker.stop()
    worker.start()
    try:
        work.send()
        stub_broker.join("default", timeout=10000)
    finally:
        worker.stop()
    assert done == [1]
    assert not any(type(m).__name__ == "_WorkerMiddleware" for m in stub_broker.middleware)


def test_worker_rejects_zero_threads(stub_broker):
    with pytest.raises(ValueError, match="worker_threads"):
        Worker(stub_broker, worker_threads=0)


def test_async_actors_run_on_the_worker(stub_broker, stub_worker):
    import asyncio

    results = []

    @nbqueue.actor
    async def fetch(x):
        await asyncio.sleep(0)
        results.append(x)

    fetch.send(7)
    stub_broker.join("default", timeout=10000)
    stub_worker.join()
    assert results == [7]


@pytest.mark.parametrize("throws", [[KeyError], (KeyError,), KeyError, "KeyError"])
def test_any_form_of_throws_dead_letters_without_killing_the_thread(
    stub_broker, stub_worker, throws
):
    @nbqueue.actor(throws=throws, max_retries=0)
    def fails():
        raise KeyError("missing")

    fails.send()
    stub_broker.join("default", timeout=10000, fail_fast=False)
    stub_worker.join()
    assert len(stub_broker.get_dead_letters("default")) == 1
    assert all(thread.is_alive() for thread in stub_worker.workers)


def test_stopping_an_idle_worker_does_not_wait_for_the_fetch_timeout(stub_broker):
    @nbqueue.actor
    def idle():
        pass

    # A ten-minute fetch timeout: only interrupting the blocked consumers lets stop() return
    # and their threads end before pytest-timeout would stop the test.
    worker = Worker(stub_broker, worker_timeout=600_000, worker_threads=2)
    worker.start()
    assert set(worker.consumers) == {"default", "default.DQ"}
    consumers = list(worker.consumers.values())
    worker.stop()
    assert not any(consumer.is_alive() for consumer in consumers)


def test_an_actor_resolver_picks_the_actor_for_each_message(stub_broker, worker_factory):
    ran = []

    @nbqueue.actor
    def named(x):
        ran.append(("named", x))

    @nbqueue.actor(actor_name="version_2")
    def version_2(x):
        ran.append(("v2", x))

    def resolve(message):
        return version_2 if message.options.get("version") == 2 else None

    stub_broker.actor_resolvers.append(resolve)
    named.send_with_options(args=(1,))
    named.send_with_options(args=(2,), version=2)
    worker = worker_factory(stub_broker)
    stub_broker.join("default", timeout=10000)
    worker.join()
    assert sorted(ran) == [("named", 1), ("v2", 2)]


def test_an_unknown_actor_handler_can_hand_a_message_on_instead_of_dead_lettering(
    stub_broker, worker_factory
):
    @nbqueue.actor(queue_name="elsewhere")
    def runs_elsewhere():
        pass

    seen = []

    def hand_on(message, error):
        seen.append((message.actor_name, type(error).__name__))
        if message.options.get("hand_on"):
            stub_broker.enqueue(
                message.message.copy(queue_name="elsewhere", actor_name="runs_elsewhere")
            )
            return True
        return False

    stub_broker.unknown_actor_handlers.append(hand_on)
    stub_broker.declare_queue("default")
    stub_broker.enqueue(
        nbqueue.Message(
            queue_name="default",
            actor_name="missing",
            args=(),
            kwargs={},
            options={"hand_on": True},
        )
    )
    stub_broker.enqueue(
        nbqueue.Message(queue_name="default", actor_name="missing", args=(), kwargs={}, options={})
    )
    worker = worker_factory(stub_broker)
    stub_broker.join("default", timeout=10000, fail_fast=False)
    stub_broker.join("elsewhere", timeout=10000)
    worker.join()
    assert seen == [("missing", "ActorNotFound")] * 2
    assert [d.reason for d in stub_broker.get_dead_letters("default")] == ["unknown_actor"]
    assert stub_broker.get_dead_letters("elsewhere") == []
