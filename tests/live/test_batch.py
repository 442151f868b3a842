"""as_completed() and wait(): completion order, timeouts, return_when, groups, messages with no
live record, and the proof that nothing polls (reads counted against status changes)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import nbqueue
from nbqueue.errors import LiveUnavailable, WaitTimeout
from nbqueue.live import transport as contract
from nbqueue.live import transport_for
from tests.live.conftest import follow

#: Each test's gates, by argument: an actor blocks until the test opens its gate.
GATE_TIMEOUT = 30


@pytest.fixture
def gates() -> Any:
    made: dict[int, threading.Event] = {}

    def gate(i: int) -> threading.Event:
        return made.setdefault(i, threading.Event())

    yield gate
    for event in made.values():  # nothing stays blocked after the test
        event.set()


def declare(gates: Any) -> Any:
    @nbqueue.actor(max_retries=0)
    def gated(i: int, fail: bool = False) -> int:
        assert gates(i).wait(GATE_TIMEOUT), f"gate {i} never opened"
        if fail:
            raise ValueError(f"run {i} failed")
        return i

    return gated


def test_as_completed_yields_in_the_order_messages_finish(live_broker, worker_factory, gates):
    gated = declare(gates)
    worker_factory(live_broker, worker_threads=5)
    messages = gated.send_many(range(5))
    finished = nbqueue.as_completed(messages, timeout=60)
    order = [3, 0, 4, 1, 2]
    seen = []
    for i in order:
        gates(i).set()
        seen.append(next(finished).args[0])
    assert seen == order
    assert list(finished) == []


def test_finished_messages_come_first_and_each_message_once(live_broker, worker_factory, gates):
    gated = declare(gates)
    worker_factory(live_broker, worker_threads=3)
    gates(1).set()
    messages = gated.send_many(range(3))
    follow(messages[1])
    finished = nbqueue.as_completed([*messages, messages[1]], timeout=60)
    assert next(finished) is messages[1]
    gates(2).set()
    assert next(finished) is messages[2]
    gates(0).set()
    assert next(finished) is messages[0]
    assert list(finished) == []


def test_as_completed_yields_failed_messages_too(live_broker, worker_factory, gates):
    gated = declare(gates)
    worker_factory(live_broker, worker_threads=2)
    messages = gated.send_many([(0, True), (1,)])
    finished = nbqueue.as_completed(messages, timeout=60)
    gates(0).set()
    failed = next(finished)
    assert failed is messages[0]
    assert failed.status().status in (nbqueue.MessageStatus.failed, nbqueue.MessageStatus.dead)
    gates(1).set()
    assert next(finished) is messages[1]


def test_a_timeout_raises_naming_the_unfinished_messages(live_broker, worker_factory, gates):
    gated = declare(gates)
    worker_factory(live_broker, worker_threads=3)
    gates(0).set()
    messages = gated.send_many(range(3))
    finished = nbqueue.as_completed(messages, timeout=0.2)
    assert next(finished) is messages[0]
    with pytest.raises(WaitTimeout) as info:
        next(finished)
    assert isinstance(info.value, TimeoutError)
    assert info.value.not_done == messages[1:]
    text = str(info.value)
    assert text.startswith("2 of 3 messages did not finish within 0.2 s")
    assert messages[1].message_id in text and messages[2].message_id in text
    assert text.endswith("or timeout=None.")


def test_wait_returns_when_the_first_completes(live_broker, worker_factory, gates):
    gated = declare(gates)
    worker_factory(live_broker, worker_threads=3)
    messages = gated.send_many(range(3))
    gates(1).set()
    done, not_done = nbqueue.wait(messages, timeout=60, return_when=nbqueue.FIRST_COMPLETED)
    assert done == [messages[1]]
    assert not_done == [messages[0], messages[2]]


def test_wait_returns_at_the_first_failure(live_broker, worker_factory, gates):
    gated = declare(gates)
    worker_factory(live_broker, worker_threads=3)
    messages = gated.send_many([(0,), (1, True), (2,)])
    gates(0).set()
    follow(messages[0])
    gates(1).set()
    done, not_done = nbqueue.wait(messages, timeout=60, return_when=nbqueue.FIRST_EXCEPTION)
    assert done == [messages[0], messages[1]]
    assert not_done == [messages[2]]


def test_first_exception_without_failures_waits_for_all(live_broker, worker_factory, gates):
    gated = declare(gates)
    worker_factory(live_broker, worker_threads=2)
    for i in range(2):
        gates(i).set()
    messages = gated.send_many(range(2))
    done, not_done = nbqueue.wait(messages, timeout=60, return_when=nbqueue.FIRST_EXCEPTION)
    assert sorted(m.args[0] for m in done) == [0, 1]
    assert not_done == []


def test_wait_for_all_returns_what_is_done_when_the_timeout_passes(
    live_broker, worker_factory, gates
):
    gated = declare(gates)
    worker_factory(live_broker, worker_threads=2)
    gates(0).set()
    messages = gated.send_many(range(2))
    done, not_done = nbqueue.wait(messages, timeout=0.2)
    assert (done, not_done) == ([messages[0]], [messages[1]])
    gates(1).set()
    done, not_done = nbqueue.wait(messages)
    assert sorted(m.args[0] for m in done) == [0, 1]
    assert not_done == []


def test_wait_refuses_an_unknown_return_when(live_broker):
    with pytest.raises(ValueError, match="is not one of nbqueue.ALL_COMPLETED"):
        nbqueue.wait([], return_when="ANY")


def test_groups_are_followed_as_their_messages(live_broker, worker_factory, gates):
    gated = declare(gates)
    worker_factory(live_broker, worker_threads=3)
    inner = nbqueue.group([gated.message(2)])
    g = nbqueue.group([gated.message(0), gated.message(1), inner]).run()
    finished = nbqueue.as_completed(g, timeout=60)
    for i in (1, 2, 0):
        gates(i).set()
        assert next(finished).args == (i,)
    done, not_done = nbqueue.wait(g, timeout=60)
    assert len(done) == 3 and not_done == []


def test_a_pipeline_cannot_be_watched_as_a_whole(live_broker, gates):
    gated = declare(gates)
    with pytest.raises(TypeError, match="later messages are sent only when"):
        nbqueue.as_completed([gated.message(0) | gated.message(1)])
    with pytest.raises(TypeError, match="take messages and groups"):
        nbqueue.wait([42])  # type: ignore[list-item]


def test_a_message_without_a_live_record_never_hangs(live_broker, worker_factory, gates):
    @nbqueue.actor(live=False, max_retries=0)
    def unwatched(i: int) -> int:
        assert gates(i).wait(GATE_TIMEOUT)
        return i

    worker_factory(live_broker, worker_threads=2)
    gates(0).set()
    done_one, running_one = unwatched.send_many(range(2))
    assert done_one.get_result(block=True, timeout=30000) == 0
    # Its result is stored: it counts as finished without a record.
    assert list(nbqueue.as_completed([done_one], timeout=60)) == [done_one]
    # No record and no result: raised at once rather than waited for forever.
    with pytest.raises(LiveUnavailable) as info:
        nbqueue.as_completed([done_one, running_one], timeout=60)
    assert str(info.value).startswith("1 of 2 messages have no live record")
    assert running_one.message_id in str(info.value)
    with pytest.raises(LiveUnavailable):
        nbqueue.wait([running_one])


class CountingWatch(contract.Watch):
    def __init__(self, watch: contract.Watch, counts: dict[str, int]) -> None:
        self.watch, self.counts = watch, counts

    def wait(self, block: float) -> list[str]:
        self.counts["waits"] += 1
        return self.watch.wait(block)

    def discard(self, message_id: str) -> None:
        self.watch.discard(message_id)

    def close(self) -> None:
        self.counts["chunks"] = len(getattr(self.watch, "_chunks", [None]))
        self.counts["xreads"] = getattr(self.watch, "reads", 0)
        self.watch.close()


@pytest.mark.parametrize(
    ("kind", "chunk"),
    [
        pytest.param("memory", 1000, id="memory"),
        pytest.param("redis", 1000, id="redis-one-chunk", marks=pytest.mark.redis),
        pytest.param("redis", 2, id="redis-chunks", marks=pytest.mark.redis),  # a Redis watch's
    ],
)
def test_reads_are_bounded_by_status_changes_not_by_time(
    live_broker, worker_factory, gates, monkeypatch, kind, chunk
):
    # A watch may block as long as the test runs: any read beyond the status changes would be
    # a poll, whatever the speed of the machine.
    monkeypatch.setattr(contract, "WAIT_BLOCK", 60.0)
    if kind == "redis":
        from nbqueue._redis import live as redis_live

        monkeypatch.setattr(redis_live, "WATCH_CHUNK", chunk)
    transport = transport_for(live_broker)
    counts = {"waits": 0, "statuses": 0, "chunks": 0, "xreads": 0}
    real_watch, real_statuses = transport.watch, transport.statuses

    def watch(cursors):
        return CountingWatch(real_watch(cursors), counts)

    def statuses(ids):
        counts["statuses"] += 1
        return real_statuses(ids)

    monkeypatch.setattr(transport, "watch", watch)
    monkeypatch.setattr(transport, "statuses", statuses)
    gated = declare(gates)
    n = 6
    worker_factory(live_broker, worker_threads=n)
    messages = gated.send_many(range(n))
    finished = nbqueue.as_completed(messages)
    for i in range(n):
        gates(i).set()
        assert next(finished) is messages[i]
    assert list(finished) == []
    changes = 2 * n  # running, then succeeded
    assert counts["waits"] <= changes
    assert counts["statuses"] <= counts["waits"] + 1
    if kind == "redis":
        assert counts["chunks"] == -(-n // chunk)
        assert counts["xreads"] <= changes + counts["chunks"]
