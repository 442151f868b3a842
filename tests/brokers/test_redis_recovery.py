"""Recovery on the Redis broker: dead workers, hand-overs to idle consumers, maintenance."""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytest

import nbqueue
from nbqueue import Message
from tests.brokers._redis import (
    RecoveryWatch,
    cleanup,
    make_broker,
    start_victim,
    wait_until,
)

pytestmark = pytest.mark.redis


def test_nothing_is_handed_to_an_idle_consumer_whose_worker_is_gone(redis_broker, namespace):
    redis_broker.declare_queue(namespace)
    client, keys = redis_broker.client, redis_broker.keys
    ghost = keys.idle_registration("ghost", namespace)
    client.zadd(keys.idle(namespace), {ghost: 10**13})  # idle "forever", but no heartbeat
    redis_broker.enqueue(
        Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
    )
    assert client.llen(keys.queue(namespace)) == 1
    assert client.zcard(keys.idle(namespace)) == 0
    assert not client.exists(keys.ack_set("ghost", namespace))


def test_recovering_a_dead_idle_worker_stops_hand_overs_to_it(redis_url, namespace):
    dead, survivor = make_broker(redis_url, namespace), make_broker(redis_url, namespace)
    try:
        dead.declare_queue(namespace)
        consumer = dead.consume(namespace, timeout=10)
        assert next(consumer) is None  # idle and registered, then it "dies"
        handed = dead.enqueue(
            Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
        )
        assert survivor.service.recover(dead.broker_id) == 1
        assert survivor.client.zcard(survivor.keys.idle(namespace)) == 0
        survivor.enqueue(
            Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
        )
        listed = survivor.client.lrange(survivor.keys.queue(namespace), 0, -1)
        assert len(listed) == 2 and handed.options["redis_message_id"].encode() in listed
    finally:
        consumer.close()
        dead.close()
        survivor.close()
        cleanup(survivor, namespace)


def test_a_killed_worker_s_messages_come_back_on_the_first_pass_after_its_heartbeat_expires(
    redis_url, namespace
):
    """Recovery needs no traffic: the surviving worker is idle when the other is killed.

    The guarantee is "back within heartbeat_timeout + 1 s, by the Redis server's clock": the
    dead worker's heartbeat expires heartbeat_timeout after its last beat, and maintenance
    passes run every min(1 s, heartbeat_timeout / 4). Both are checked without a clock of the
    test's own, which load would stretch: the victim's last heartbeat and every pass are
    stamped by the server's clock, and the recovery must come on the first pass at or after
    the expiry (a later one would mean maintenance missed it: traffic-dependent or random
    maintenance, a local clock, a wrong comparison).
    """
    broker = make_broker(redis_url, namespace, heartbeat_timeout=2000)
    assert broker.service.interval == 0.5  # passes every min(1 s, 2 s / 4)
    watch = RecoveryWatch(broker)
    done, finished = [], threading.Event()

    @nbqueue.actor(queue_name=namespace, actor_name="job", broker=broker)
    def job(i):
        done.append(i)
        if len(done) == 10:
            finished.set()

    job.send_many(range(10))
    victim = start_victim(redis_url, namespace, heartbeat_timeout=2000, prefetch=10)
    survivor = nbqueue.Worker(broker, worker_threads=4, worker_timeout=100)
    try:

        def holds_everything():
            stats = broker.queue_stats()[namespace]
            started = broker.client.llen(f"{namespace}:started")
            return stats.ready == 0 and stats.in_flight == 10 and started == 2

        wait_until(holds_everything, what="the victim to fetch all ten messages")
        # The survivor has not heartbeated yet: the victim is the only worker in the set.
        workers: Any = broker.client.zrange(broker.keys.heartbeats, 0, -1)
        [victim_id] = [bytes(worker).decode() for worker in workers]
        survivor.start()
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        assert finished.wait(30)  # a hang guard: they are back after about 2.5 s
        assert sorted(done) == list(range(10))
        index, last_beat, moved = watch.recovery_of(victim_id)
        assert moved == 10
        assert index == watch.first_pass_after(last_beat + 2000), watch.passes
        # the dead worker was forgotten once its messages were back
        assert broker.client.zrange(broker.keys.heartbeats, 0, -1) == [broker.broker_id.encode()]
        print(
            f"recovered {watch.passes[index][0] - last_beat} ms after the victim's last "
            f"heartbeat by the server's clock (heartbeat_timeout 2000 ms, passes every 500 ms)"
        )
    finally:
        victim.kill()
        survivor.stop(timeout=5000)
        broker.close()
        cleanup(broker, namespace)


