from __future__ import annotations

import types
from typing import Any

import pytest

import nbqueue
from nbqueue import Worker, composition, group, pipeline
from nbqueue.brokers.stub import StubBroker
from nbqueue.message import Message
from nbqueue.middleware import Middleware
from nbqueue.results import ResultFailure, ResultMissing, Results, ResultTimeout
from nbqueue.results.backends import StubBackend


class EnqueueRecorder(Middleware):
    def __init__(self) -> None:
        self.enqueued: list[tuple[Message[Any], int | None]] = []

    def after_enqueue(self, broker: Any, message: Message[Any], delay: int | None) -> None:
        self.enqueued.append((message, delay))


@pytest.fixture
def backend(stub_broker: StubBroker) -> StubBackend:
    backend = StubBackend()
    stub_broker.add_middleware(Results(backend=backend))
    return backend


@pytest.fixture
def add(stub_broker: StubBroker, backend: StubBackend) -> nbqueue.Actor[Any, int]:
    @nbqueue.actor(store_results=True, max_retries=0)
    def add(x: int, y: int = 0) -> int:
        return x + y

    return add


def test_pipelines_chain_messages_through_nested_pipe_targets(
    stub_broker: StubBroker, add: nbqueue.Actor[Any, int]
) -> None:
    first, second, third = add.message(1, 2), add.message(3), add.message(4)
    pipe = pipeline([first, second, third])

    assert len(pipe) == 3
    target = pipe.messages[0].options["pipe_target"]
    assert target["message_id"] == second.message_id
    assert target["options"]["pipe_target"]["message_id"] == third.message_id
    assert "pipe_target" not in pipe.messages[-1].options
    # The caller's messages are copied, not changed.
    assert first.options == {} and second.options == {}
    assert str(pipe) == "pipeline([add(1, 2), add(3), add(4)])"


def test_pipelines_flatten_child_pipelines_and_or_appends(
    stub_broker: StubBroker, add: nbqueue.Actor[Any, int]
) -> None:
    inner = add.message(1) | add.message(2)
    pipe = pipeline([inner, add.message(3)])
    assert [m.args for m in pipe.messages] == [(1,), (2,), (3,)]

    other_broker = StubBroker()
    longer = pipeline([add.message(1)], broker=other_broker) | add.message(2)
    assert len(longer) == 2
    assert longer.broker is other_broker


def test_pipelines_reject_groups_and_other_objects(
    stub_broker: StubBroker, add: nbqueue.Actor[Any, int]
) -> None:
    with pytest.raises(TypeError, match="groups cannot be part of a pipeline"):
        pipeline([add.message(1), group([add.message(2)])])  # type: ignore[list-item]


def test_pipelines_run_each_step_with_the_previous_result(
    stub_broker: StubBroker, stub_worker: Worker, backend: StubBackend, add: nbqueue.Actor[Any, int]
) -> None:
    pipe = (add.message(1, 2) | add.message(3) | add.message(4)).run()

    assert pipe.get_result(block=True) == 10
    assert list(pipe.get_results(block=True)) == [3, 6, 10]
    assert pipe.completed
    assert pipe.completed_count == 3


def test_pipelines_report_partial_completion(
    stub_broker: StubBroker, backend: StubBackend, add: nbqueue.Actor[Any, int]
) -> None:
    pipe = add.message(1, 2) | add.message(3)
    assert not pipe.completed
    assert pipe.completed_count == 0

    backend.store_result(pipe.messages[0], 3, 1000)
    assert not pipe.completed
    assert pipe.completed_count == 1
    with pytest.raises(ResultMissing):
        pipe.get_result()


def test_pipeline_run_uses_the_larger_of_its_delay_and_the_first_messages(
    stub_broker: StubBroker, add: nbqueue.Actor[Any, int]
) -> None:
    recorder = EnqueueRecorder()
    stub_broker.add_middleware(recorder)

    pipeline([add.message_with_options(args=(1,), delay=500), add.message(2)]).run(delay=100)
    pipeline([add.message_with_options(args=(1,), delay=500), add.message(2)]).run(delay=900)
    pipeline([add.message(1), add.message(2)]).run()

    assert [delay for _, delay in recorder.enqueued] == [500, 900, None]


