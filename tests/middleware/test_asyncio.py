from __future__ import annotations

import asyncio
import concurrent.futures
import dis
import gc
import inspect
import itertools
import os
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest

import nbqueue
import nbqueue.asyncio
from nbqueue.asyncio import EventLoopThread, get_event_loop_thread
from nbqueue.brokers.stub import StubBroker
from nbqueue.middleware import AsyncIO
from nbqueue.threading import Interrupt, raise_thread_exception


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


def test_an_interrupt_raised_in_the_waiting_thread_cancels_the_coroutine_and_propagates(
    loop_thread: EventLoopThread,
) -> None:
    waiting_thread = threading.get_ident()
    steps: list[str] = []

    async def interrupts_its_caller() -> None:
        # Asynchronous, as a time limit, a shutdown or an abort raises it; the waiting thread is
        # inside run_coroutine, which cannot return before this coroutine ends.
        raise_thread_exception(waiting_thread, Interrupt)
        steps.append("interrupt raised")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise

    with pytest.raises(Interrupt):
        loop_thread.run_coroutine(interrupts_its_caller())

    assert unfinished_tasks(loop_thread) == []
    assert steps == ["interrupt raised", "cancelled"]


_STEPPED_FILES = (
    nbqueue.asyncio.__file__,
    threading.__file__,
    concurrent.futures._base.__file__,
    os.path.join(os.path.dirname(asyncio.__file__), ""),
)


# Instructions that cannot raise and at which CPython never delivers an asynchronous exception;
# compilers leave some of them outside the try they sit in (a try's NOP in 3.11, a loop's jump
# back in 3.12), and SETUP_FINALLY and SETUP_WITH are where 3.10 defers pending exceptions.
_NEVER_INTERRUPTED = {
    dis.opmap[name]
    for name in (
        "NOP",
        "EXTENDED_ARG",
        "JUMP_FORWARD",
        "JUMP_BACKWARD",
        "JUMP_BACKWARD_NO_INTERRUPT",
        "JUMP_ABSOLUTE",
        "SETUP_FINALLY",
        "SETUP_WITH",
    )
    if name in dis.opmap
}


class InterruptAtStep:
    """A trace function raising Interrupt at the n-th step the calling thread takes in run_coroutine.

    Steps are the call, line, opcode and return events in run_coroutine and in the asyncio,
    concurrent.futures and threading code it calls, but for instructions in _NEVER_INTERRUPTED:
    every point where an asynchronous exception can land in that code, and more (3.11 and later
    deliver one only at function entries, after calls and at loops' jumps back).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.steps = 0
        self.fired_at: str | None = None
        self.repeated = False  # the step fired at is one run_coroutine took before: a wait round
        self._seen: set[tuple[int, str]] = set()
        self._over = False

    def __call__(self, frame: types.FrameType, event: str, arg: object) -> Any:
        if self._over or not frame.f_code.co_filename.startswith(_STEPPED_FILES):
            return None
        frame.f_trace_opcodes = True
        if (
            event in {"line", "opcode"}
            and frame.f_code.co_code[frame.f_lasti] in _NEVER_INTERRUPTED
        ):
            return self
        own = frame.f_code is EventLoopThread.run_coroutine.__code__
        self.steps += 1
        if self.steps == self.n:
            self.fired_at = f"{frame.f_code.co_name}, line {frame.f_lineno} ({event})"
            self.repeated = own and (frame.f_lasti, event) in self._seen
            self._over = True
            raise Interrupt()
        if own:
            self._seen.add((frame.f_lasti, event))
            self._over = event == "return"
        return self


@pytest.mark.parametrize("ending", ["waits", "returns", "raises"])
def test_an_interrupt_at_any_step_of_run_coroutine_cancels_the_coroutine_and_propagates(
    loop_thread: EventLoopThread, ending: str
) -> None:
    # "waits": the interrupt lands before the coroutine was scheduled, while it is scheduled or
    # while its caller waits; "returns" and "raises": also once the coroutine has finished.
    async def waits() -> int:
        await asyncio.sleep(3600)
        return 0

    async def returns() -> int:
        return 1

    async def raises() -> int:
        raise ValueError("boom")

    coroutine_function = {"waits": waits, "returns": returns, "raises": raises}[ending]
    outcomes: list[tuple[int, InterruptAtStep, object]] = []

    def run_all() -> None:
        previous_trace = sys.gettrace()
        collecting = gc.isenabled()
        gc.disable()  # a finalizer the collector ran in this thread would swallow the interrupt
        try:
            for n in itertools.count(1):
                coro = coroutine_function()
                step = InterruptAtStep(n)
                sys.settrace(step)
                try:
                    outcome: object = loop_thread.run_coroutine(coro)
                except BaseException as error:
                    outcome = error
                finally:
                    sys.settrace(previous_trace)
                if step.fired_at is None:  # run_coroutine ended in fewer than n steps
                    break
                assert type(outcome) is Interrupt, f"interrupted at {step.fired_at}: {outcome!r}"
                assert unfinished_tasks(loop_thread) == [], f"interrupted at {step.fired_at}"
                # Never started (the interrupt came before start() ran), or ended.
                state = inspect.getcoroutinestate(coro)
                assert state in {"CORO_CREATED", "CORO_CLOSED"}, f"interrupted at {step.fired_at}"
                coro.close()
                if step.repeated:  # a second round of the wait loop: nothing new from here on
                    break
        finally:
            if collecting:
                gc.enable()

        outcomes.append((n, step, outcome))

    # In a thread of its own: an exception the tracer raises while another is being handled
    # can leave CPython's record of the handled one behind in the thread (sys.exc_info() still
    # holds the ValueError after the test), and every later test in that thread would carry it
    # as the context of its own exceptions.
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_all()
        except BaseException as error:
            errors.append(error)

    runner = threading.Thread(target=run, name="interrupts")
    runner.start()
    runner.join(300)
    assert not runner.is_alive()
    if errors:
        raise errors[0]
    ((n, step, outcome),) = outcomes
    assert n > 100  # the interrupt really was tried at the steps run_coroutine takes
    if ending == "waits":
        assert step.repeated, f"run_coroutine ended though the coroutine waits: {outcome!r}"
    elif ending == "returns":
        assert outcome == 1
    else:
        assert type(outcome) is ValueError