def test_a_worker_presumed_dead_does_not_run_its_recovered_message_twice(
    redis_url, namespace, caplog
):
    first = make_broker(redis_url, namespace)
    second = make_broker(redis_url, namespace)
    try:
        first.declare_queue(namespace)
        first.enqueue(Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={}))
        consumer = first.consume(namespace, timeout=10)
        message = next(consumer)
        assert message is not None
        assert second.service.recover(first.broker_id) == 1  # as if first had stopped beating
        consumer.ack(message)  # first finished the work after all
        assert first.service.acker.flush(5)  # acks are written in the background
        assert "acknowledged after it had gone back to the queue" in caplog.text
        other = second.consume(namespace, timeout=10)
        assert next(other) is None  # the requeued copy was dropped, not run again
        other.close()
        consumer.close()
    finally:
        first.close()
        second.close()
        cleanup(first, namespace)


def test_a_dead_dramatiq_worker_s_ack_sets_are_found_without_a_registry(redis_broker, namespace):
    redis_broker.declare_queue(namespace)
    sent = redis_broker.enqueue(
        Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
    )
    client, keys = redis_broker.client, redis_broker.keys
    rid = sent.options["redis_message_id"]
    client.lpop(keys.queue(namespace))  # a Dramatiq worker fetched it, then died
    client.sadd(keys.ack_set("dramatiq-worker", namespace), rid)
    client.zadd(keys.heartbeats, {"dramatiq-worker": 0})
    redis_broker.service.tick()
    assert client.lrange(keys.queue(namespace), 0, -1) == [rid.encode()]
    assert client.zscore(keys.heartbeats, "dramatiq-worker") is None
    assert not client.exists(keys.ack_set("dramatiq-worker", namespace))


def test_expired_dead_letters_are_pruned_by_maintenance(redis_broker, namespace):
    redis_broker.declare_queue(namespace)
    redis_broker.enqueue(
        Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
    )
    consumer = redis_broker.consume(namespace, timeout=10)
    message = next(consumer)
    message.fail("old")
    consumer.nack(message)
    keys = redis_broker.keys
    rid = message._redis_id
    redis_broker.client.zadd(keys.dead(namespace), {rid: 1})  # dead-lettered long ago
    redis_broker.service.tick()
    assert redis_broker.get_dead_letters(namespace) == []
    assert not redis_broker.client.hexists(keys.dead_reasons(namespace), rid)
    consumer.close()


def test_an_actor_that_outlives_the_stop_timeout_has_its_message_handed_back(
    redis_broker, worker_factory, namespace, caplog
):
    started, release, runs = threading.Event(), threading.Event(), []

    @nbqueue.actor(queue_name=namespace, broker=redis_broker)
    def stuck():
        started.set()
        release.wait(10)
        runs.append(1)

    stuck.send()
    worker = worker_factory(redis_broker, worker_threads=1)
    assert started.wait(10)
    worker.stop(timeout=100)
    stats = redis_broker.queue_stats()[namespace]
    assert (stats.ready, stats.in_flight) == (1, 0)  # back at once, to run again
    assert "still running when the consumer closed" in caplog.text
    release.set()  # the actor finishes after all: its ack deletes the requeued copy
    redis_broker.join(namespace, timeout=10000)
    # join() returns once the ack's script removed the copy; the warning follows it
    assert redis_broker.service.acker.flush(5)
    assert "acknowledged after it had gone back to the queue" in caplog.text
    consumer = redis_broker.consume(namespace, timeout=10)
    assert next(consumer) is None
    consumer.close()
    assert runs == [1]


def test_a_restarted_consumer_s_running_messages_are_settled_not_run_again(redis_broker, namespace):
    """A worker closes a consumer that lost its connection and no longer settles through it;
    the messages it handed out are settled by id when the worker announces their ack."""
    redis_broker.declare_queue(namespace)
    for i in range(2):
        redis_broker.enqueue(
            Message(queue_name=namespace, actor_name="a", args=(i,), kwargs={}, options={})
        )
    consumer = redis_broker.consume(namespace, prefetch=2, timeout=10)
    done, failed = next(consumer), next(consumer)
    consumer._broken = True  # as when next() raised ConnectionClosed and the worker restarts it
    consumer.close()
    stats = redis_broker.queue_stats()[namespace]
    assert (stats.ready, stats.in_flight) == (0, 2)  # still being processed, not requeued
    redis_broker.emit_before("ack", done)
    redis_broker.emit_after("ack", done)
    failed.fail("broken")
    redis_broker.emit_after("nack", failed)
    assert redis_broker.service.acker.flush(5)
    stats = redis_broker.queue_stats()[namespace]
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 1)
    assert redis_broker.get_dead_letters(namespace)[0].reason == "broken"
