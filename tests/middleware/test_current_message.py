from __future__ import annotations

import threading
from typing import Any

import nbqueue
from nbqueue import Worker
from nbqueue.brokers.stub import StubBroker
from nbqueue.middleware import AsyncIO, CurrentMessage, Middleware


def test_an_actor_sees_the_message_it_runs_for(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    stub_broker.add_middleware(CurrentMessage())
    seen: list[Any] = []

    @nbqueue.actor
    def look() -> None:
        current = CurrentMessage.get_current_message()
        seen.append(None if current is None else current.message_id)

    sent = look.send()
    stub_broker.join(look.queue_name)
    stub_worker.join()

    assert seen == [sent.message_id]


def test_there_is_no_current_message_outside_an_actor(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    stub_broker.add_middleware(CurrentMessage())

    @nbqueue.actor
    def look() -> None:
        pass

    look.send()
    stub_broker.join(look.queue_name)
    stub_worker.join()

    assert CurrentMessage.get_current_message() is None


def test_the_current_message_is_cleared_after_the_actor_returns(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    stub_broker.add_middleware(CurrentMessage())
    after: list[Any] = []

    class Probe(Middleware):
        # after_ack runs on the worker thread once every after_process_message hook has run.
        def after_ack(self, broker: Any, message: Any) -> None:
            after.append(CurrentMessage.get_current_message())

    stub_broker.add_middleware(Probe())
    worker = worker_factory(stub_broker, worker_threads=1)

    @nbqueue.actor
    def look() -> None:
        pass

    look.send()
    stub_broker.join(look.queue_name)
    worker.join()

    assert after == [None]


def test_each_worker_thread_sees_its_own_message(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    stub_broker.add_middleware(CurrentMessage())
    worker = worker_factory(stub_broker, worker_threads=2)
    both_running = threading.Barrier(2, timeout=5)
    seen: dict[int, Any] = {}

    @nbqueue.actor
    def look(n: int) -> None:
        both_running.wait()
        current = CurrentMessage.get_current_message()
        seen[n] = None if current is None else current.args

    look.send(1)
    look.send(2)
    stub_broker.join(look.queue_name)
    worker.join()

    assert seen == {1: (1,), 2: (2,)}


def test_an_async_actor_sees_the_message_it_runs_for(
    stub_broker: StubBroker, worker_factory: Any
) -> None:
    stub_broker.add_middleware(AsyncIO())
    stub_broker.add_middleware(CurrentMessage())
    worker = worker_factory(stub_broker)
    seen: list[Any] = []

    @nbqueue.actor
    async def look() -> None:
        current = CurrentMessage.get_current_message()
        seen.append((threading.current_thread().name, current and current.message_id))

    sent = look.send()
    stub_broker.join(look.queue_name)
    worker.join()

    assert seen == [("nbqueue-event-loop", sent.message_id)]
