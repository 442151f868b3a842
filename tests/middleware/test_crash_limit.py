"""CrashLimit against a real Redis. A process death is what leaves a start counter unfinished, so
these tests write such counters as a dead process would; tests/reliability (A7) kills real ones."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import pytest
import redis

import nbqueue
from nbqueue._redis.client import RedisConnection
from nbqueue._redis.counters import RedisStartCounter
from nbqueue._redis.group import GroupCommit
from nbqueue.broker import MessageProxy
from nbqueue.brokers.redis import RedisBroker
from nbqueue.brokers.stub import StubBroker
from nbqueue.message import Message
from nbqueue.middleware import CrashLimit
from tests.brokers._redis import delete_namespace, private_redis

pytestmark = pytest.mark.redis


@pytest.fixture
def client(redis_url, namespace):
    client = redis.Redis.from_url(redis_url)
    yield client
    delete_namespace(client, namespace)
    client.close()


@pytest.fixture
def limited(redis_url, namespace, client, worker_factory):
    """A stub broker whose CrashLimit keeps its counters in the test's namespace."""
    broker = StubBroker()
    broker.add_middleware(CrashLimit(max_crashes=2, redis=redis_url, key_prefix=f"{namespace}:"))
    broker.emit_after("process_boot")
    nbqueue.set_broker(broker)
    yield broker
    broker.close()


def test_a_message_that_killed_its_process_max_crashes_times_is_dead_lettered_unrun(
    limited, namespace, client, worker_factory
):
    runs = []

    @nbqueue.actor(broker=limited)
    def poison():
        runs.append(1)

    message = poison.send()
    # two earlier processes started this attempt and never finished it
    client.set(f"{namespace}:{message.message_id}.0", 2)
    worker = worker_factory(limited)
    limited.join(poison.queue_name, fail_fast=False)
    worker.stop()  # flushes the deletes still queued

    assert runs == []
    [dead] = limited.get_dead_letters(poison.queue_name)
    assert dead.reason == "crash_limit"
    assert client.get(f"{namespace}:{message.message_id}.0") is None


def test_fewer_unfinished_starts_than_the_limit_still_run_and_leave_no_counter(
    limited, namespace, client, worker_factory
):
    runs = []

    @nbqueue.actor(broker=limited)
    def flaky(i):
        runs.append(i)

    message = flaky.send(0)
    client.set(f"{namespace}:{message.message_id}.0", 1)
    flaky.send_many(range(1, 50))
    worker = worker_factory(limited)
    limited.join(flaky.queue_name)
    worker.stop()

    assert sorted(runs) == list(range(50))
    assert limited.get_dead_letters(flaky.queue_name) == []
    assert list(client.scan_iter(match=f"{namespace}:*")) == []


def test_each_retry_is_counted_on_its_own(limited, namespace, client, worker_factory):
    attempts = []

    @nbqueue.actor(broker=limited, max_retries=3, min_backoff=1, max_backoff=5)
    def fails_twice():
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    message = fails_twice.send()
    client.set(f"{namespace}:{message.message_id}.3", 5)  # a poisoned later attempt, not reached
    worker = worker_factory(limited)
    limited.join(fails_twice.queue_name)
    worker.stop()

    assert len(attempts) == 3
    assert limited.get_dead_letters(fails_twice.queue_name) == []


def test_the_limit_comes_from_the_message_then_the_actor(
    limited, namespace, client, worker_factory
):
    runs = []

    @nbqueue.actor(broker=limited, max_crashes=5)
    def tolerant(i):
        runs.append(i)

    a = tolerant.send(1)
    b = tolerant.send_with_options(args=(2,), max_crashes=1)
    c = tolerant.send_with_options(args=(3,), max_crashes=0)  # 0: no limit for this one
    for message in (a, b, c):
        client.set(f"{namespace}:{message.message_id}.0", 2)
    worker_factory(limited)
    limited.join(tolerant.queue_name, fail_fast=False)

    assert sorted(runs) == [1, 3]
    [dead] = limited.get_dead_letters(tolerant.queue_name)
    assert dead.message is not None and dead.message.message_id == b.message_id
    assert dead.reason == "crash_limit"


def test_on_a_redis_broker_it_uses_the_brokers_client_and_namespace(
    redis_url, namespace, client, worker_factory
):
    broker = RedisBroker(url=redis_url, namespace=namespace)
    broker.add_middleware(CrashLimit(max_crashes=1))
    runs = []

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def job(i):
        runs.append(i)

    poisoned = job.send(0)
    client.set(f"{namespace}:__nbq__:crashes:{poisoned.message_id}.0", 1)
    job.send(1)
    worker_factory(broker)
    broker.join(namespace, timeout=10000, fail_fast=False)

    assert runs == [1]
    [dead] = broker.get_dead_letters(namespace)
    assert dead.reason == "crash_limit"
    broker.close()


