from __future__ import annotations

import asyncio
import threading
from typing import Any

import nbqueue
from nbqueue.asyncio import get_event_loop_thread
from nbqueue.brokers.stub import StubBroker
from nbqueue.middleware import AsyncIO


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


def test_an_interrupt_right_after_the_coroutine_was_scheduled_still_cancels_it() -> None:
    # The interrupt lands in the narrowest window: start() is scheduled, nothing waits yet.
    import pytest

    from nbqueue.asyncio import EventLoopThread
    from nbqueue.threading import Interrupt

    thread = EventLoopThread()
    thread.start()
    loop: Any = thread.loop
    schedule = loop.call_soon_threadsafe
    outcomes: list[str] = []

    def interrupted(callback: Any, *args: Any) -> Any:
        handle = schedule(callback, *args)
        if not outcomes:
            outcomes.append("scheduled")
            raise Interrupt()
        return handle

    async def slow() -> None:
        outcomes.append("started")
        await asyncio.sleep(30)

    async def pending() -> int:
        return len(asyncio.all_tasks()) - 1

    loop.call_soon_threadsafe = interrupted
    try:
        with pytest.raises(Interrupt):
            thread.run_coroutine(slow())
        loop.call_soon_threadsafe = schedule
        # cancel() ran right after start(), before the task's first step
        assert outcomes == ["scheduled"]
        assert asyncio.run_coroutine_threadsafe(pending(), loop).result(5) == 0
    finally:
        loop.call_soon_threadsafe = schedule
        thread.stop()
