"""Message size limits: a send above ``max_message_size`` raises before any I/O, and a body above
it found on a queue is dead-lettered ``too_large`` unread, on every broker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import nbqueue
from nbqueue import Message
from nbqueue.brokers.rabbitmq import RabbitmqBroker
from nbqueue.brokers.redis import RedisBroker
from nbqueue.brokers.stub import StubBroker
from nbqueue.errors import EncodeError, MessageTooLarge
from nbqueue.message import DEFAULT_MAX_MESSAGE_SIZE


def wrote_nothing(broker: nbqueue.Broker, namespace: str) -> bool:
    """Whether the broker's server saw nothing of this test: no key, no connection."""
    if isinstance(broker, RedisBroker):
        return not list(broker.client.scan_iter(match=f"{namespace}*"))
    if isinstance(broker, RabbitmqBroker):
        return broker._publisher is None
    stats = broker.queue_stats()[namespace]
    return stats.ready == stats.delayed == 0


def encoded_size(broker: Any, send: Callable[[], object]) -> int:
    """The size ``send()`` encodes to on this broker, read from the error of a 1-byte limit."""
    broker.max_message_size = 1
    with pytest.raises(MessageTooLarge) as info:
        send()
    return info.value.size


def test_a_send_exactly_at_the_limit_goes_and_one_byte_more_raises_before_any_io(broker, namespace):
    @nbqueue.actor(queue_name=namespace, actor_name="echo", broker=broker)
    def echo(blob):
        pass

    size = encoded_size(broker, lambda: echo.send("x" * 1000))
    assert size > 1000
    broker.max_message_size = size - 1
    with pytest.raises(MessageTooLarge) as info:
        echo.send("x" * 1000)
    with pytest.raises(MessageTooLarge):
        echo.send_with_options(args=("x" * 1000,), delay=10)
    assert wrote_nothing(broker, namespace)
    error = info.value
    assert isinstance(error, ValueError) and isinstance(error, EncodeError)
    assert (error.actor_name, error.size, error.limit) == ("echo", size, size - 1)
    text = str(error)
    assert "'echo'" in text and f"{size} bytes" in text and f"{size - 1} bytes" in text
    assert "by reference" in text and "max_message_size" in text

    broker.max_message_size = size
    echo.send("x" * 1000)
    assert broker.queue_stats()[namespace].ready == 1


def test_send_many_with_one_oversized_message_enqueues_none_of_the_batch(broker, namespace):
    @nbqueue.actor(queue_name=namespace, actor_name="echo", broker=broker)
    def echo(blob):
        pass

    broker.max_message_size = 4096
    with pytest.raises(MessageTooLarge, match="'echo'"):
        echo.send_many([("a",), ("b",), ("x" * 5000,), ("c",)])
    assert wrote_nothing(broker, namespace)
    echo.send_many([("a",), ("b",)])
    assert broker.queue_stats()[namespace].ready == 2


class EnqueueHooks(nbqueue.Middleware):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def before_enqueue(self, broker, message, delay):
        self.calls.append(("before", message.args[0][:1]))

    def after_enqueue(self, broker, message, delay):
        self.calls.append(("after", message.args[0][:1]))


def test_before_hooks_run_up_to_the_oversized_message_and_no_after_hook_runs(broker, namespace):
    hooks = EnqueueHooks()
    broker.add_middleware(hooks)

    @nbqueue.actor(queue_name=namespace, actor_name="echo", broker=broker)
    def echo(blob):
        pass

    broker.max_message_size = 4096
    with pytest.raises(MessageTooLarge):
        echo.send("x" * 5000)
    assert hooks.calls == [("before", "x")]  # the hook may change the message: it runs first
    hooks.calls.clear()
    with pytest.raises(MessageTooLarge):
        echo.send_many([("a",), ("y" * 5000,), ("b",)])
    assert hooks.calls == [("before", "a"), ("before", "y")]
    assert wrote_nothing(broker, namespace)


def test_an_injected_oversized_body_is_dead_lettered_too_large_and_strands_nothing(
    broker, worker_factory, namespace, inject_raw
):
    done = []

    @nbqueue.actor(queue_name=namespace, actor_name="echo", broker=broker)
    def echo(blob):
        done.append(len(blob))

    limit = 64 * 1024
    broker.max_message_size = limit
    # a body of exactly `limit` bytes runs
    n = limit - len(Message.encode(echo.message("")))
    fits = Message.encode(echo.message("y" * n))
    oversized = Message.encode(echo.message("x" * (limit + 1)))
    assert len(fits) == limit and len(oversized) > limit
    echo.send("a")
    inject_raw(broker, namespace, oversized)
    inject_raw(broker, namespace, fits)
    echo.send("b")
    worker = worker_factory(broker)
    broker.join(namespace, timeout=10000, fail_fast=False)
    assert sorted(done) == [1, 1, n]
    [dead] = broker.get_dead_letters(namespace)
    assert dead.reason == "too_large"
    assert dead.data == oversized
    assert f"{len(oversized)} bytes" in (dead.error or "")
    assert worker.consumers[namespace].is_alive()
    echo.send("c")  # the worker keeps running
    broker.join(namespace, timeout=10000, fail_fast=False)
    assert len(done) == 4


