"""Behaviour specific to the Redis broker, on a real Redis."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time

import pytest
import redis

import nbqueue
from nbqueue import ConnectionClosed, ConnectionFailed, EncodeError, Message
from nbqueue.brokers.redis import RedisBroker
from tests.brokers._redis import (
    cleanup,
    inject_raw,
    make_broker,
    private_redis,
)

pytestmark = pytest.mark.redis


def _drain(consumer, limit=1000):
    """Take messages from a consumer until it has none (its timeout is short)."""
    taken = []
    while len(taken) < limit:
        message = next(consumer)
        if message is None:
            break
        taken.append(message)
    return taken


def test_messages_are_stored_exactly_where_dramatiq_looks(redis_broker, namespace):
    @nbqueue.actor(queue_name=namespace, broker=redis_broker)
    def work(x):
        pass

    sent = work.send(1)
    delayed = work.send_with_options(args=(2,), delay=60000)
    client, ns = redis_broker.client, namespace
    rid = sent.options["redis_message_id"]
    assert client.lrange(f"{ns}:{ns}", 0, -1) == [rid.encode()]
    body = json.loads(client.hget(f"{ns}:{ns}.msgs", rid))
    assert list(body) == [
        "queue_name",
        "actor_name",
        "args",
        "kwargs",
        "options",
        "message_id",
        "message_timestamp",
    ]
    assert body["options"] == {"redis_message_id": rid}
    assert body["message_id"] == sent.message_id
    drid = delayed.options["redis_message_id"]
    assert client.lrange(f"{ns}:{ns}.DQ", 0, -1) == [drid.encode()]
    dbody = json.loads(client.hget(f"{ns}:{ns}.DQ.msgs", drid))
    assert dbody["queue_name"] == f"{ns}.DQ" and dbody["options"]["eta"] >= sent.message_timestamp


def test_every_enqueue_gets_a_fresh_redis_message_id(redis_broker, namespace):
    redis_broker.declare_queue(namespace)
    message = Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
    first, second = redis_broker.enqueue(message), redis_broker.enqueue(message)
    assert first.message_id == second.message_id
    assert first.options["redis_message_id"] != second.options["redis_message_id"]


def test_a_larger_priority_is_fetched_first_across_the_whole_queue(redis_broker, namespace):
    redis_broker.declare_queue(namespace)
    priorities = [0, 3, -5, 10, 0, 3, -5, 10, 0, 3]
    sent = [
        redis_broker.enqueue(
            Message(
                queue_name=namespace, actor_name="a", args=(i,), kwargs={}, options={"priority": p}
            )
        )
        for i, p in enumerate(priorities)
    ]
    # Only default-priority messages sit in the list a Dramatiq worker reads.
    listed = redis_broker.client.lrange(f"{namespace}:{namespace}", 0, -1)
    assert [r.decode() for r in listed] == [
        m.options["redis_message_id"] for m in sent if m.options["priority"] == 0
    ]
    consumer = redis_broker.consume(namespace, prefetch=100, timeout=50)
    taken = _drain(consumer)
    order = [m.args[0] for m in taken]
    assert order == [3, 7, 1, 5, 9, 0, 4, 8, 2, 6]
    consumer.requeue(taken[:4])
    for message in taken[4:]:
        consumer.ack(message)
    consumer.close()
    again = redis_broker.consume(namespace, prefetch=100, timeout=50)
    assert [m.args[0] for m in _drain(again)] == [3, 7, 1, 5]
    again.close()


def test_a_worker_runs_every_higher_priority_message_before_a_default_one(
    redis_broker, worker_factory, namespace
):
    order = []

    @nbqueue.actor(queue_name=namespace, broker=redis_broker)
    def job(kind):
        order.append(kind)

    job.send_many(["low"] * 30)
    job.send_many(["high"] * 5, priority=10)
    worker_factory(redis_broker, worker_threads=1)
    redis_broker.join(namespace, timeout=10000)
    assert order == ["high"] * 5 + ["low"] * 30


def test_priorities_off_sends_every_message_to_the_dramatiq_list(redis_url, namespace):
    broker = make_broker(redis_url, namespace, priorities=False)
    try:
        broker.declare_queue(namespace)
        for p in (5, -5):
            broker.enqueue(
                Message(
                    queue_name=namespace,
                    actor_name="a",
                    args=(),
                    kwargs={},
                    options={"priority": p},
                )
            )
        assert broker.client.llen(f"{namespace}:{namespace}") == 2
    finally:
        broker.close()
        cleanup(broker, namespace)


def test_enqueue_many_sends_in_batches_and_encodes_all_before_sending(redis_broker, namespace):
    @nbqueue.actor(queue_name=namespace, broker=redis_broker)
    def square(x):
        pass

    messages = square.send_many(range(2500))
    assert [m.args[0] for m in messages] == list(range(2500))
    assert len({m.options["redis_message_id"] for m in messages}) == 2500
    assert redis_broker.queue_stats()[namespace].ready == 2500
    with pytest.raises(EncodeError, match=r"args\[0\]"):
        redis_broker.enqueue_many([square.message(1), square.message({1})])
    assert redis_broker.queue_stats()[namespace].ready == 2500


def test_queue_stats_count_prioritized_in_flight_delayed_and_dead(redis_broker, namespace):
    redis_broker.declare_queue(namespace)

    def send(delay=None, **options):
        message = Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options=options)
        return redis_broker.enqueue(message, delay=delay)

    send(), send(priority=4), send(priority=-1), send(delay=60000)
    consumer = redis_broker.consume(namespace, prefetch=2, timeout=50)
    first, second = next(consumer), next(consumer)
    first.fail("tested")
    consumer.nack(first)
    stats = redis_broker.queue_stats()[namespace]
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (1, 1, 1, 1)
    consumer.ack(second)
    consumer.close()
    [dead] = redis_broker.get_dead_letters(namespace)
    assert dead.reason == "tested" and dead.message is not None


def test_an_idle_consumer_wakes_when_a_message_arrives_not_after_polling(redis_url, namespace):
    # Polls are ten minutes apart and next() gives up after 30 s: the message can only reach
    # the consumer through the wake-up (handed to its inbox, or a wake token and one fetch).
    # Without it next() returns None, however fast or slow the machine is.
    broker = make_broker(redis_url, namespace, poll_interval=600_000)
    broker.declare_queue(namespace)
    idle = threading.Event()
    fetched = []
    fetch = broker.service.fetch

    def watched_fetch(*args, **kwargs):
        entries = fetch(*args, **kwargs)
        fetched.append(len(entries))
        if not entries:
            idle.set()
        return entries

    broker.service.fetch = watched_fetch
    got = []
    consumer = broker.consume(namespace, prefetch=1, timeout=30_000)
    reader = threading.Thread(target=lambda: got.append(next(consumer)), daemon=True)
    try:
        reader.start()
        assert idle.wait(30)  # it found nothing and is registered as idle
        broker.enqueue(
            Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
        )
        reader.join(60)
        assert got and got[0] is not None, "the enqueue did not wake the idle consumer"
        assert fetched in ([0], [0, 1]), fetched  # no poll: at most the fetch a token asks for
    finally:
        consumer.close()
        broker.close()
        cleanup(broker, namespace)


def test_a_message_sent_to_an_idle_consumer_is_handed_over_without_a_fetch(redis_broker, namespace):
    redis_broker.declare_queue(namespace)
    client, keys, me = redis_broker.client, redis_broker.keys, redis_broker.broker_id

    def send(i):
        message = Message(queue_name=namespace, actor_name="a", args=(i,), kwargs={}, options={})
        return redis_broker.enqueue(message).options["redis_message_id"]

    consumer = redis_broker.consume(namespace, timeout=10)
    assert next(consumer) is None  # found nothing: registered as idle
    rid = send(1)
    assert client.llen(keys.queue(namespace)) == 0
    assert client.sismember(keys.ack_set(me, namespace), rid)  # as if fetched
    first = next(consumer)
    assert first.args == (1,)
    consumer.ack(first)
    assert next(consumer) is None
    rid = send(2)  # handed over again; closing gives it back
    consumer.close()
    assert client.lrange(keys.queue(namespace), 0, -1) == [rid.encode()]
    assert client.scard(keys.ack_set(me, namespace)) == 0
    assert client.zcard(keys.idle(namespace)) == 0


def test_messages_from_producers_that_do_not_wake_are_polled(redis_url, namespace):
    broker = make_broker(redis_url, namespace, poll_interval=100)
    broker.declare_queue(namespace)
    consumer = broker.consume(namespace, prefetch=1, timeout=50)
    try:
        assert next(consumer) is None
        body = Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
        inject_raw(broker, namespace, body.encode())
        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:
            message = next(consumer)
        assert message is not None
    finally:
        consumer.close()
        broker.close()
        cleanup(broker, namespace)


def test_stopping_a_worker_requeues_prefetched_messages_at_once_and_signs_off(
    redis_broker, worker_factory, namespace
):
    started, release = threading.Event(), threading.Event()

    @nbqueue.actor(queue_name=namespace, broker=redis_broker)
    def block(i):
        started.set()
        release.wait(10)

    block.send_many(range(10))
    worker = worker_factory(redis_broker, worker_threads=1)
    assert started.wait(10)
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 10000})
    stopper.start()
    release.set()
    stopper.join(15)
    stats = redis_broker.queue_stats()[namespace]
    assert (stats.ready, stats.in_flight) == (9, 0)
    client, keys = redis_broker.client, redis_broker.keys
    assert client.scard(keys.ack_set(redis_broker.broker_id, namespace)) == 0
    redis_broker.close()
    assert client.zscore(keys.heartbeats, redis_broker.broker_id) is None


def test_500_malformed_messages_are_dead_lettered_alone_with_reasons(
    redis_broker, worker_factory, namespace, caplog
):
    done = []

    @nbqueue.actor(queue_name=namespace, broker=redis_broker)
    def ok(i):
        done.append(i)

    good = ok.message(0).asdict()
    bodies = {
        "undecodable": [b"\xff\xfe", b"not json", b'{"queue_name": "q"', b"[" * 100000],
        "invalid": [
            json.dumps(x).encode()
            for x in (
                [1, 2],
                "text",
                {**good, "args": 5},
                {**good, "kwargs": []},
                {**good, "options": "x"},
                {**good, "extra": 1},
                {k: v for k, v in good.items() if k != "actor_name"},
            )
        ],
        "unknown_actor": [json.dumps({**good, "actor_name": "nobody"}).encode()],
    }
    variants = [(reason, body) for reason, items in bodies.items() for body in items]
    expected = {}
    ok.send_many(range(500))
    for n in range(500):
        reason, body = variants[n % len(variants)]
        expected[reason] = expected.get(reason, 0) + 1
        inject_raw(redis_broker, namespace, body)
    ok.send_many(range(500, 1000))
    worker = worker_factory(redis_broker, worker_threads=4)
    consumer_thread = worker.consumers[namespace]
    redis_broker.join(namespace, timeout=30000, fail_fast=False)
    worker.join()
    assert sorted(done) == list(range(1000))
    dead = redis_broker.get_dead_letters(namespace)
    counts = {}
    for letter in dead:
        counts[letter.reason] = counts.get(letter.reason, 0) + 1
    assert counts == expected
    assert worker.consumers[namespace] is consumer_thread and consumer_thread.is_alive()
    assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]


def test_ids_without_a_body_are_dropped_with_a_warning(redis_broker, namespace, caplog):
    redis_broker.declare_queue(namespace)
    redis_broker.client.rpush(f"{namespace}:{namespace}", "no-such-id")
    consumer = redis_broker.consume(namespace, timeout=10)
    assert next(consumer) is None
    consumer.close()
    assert "no message stored" in caplog.text
    assert (
        redis_broker.client.scard(redis_broker.keys.ack_set(redis_broker.broker_id, namespace)) == 0
    )


def test_no_persistence_or_an_evicting_policy_is_warned_about_once(namespace, caplog):
    caplog.set_level(logging.WARNING, logger="nbqueue")
    with private_redis() as bare, private_redis("--appendonly", "yes") as durable:
        for _ in range(2):
            broker = RedisBroker(url=bare.url, namespace=namespace)
            broker.declare_queue(namespace)
            broker.queue_stats()
            broker.enqueue(
                Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
            )
            broker.close()
        assert caplog.text.count("has no persistence") == 1
        caplog.clear()
        broker = RedisBroker(url=durable.url, namespace=namespace)
        broker.check_server()
        broker.close()
        assert "persistence" not in caplog.text
    with private_redis(
        "--appendonly", "yes", "--maxmemory-policy", "allkeys-lru", "--rename-command", "CONFIG", ""
    ) as evicting:
        broker = RedisBroker(url=evicting.url, namespace=namespace)
        broker.check_server()
        broker.close()
        assert "maxmemory-policy allkeys-lru" in caplog.text


def test_the_password_never_appears_in_reprs_logs_or_errors(namespace, caplog):
    from nbqueue.rate_limits.backends import RedisBackend as LimitsBackend
    from nbqueue.results.backends import RedisBackend

    caplog.set_level(logging.DEBUG)
    secret = "nbq-CANARY-" + namespace
    with private_redis("--requirepass", secret) as server:
        url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
        broker = nbqueue.connect(url, namespace=namespace)
        results, limits = RedisBackend(url=url), LimitsBackend(url=url)
        broker.declare_queue(namespace)
        broker.enqueue(
            Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
        )
        texts = [repr(broker), str(broker), repr(results), repr(limits), caplog.text]
        assert ":***@" in repr(broker)
        wrong = RedisBroker(
            url=f"redis://:{secret}x@127.0.0.1:{server.port}/0", namespace=namespace
        )
        with pytest.raises(ConnectionFailed, match="refused the credentials") as refused:
            wrong.queue_stats()
        nowhere = RedisBroker(url=f"redis://:{secret}@127.0.0.1:1/0", namespace=namespace)
        with pytest.raises(ConnectionFailed, match="Could not connect") as unreachable:
            nowhere.queue_stats()
        texts += [str(refused.value), str(unreachable.value), repr(wrong), caplog.text]
        for backend in (broker, wrong, nowhere, results, limits):
            backend.close()
    for text in texts:
        assert secret not in text


def test_a_broker_s_calls_have_deadlines_of_three_seconds_unless_configured(namespace):
    broker = RedisBroker(url="redis://127.0.0.1:1/0", namespace=namespace)
    options = broker.client.connection_pool.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (3.0, 3.0)
    assert options["retry_on_timeout"] is False
    assert broker.connection.block_limit < options["socket_timeout"]  # BLPOP stays below it
    broker.close()


def test_a_hung_redis_fails_a_call_once_at_its_deadline_with_a_clear_error(namespace):
    # A paused server fails a call within one socket timeout: the error names the configured
    # deadline, and the call is not retried on a new connection (a retry would wait once more).
    # Both are counted, not timed; a call that hung for good would be stopped by pytest-timeout.
    with private_redis() as server:
        broker = RedisBroker(url=server.url, namespace=namespace, socket_timeout=0.5)
        broker.declare_queue(namespace)
        message = Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
        broker.enqueue(message)
        observer = redis.Redis(port=server.port)
        connections = observer.info("stats")["total_connections_received"]
        server.pause()
        try:
            with pytest.raises(
                ConnectionClosed, match=r"did not answer within 0\.5 s .* not paused"
            ):
                broker.enqueue(message)
        finally:
            server.signal(signal.SIGCONT)
        # The server accepts what queued up while it was stopped before it answers this PING;
        # INFO then counts every connection the broker opened meanwhile.
        observer.ping()
        assert observer.info("stats")["total_connections_received"] == connections
        broker.enqueue(message)
        assert broker.queue_stats()[namespace].ready >= 2
        broker.close()
        observer.close()


def test_connect_builds_a_redis_broker_from_a_url(redis_url, namespace):
    broker = nbqueue.connect(redis_url, namespace=namespace)
    try:
        assert isinstance(broker, RedisBroker) and nbqueue.get_broker() is broker
        assert broker.namespace == namespace
    finally:
        broker.close()


def test_a_missing_redis_package_names_the_extra(monkeypatch, redis_url):
    from nbqueue.connection import broker_from_url
    from nbqueue.errors import BrokerUnavailable

    for name in [
        m for m in sys.modules if m.startswith(("nbqueue._redis", "nbqueue.brokers.redis"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'nbqueue\[redis\]'"):
        import nbqueue.brokers.redis  # noqa: F401
    with pytest.raises(BrokerUnavailable, match=r"pip install 'nbqueue\[redis\]'"):
        broker_from_url(redis_url)


def test_the_mission_s_redis_examples_run_unchanged(redis_url, namespace, worker_factory):
    from nbqueue.results import Results
    from nbqueue.results.backends import RedisBackend

    # Building a broker connects to nothing, so these run as written.
    RedisBroker(host="localhost", port=6379, db=0).close()
    RedisBroker(
        url="redis://:password@localhost:6379/0",
        namespace="dramatiq",
        connection_pool_kwargs={"max_connections": 20},
    ).close()

    # The results example, on the test database instead of db 0.
    broker = RedisBroker(
        url=redis_url, namespace=namespace, connection_pool_kwargs={"max_connections": 4}
    )
    backend = RedisBackend(url=redis_url, namespace=namespace, use_namespace_prefix_keys=True)
    broker.add_middleware(Results(backend=backend))
    nbqueue.set_broker(broker)
    try:

        @nbqueue.actor(queue_name=namespace, store_results=True)
        def calculate(x, y):
            return x + y

        @nbqueue.actor(queue_name=f"{namespace}-other")
        def other():
            pass

        worker = worker_factory(broker, worker_threads=8)  # more threads than connections
        message = calculate.send(5, 3)
        assert backend.get_result(message, block=True, timeout=5000) == 8
        results = [calculate.send(i, i) for i in range(50)]
        assert [m.get_result(block=True, timeout=10000) for m in results] == [
            2 * i for i in range(50)
        ]
        worker.stop()
    finally:
        broker.close()
        backend.close()
        cleanup(broker, namespace)


def test_a_window_held_by_long_jobs_still_fills_idle_threads(
    redis_broker, namespace, worker_factory, monkeypatch
):
    # With the prefetch at the thread count, five long jobs hold more than half the window;
    # three more messages must still reach the three idle threads without waiting for them.
    monkeypatch.setattr(nbqueue.worker, "QUEUE_PREFETCH", 8)
    meeting = threading.Barrier(8, timeout=15)
    started = threading.Semaphore(0)

    @nbqueue.actor(queue_name=namespace, broker=redis_broker, max_retries=0)
    def meet():
        started.release()
        meeting.wait()

    worker = worker_factory(redis_broker, worker_threads=8)
    assert worker.queue_prefetch == 8
    for _ in range(5):
        meet.send()
    for _ in range(5):
        assert started.acquire(timeout=10)
    for _ in range(3):
        meet.send()
    redis_broker.join(namespace, timeout=20000)
    worker.join()
    assert not meeting.broken