def test_an_unreachable_redis_lets_messages_run_with_one_warning(worker_factory, caplog):
    broker = StubBroker()
    broker.add_middleware(CrashLimit(redis="redis://127.0.0.1:1/0", timeout=0.5))
    runs = []

    @nbqueue.actor(broker=broker)
    def job(i):
        runs.append(i)

    job.send_many(range(3))
    worker_factory(broker, worker_threads=1)
    broker.join(job.queue_name)

    assert sorted(runs) == [0, 1, 2]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "CrashLimit" in r.msg]
    assert len(warnings) == 1
    broker.close()


def test_a_broker_without_redis_and_no_url_is_named_in_the_warning(worker_factory, caplog):
    broker = StubBroker()
    broker.add_middleware(CrashLimit())

    @nbqueue.actor(broker=broker)
    def job():
        pass

    job.send()
    worker_factory(broker)
    broker.join(job.queue_name)
    assert "pass CrashLimit(redis='redis://...')" in caplog.text


def test_max_crashes_must_be_positive():
    with pytest.raises(ValueError, match="max_crashes must be at least 1"):
        CrashLimit(max_crashes=0)


class CountingRedis(redis.Redis):
    """A real client that counts the commands it sends (pipelines count once)."""

    calls = 0

    def execute_command(self, *args, **options):
        type(self).calls += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction=True, shard_hint=None):
        return CountingPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )


class CountingPipeline(redis.client.Pipeline):
    def execute(self, raise_on_error=True):
        CountingRedis.calls += 1
        return super().execute(raise_on_error)


def test_it_costs_at_most_one_round_trip_per_message(redis_url, namespace, client, worker_factory):
    """One script call per start at most (INCR, PEXPIRE and the queued DELs inside), fewer when
    worker threads ask at the same moment and share a call."""
    counting = CountingRedis.from_url(redis_url)
    broker = StubBroker()
    broker.add_middleware(CrashLimit(redis=counting, key_prefix=f"{namespace}:"))

    @nbqueue.actor(broker=broker)
    def job(i):
        pass

    job.send_many(range(500))
    worker = worker_factory(broker, worker_threads=4)
    broker.join(job.queue_name)
    worker.stop()

    print(f"CrashLimit: 500 messages, {CountingRedis.calls} Redis calls (4 threads)")
    assert 0 < CountingRedis.calls <= 500 + 2  # + SCRIPT LOAD after NOSCRIPT, + final DEL
    assert list(client.scan_iter(match=f"{namespace}:*")) == []
    counting.close()


def test_suspects_run_one_at_a_time_so_a_poison_pills_neighbours_are_not_blamed(
    limited, namespace, client, worker_factory
):
    running, overlap, lock = [0], [0], threading.Lock()

    @nbqueue.actor(broker=limited)
    def job(i):
        with lock:
            running[0] += 1
            overlap[0] = max(overlap[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    # four messages that were running when a process died once (one unfinished start each)
    messages = job.send_many(range(4))
    for message in messages:
        client.set(f"{namespace}:{message.message_id}.0", 1)
    worker = worker_factory(limited, worker_threads=4)
    limited.join(job.queue_name)
    worker.stop()

    assert overlap[0] == 1
    assert limited.get_dead_letters(job.queue_name) == []
    assert list(client.scan_iter(match=f"{namespace}:*")) == []


def test_a_suspects_counter_is_gone_as_soon_as_it_finishes(
    limited, namespace, client, worker_factory
):
    # queued, it would outlive a process killed by the next suspect and blame this message
    @nbqueue.actor(broker=limited)
    def job():
        pass

    message = job.send()
    client.set(f"{namespace}:{message.message_id}.0", 1)
    worker_factory(limited)
    limited.join(job.queue_name)

    assert client.get(f"{namespace}:{message.message_id}.0") is None  # the worker still runs


class RecordingCounter(RedisStartCounter):
    """Real start counters that note, after each count of ``watched``, its value in Redis and
    whether the test's other suspect was running then."""

    def __init__(self, *args, watched: str, running: threading.Event, **kwargs):
        super().__init__(*args, **kwargs)
        self.watched, self.running, self.seen = watched, running, []
        self.counted = threading.Event()

    def count(self, name, ttl, *, first=False):
        starts = super().count(name, ttl, first=first)
        if name == self.watched:
            value: Any = self.connection.client.get(self.prefix + name)
            self.seen.append((int(value), self.running.is_set()))
            self.counted.set()
        return starts


def test_a_suspect_waiting_for_its_turn_is_not_counted_while_another_suspect_runs(
    redis_url, namespace, client
):
    """Were a waiting suspect counted, even for a moment, a poison pill that killed the process
    in that moment would leave it blamed: a neighbour dead-lettered after fewer real crashes."""
    broker = StubBroker()
    poison, neighbour = (
        MessageProxy(Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}))
        for _ in range(2)
    )
    for message in (poison, neighbour):  # both were running when a process died once
        client.set(f"{namespace}:{message.message_id}.0", 1)
    running = threading.Event()
    counter = RecordingCounter(
        RedisConnection(redis_url),
        f"{namespace}:",
        watched=f"{neighbour.message_id}.0",
        running=running,
        owns_connection=True,
    )
    limit = CrashLimit(max_crashes=3, counter=counter)
    finish = threading.Event()

    def run_poison() -> None:
        limit.before_process_message(broker, poison)
        running.set()
        finish.wait(30)
        running.clear()
        limit.after_process_message(broker, poison)

    def run_neighbour() -> None:
        limit.before_process_message(broker, neighbour)
        limit.after_process_message(broker, neighbour)

    first = threading.Thread(target=run_poison)
    first.start()
    assert running.wait(30)
    second = threading.Thread(target=run_neighbour)
    second.start()
    try:
        assert counter.counted.wait(30)  # the neighbour asked, and now waits for its turn
    finally:
        finish.set()
        first.join(30)
        second.join(30)
    assert not first.is_alive() and not second.is_alive()

    # while the poison ran, the neighbour's counter kept its one real crash; counted after
    assert counter.seen == [(1, True), (2, False)]
    assert client.get(f"{namespace}:{neighbour.message_id}.0") is None
    assert not neighbour.failed and not poison.failed
    counter.close()