@pytest.mark.redis
def test_a_redis_consumer_dead_letters_a_message_a_laxer_producer_handed_it(
    redis_url, namespace, worker_factory
):
    # With a consumer idle, an nbqueue producer hands the body straight to its inbox, past
    # fetch.lua's length check: the consumer checks the length again before decoding.
    consumer = RedisBroker(url=redis_url, namespace=namespace, max_message_size=4096)
    producer = RedisBroker(url=redis_url, namespace=namespace, max_message_size=None)
    try:
        done = []
        for broker in (consumer, producer):

            @nbqueue.actor(queue_name=namespace, actor_name="echo", broker=broker)
            def echo(blob):
                done.append(len(blob))

        worker = worker_factory(consumer)
        producer.get_actor("echo").send("a")
        consumer.join(namespace, timeout=10000)
        producer.get_actor("echo").send("x" * 5000)
        producer.get_actor("echo").send("b")
        consumer.join(namespace, timeout=10000, fail_fast=False)
        assert done == [1, 1]
        [dead] = consumer.get_dead_letters(namespace)
        assert dead.reason == "too_large"
        assert worker.consumers[namespace].is_alive()
    finally:
        producer.close()
        consumer.close()
        from tests.brokers._redis import delete_namespace

        delete_namespace(consumer.client, namespace)


def test_the_limit_defaults_to_16_mib_and_the_environment_overrides_it(monkeypatch):
    monkeypatch.delenv("NBQUEUE_MAX_MESSAGE_SIZE", raising=False)
    assert StubBroker().max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 16 << 20
    for value, expected in (("1048576", 1 << 20), ("2M", 2 << 20), ("64KiB", 64 << 10)):
        monkeypatch.setenv("NBQUEUE_MAX_MESSAGE_SIZE", value)
        assert StubBroker().max_message_size == expected
        # neither connects until first used
        assert RedisBroker(url="redis://127.0.0.1:1/0").max_message_size == expected
        assert RabbitmqBroker(url="amqp://127.0.0.1:1/").max_message_size == expected
    for off in ("0", "none"):
        monkeypatch.setenv("NBQUEUE_MAX_MESSAGE_SIZE", off)
        assert StubBroker().max_message_size is None
    monkeypatch.setenv("NBQUEUE_MAX_MESSAGE_SIZE", "2M")
    assert StubBroker(max_message_size=100).max_message_size == 100  # the argument wins
    assert StubBroker(max_message_size=None).max_message_size is None
    assert StubBroker(max_message_size=0).max_message_size is None
    monkeypatch.setenv("NBQUEUE_MAX_MESSAGE_SIZE", "lots")
    with pytest.raises(ValueError, match="NBQUEUE_MAX_MESSAGE_SIZE='lots' is not a size"):
        StubBroker()
    with pytest.raises(ValueError, match="max_message_size must be a number of bytes"):
        StubBroker(max_message_size=-1)


def test_no_limit_sends_and_runs_a_large_message(stub_broker, stub_worker):
    stub_broker.max_message_size = None
    sizes = []

    @nbqueue.actor(broker=stub_broker)
    def big(blob):
        sizes.append(len(blob))

    big.send("x" * (DEFAULT_MAX_MESSAGE_SIZE + 1))
    stub_broker.join(big.queue_name, timeout=10000)
    assert sizes == [DEFAULT_MAX_MESSAGE_SIZE + 1]


@pytest.mark.redis
def test_a_redis_fetch_leaves_an_oversized_body_in_redis_and_returns_its_size(redis_url, namespace):
    from tests.brokers._redis import delete_namespace, inject_raw

    broker = RedisBroker(url=redis_url, namespace=namespace, max_message_size=1000)
    try:
        broker.declare_queue(namespace)
        rid = inject_raw(broker, namespace, b"z" * 5000)
        consumer: Any = broker.consume(namespace, timeout=100)
        try:
            entries = broker.service.fetch(namespace, 10, consumer._fetch_keys)
            assert entries == [(rid, 5000)]  # the size alone: the body stayed in Redis
        finally:
            consumer.close()
    finally:
        broker.close()
        delete_namespace(broker.client, namespace)


def test_a_retry_pushed_over_the_limit_by_its_traceback_is_dead_lettered_not_lost(
    broker, worker_factory, namespace
):
    runs = []

    @nbqueue.actor(queue_name=namespace, actor_name="flaky", broker=broker, min_backoff=10)
    def flaky(blob):
        runs.append(1)
        raise RuntimeError("fails once, but its retry would not fit")

    size = encoded_size(broker, lambda: flaky.send("x" * 1000))
    broker.max_message_size = size + 20  # the retry adds a traceback of far more
    flaky.send("x" * 1000)
    worker_factory(broker)
    broker.join(namespace, timeout=10000, fail_fast=False)
    assert runs == [1]
    [dead] = broker.get_dead_letters(namespace)
    assert dead.reason == "too_large"