def test_an_empty_pipeline_cannot_run(stub_broker: StubBroker) -> None:
    with pytest.raises(ValueError, match="empty"):
        pipeline([]).run()


def test_composition_uses_its_own_brokers_backend(stub_broker: StubBroker) -> None:
    @nbqueue.actor
    def add(x: int) -> int:
        return x

    other = StubBroker()
    other_backend = StubBackend()
    other.add_middleware(Results(backend=other_backend))
    message = add.message(1)
    other_backend.store_result(message, 5, 1000)

    # The global broker has no Results middleware; the group's own broker is used.
    assert list(group([message], broker=other).get_results()) == [5]
    assert pipeline([message], broker=other).get_result() == 5
    with pytest.raises(RuntimeError, match="no Results middleware"):
        pipeline([message]).get_result()


def test_groups_run_their_members_in_parallel(
    stub_broker: StubBroker, stub_worker: Worker, backend: StubBackend, add: nbqueue.Actor[Any, int]
) -> None:
    g = group(
        [
            add.message(1, 2),
            add.message(3) | add.message(4),
            group([add.message(5), add.message(6)]),
        ]
    )
    assert len(g) == 3
    g.run()
    g.wait(timeout=5000)

    assert list(g.get_results()) == [3, 7, [5, 6]]
    assert g.completed
    assert g.completed_count == 3


def test_group_completed_count_stops_at_the_first_missing_result(
    stub_broker: StubBroker, backend: StubBackend, add: nbqueue.Actor[Any, int]
) -> None:
    inner = group([add.message(1), add.message(2)])
    g = group([add.message(0), inner])
    backend.store_result(g.children[0], 0, 1000)  # type: ignore[arg-type]
    backend.store_result(inner.children[0], 1, 1000)  # type: ignore[arg-type]

    # The inner group is only half done, so it does not count (Dramatiq counts it anyway).
    assert g.completed_count == 1
    assert not g.completed


def test_group_results_share_one_deadline(
    stub_broker: StubBroker,
    backend: StubBackend,
    add: nbqueue.Actor[Any, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = group([add.message(i) for i in range(5)]).run()  # no worker: results come from the test
    for child in g.children[:4]:
        backend.store_result(child, 0, 60_000)  # type: ignore[arg-type]
    # The group's clock advances 40 ms whenever a member's result is asked for, so each member
    # must be given what is left of the one 100 ms deadline, whatever the real clock does.
    now = [0.0]
    monkeypatch.setattr(composition, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    given: list[int | None] = []
    get_result = backend.get_result

    def timed_get_result(message: Any, *, block: bool = False, timeout: int | None = None) -> Any:
        given.append(timeout)
        now[0] += 0.04
        return get_result(message, block=block, timeout=timeout)

    monkeypatch.setattr(backend, "get_result", timed_get_result)

    with pytest.raises(ResultTimeout):
        g.wait(timeout=100)
    assert given == [100, 60, 20, 0, 0]


def test_group_results_raise_failures(
    stub_broker: StubBroker, stub_worker: Worker, backend: StubBackend, add: nbqueue.Actor[Any, int]
) -> None:
    g = group([add.message(1), add.message("a", 1)]).run()
    with pytest.raises(ResultFailure, match="TypeError"):
        g.wait(timeout=5000)


def test_group_run_delays_every_member(
    stub_broker: StubBroker, add: nbqueue.Actor[Any, int]
) -> None:
    recorder = EnqueueRecorder()
    stub_broker.add_middleware(recorder)

    group([add.message(1), add.message(2) | add.message(3)]).run(delay=250)

    assert [delay for _, delay in recorder.enqueued] == [250, 250]


def test_groups_reject_other_objects(stub_broker: StubBroker) -> None:
    with pytest.raises(TypeError, match="A group takes messages"):
        group([1])  # type: ignore[list-item]


def test_completion_callbacks_need_the_group_callbacks_middleware(
    stub_broker: StubBroker, add: nbqueue.Actor[Any, int]
) -> None:
    g = group([add.message(1)])
    g.add_completion_callback(add.message(2))
    with pytest.raises(RuntimeError, match="GroupCallbacks"):
        g.run()
    assert stub_broker.queue_stats()["default"].ready == 0