class SignallingConnection(redis.Connection):
    """A real connection that sets ``sent`` once it has sent a command while armed."""

    sent: threading.Event | None = None

    def send_packed_command(self, command, check_health=True):
        super().send_packed_command(command, check_health)
        if SignallingConnection.sent is not None:
            SignallingConnection.sent.set()


def test_a_start_that_timed_out_while_redis_stalled_is_never_counted(namespace, caplog):
    """A thread whose count gives up while another thread's round trip hangs on a paused
    server withdraws it: when the server resumes, the counter holds only the real starts, so
    the message is not dead-lettered after fewer than max_crashes real crashes."""
    with private_redis() as server:
        client = redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=SignallingConnection, port=server.port, socket_timeout=30
            )
        )
        # Waiting for another thread's round trip gives up after 0.2 s; the round trip itself
        # waits for the paused server (socket timeout 30 s).
        counter = RedisStartCounter(
            RedisConnection(client=client), f"{namespace}:", group=GroupCommit(client, timeout=0.2)
        )
        limit = CrashLimit(max_crashes=2, counter=counter)
        broker = StubBroker()
        message, warm_up, neighbour = (
            MessageProxy(Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}))
            for _ in range(3)
        )
        key = f"{namespace}:{message.message_id}.0"
        client.set(key, 1)  # a process died once running this attempt: one real crash
        limit.before_process_message(broker, warm_up)  # loads the script
        limit.after_process_message(broker, warm_up)

        def run_neighbour() -> None:
            limit.before_process_message(broker, neighbour)
            limit.after_process_message(broker, neighbour)

        SignallingConnection.sent = threading.Event()
        server.signal(signal.SIGSTOP)
        try:
            leader = threading.Thread(target=run_neighbour)
            leader.start()
            assert SignallingConnection.sent.wait(10)  # its round trip hangs on the server
            limit.before_process_message(broker, message)  # gives up after 0.2 s: runs unlimited
            assert "could not count the starts" in caplog.text and "TimeoutError" in caplog.text
        finally:
            server.signal(signal.SIGCONT)
            SignallingConnection.sent = None
        leader.join(30)
        assert not leader.is_alive()
        assert client.get(key) == b"1"  # the given-up start did not go with that round trip

        # The attempt starts again: its counter holds the real crash and this start, 2, within
        # max_crashes. Had the given-up start been sent, it would hold 3, and the message
        # would be dead-lettered after a single real crash.
        limit.before_process_message(broker, message)
        assert client.get(key) == b"2"
        assert not message.failed
        limit.after_process_message(broker, message)
        assert client.get(key) is None  # a suspect's counter goes as soon as it finishes
        limit.after_worker_shutdown(broker, None)
        client.close()


def test_a_redis_broker_offers_one_start_counter_per_prefix_and_other_brokers_none(redis_url):
    broker = RedisBroker(url=redis_url, namespace="ns")
    counter = broker.start_counter()
    assert counter is broker.start_counter()
    assert isinstance(counter, RedisStartCounter) and counter.prefix == "ns:__nbq__:crashes:"
    other = broker.start_counter(prefix="elsewhere:")
    assert isinstance(other, RedisStartCounter) and other.prefix == "elsewhere:"
    assert other is broker.start_counter(prefix="elsewhere:") and other is not counter
    assert StubBroker().start_counter() is None
    broker.close()


def test_redis_and_counter_cannot_both_be_given(redis_url):
    broker = RedisBroker(url=redis_url)
    with pytest.raises(ValueError, match="redis= or counter=, not both"):
        CrashLimit(redis=redis_url, counter=broker.start_counter())
    broker.close()
