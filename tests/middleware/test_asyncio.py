from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import nbqueue
from nbqueue.asyncio import EventLoopThread, get_event_loop_thread
from nbqueue.brokers.stub import StubBroker
from nbqueue.middleware import AsyncIO
from nbqueue.threading import Interrupt


def test_async_actors_run_on_the_loop_thread_the_middleware_started(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    stub_broker.add_middleware(AsyncIO())
    worker = worker_factory(stub_broker)
    loop_thread = get_event_loop_thread()
    assert loop_thread is not None and loop_thread.is_alive()
    ran_on: list[threading.Thread] = []

    @nbqueue.actor
    async def work() -> None:
        await asyncio.sleep(0)
        ran_on.append(threading.current_thread())

    work.send()
    work.send()
    stub_broker.join(work.queue_name)
    worker.join()

    assert ran_on == [loop_thread, loop_thread]


def test_the_loop_thread_stops_when_the_worker_shuts_down(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    stub_broker.add_middleware(AsyncIO())
    worker = worker_factory(stub_broker)
    loop_thread = get_event_loop_thread()
    assert loop_thread is not None

    worker.stop()

    assert not loop_thread.is_alive()
    assert get_event_loop_thread() is None


def test_workers_sharing_the_middleware_share_one_loop_until_the_last_stops(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    stub_broker.add_middleware(AsyncIO())
    first = worker_factory(stub_broker)
    loop_thread = get_event_loop_thread()
    second = worker_factory(stub_broker)
    assert get_event_loop_thread() is loop_thread

    first.stop()
    assert loop_thread is not None and loop_thread.is_alive()

    second.stop()
    assert not loop_thread.is_alive()
    assert get_event_loop_thread() is None


def test_a_new_worker_gets_a_new_loop_after_the_old_one_stopped(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    stub_broker.add_middleware(AsyncIO())
    worker_factory(stub_broker).stop()
    worker = worker_factory(stub_broker)
    results: list[int] = []

    @nbqueue.actor
    async def work(x: int) -> None:
        results.append(x)

    work.send(1)
    stub_broker.join(work.queue_name)
    worker.join()

    loop_thread = get_event_loop_thread()
    assert loop_thread is not None and loop_thread.is_alive()
    assert results == [1]


@pytest.fixture
def loop_thread() -> Iterator[EventLoopThread]:
    thread = EventLoopThread(interrupt_check_ival=0.01)
    thread.start()
    yield thread
    thread.stop()


def unfinished_tasks(thread: EventLoopThread) -> list[asyncio.Task[Any]]:
    """The loop's tasks still pending once the callbacks queued before this call have run.

    The loop runs callbacks in order, so a cancel() that run_coroutine queued has run, and the
    cancelled task has taken its last step, before this check's own first step returns.
    """

    async def pending() -> list[asyncio.Task[Any]]:
        await asyncio.sleep(0)
        return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]

    return asyncio.run_coroutine_threadsafe(pending(), thread.loop).result()


def test_an_interrupt_right_after_the_coroutine_was_scheduled_still_cancels_it(
    loop_thread: EventLoopThread,
) -> None:
    # The interrupt lands in the narrowest window: start() is queued, nothing waits yet. The loop
    # is held at a gate until run_coroutine has queued cancel() behind start(), so the coroutine
    # cannot take its first step before the interrupt is handled, however the threads are run.
    loop: Any = loop_thread.loop
    schedule = loop.call_soon_threadsafe
    gate = threading.Event()
    queued: list[str] = []
    started: list[str] = []

    def interrupted(callback: Any, *args: Any) -> Any:
        queued.append(callback.__name__)
        if len(queued) == 1:
            schedule(gate.wait)
            schedule(callback, *args)
            raise Interrupt()
        handle = schedule(callback, *args)
        gate.set()
        return handle

    async def slow() -> None:
        started.append("slow")
        await asyncio.sleep(3600)

    loop.call_soon_threadsafe = interrupted
    try:
        with pytest.raises(Interrupt):
            loop_thread.run_coroutine(slow())
    finally:
        loop.call_soon_threadsafe = schedule
        gate.set()

    assert queued == ["start", "cancel"]
    assert unfinished_tasks(loop_thread) == []
    assert started == []  # cancel() ran right after start(), before the task's first step
