from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import nbqueue
from nbqueue.history import JobQuery
from nbqueue.live.channel import get_publisher
from nbqueue.live.middleware import transport_for

pytestmark = pytest.mark.redis


@pytest.fixture
def make_redis(redis_url: str, namespace: str) -> Iterator[Callable[[], nbqueue.Broker]]:
    from nbqueue.connection import broker_from_url
    from tests.brokers._redis import delete_namespace

    made: list[nbqueue.Broker] = []

    def make() -> nbqueue.Broker:
        broker = broker_from_url(redis_url, namespace=namespace)
        broker.emit_after("process_boot")
        nbqueue.set_broker(broker)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        delete_namespace(broker.client, namespace)  # type: ignore[attr-defined]
        broker.close()


def _history(broker: nbqueue.Broker) -> Any:
    transport = transport_for(broker)
    get_publisher(transport).flush()
    history = transport.history()
    assert history is not None
    return history


def test_a_sent_message_is_indexed_with_its_message_and_record(
    make_redis: Callable[[], nbqueue.Broker], worker_factory: Any
) -> None:
    broker = make_redis()

    @nbqueue.actor(store_results=True)
    def mul(x: int, y: int) -> int:
        print("mul", x)
        return x * y

    worker_factory(broker)
    message = mul.send(3, y=4)
    assert message.get_result(block=True, timeout=10000) == 12
    history = _history(broker)
    job = history.job(message.message_id)
    assert job.status == "succeeded"
    assert (job.actor, job.args, job.source) == ("mul", "3, y=4", "redis")
    assert job.message["message_id"] == message.message_id
    assert job.output == "mul 3\n"
    assert [j.id for j in history.jobs(JobQuery(status="succeeded"))] == [message.message_id]
    # the record copy outlives the live record
    broker.client.delete(transport_for(broker).keys(message.message_id)[0])  # type: ignore[attr-defined]
    assert history.job(message.message_id).status == "succeeded"


def test_the_count_bound_keeps_the_newest(
    make_redis: Callable[[], nbqueue.Broker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBQUEUE_HISTORY_MAX_JOBS", "5")
    broker = make_redis()

    @nbqueue.actor
    def noop(i: int) -> None:
        pass

    sent = [noop.send(i).message_id for i in range(12)]
    history = _history(broker)
    assert history.count() == 5
    assert {j.id for j in history.jobs()} == set(sent[-5:])
    entries = broker.client.hlen(history.entries_key)  # type: ignore[attr-defined]
    assert entries == 5


def test_the_age_bound_drops_older_jobs_on_the_next_write(
    make_redis: Callable[[], nbqueue.Broker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBQUEUE_HISTORY_MAX_AGE_DAYS", "1")
    broker = make_redis()

    @nbqueue.actor
    def noop() -> None:
        pass

    history = _history(broker)
    client: Any = broker.client  # type: ignore[attr-defined]
    old = nbqueue.Message("default", "noop", (), {}, {}, message_id="old-job")
    two_days_ago = old.message_timestamp - 2 * 86_400_000
    client.zadd(history.index_key, {"old-job": two_days_ago})
    client.hset(history.entries_key, "old-job", json.dumps({"message": old.asdict()}))
    assert history.count() == 1
    fresh = noop.send().message_id
    history = _history(broker)
    assert [j.id for j in history.jobs()] == [fresh]
    assert not client.hexists(history.entries_key, "old-job")


def test_the_history_can_be_turned_off(
    make_redis: Callable[[], nbqueue.Broker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBQUEUE_HISTORY_MAX_JOBS", "0")
    broker = make_redis()
    assert transport_for(broker).history() is None


def test_a_dead_letter_requeues_to_its_queue(
    make_redis: Callable[[], nbqueue.Broker], worker_factory: Any
) -> None:
    from nbqueue.history import actions

    broker = make_redis()
    broker.declare_queue("default")
    # an actor nobody declared: the worker dead-letters it as unknown_actor
    message = broker.enqueue(nbqueue.Message("default", "nobody", (), {}, {}))
    worker = worker_factory(broker)
    broker.join("default", timeout=10000)
    worker.join()
    history = _history(broker)
    assert history.job(message.message_id).status == "dead"
    assert history.job(message.message_id).dead_reason == "unknown_actor"
    letters = broker.get_dead_letters("default")
    assert [d.message.message_id for d in letters if d.message] == [message.message_id]
    worker.stop()
    assert actions.requeue(broker, "default", message.message_id)
    assert broker.get_dead_letters("default") == []
    assert broker.queue_stats()["default"].ready == 1
    assert not actions.requeue(broker, "default", message.message_id)  # only once
    assert _history(broker).job(message.message_id).status == "enqueued"


def test_a_waiting_reader_wakes_when_a_job_changes(
    make_redis: Callable[[], nbqueue.Broker],
) -> None:
    broker = make_redis()

    @nbqueue.actor
    def noop() -> None:
        pass

    history = _history(broker)
    before = history.version()
    woke: list[int] = []
    # (a wait that missed the change would sleep out its 600 s, far past the join below)
    waiting = threading.Thread(target=lambda: woke.append(history.wait(before, 600)), daemon=True)
    waiting.start()
    noop.send()
    get_publisher(transport_for(broker)).flush()
    waiting.join(60)
    assert not waiting.is_alive() and woke and woke[0] > before
    # and a reader that is behind returns at once, with the version it missed
    assert history.wait(before, 60) == history.version() > before
