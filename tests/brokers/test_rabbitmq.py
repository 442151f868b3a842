"""Behaviour specific to the RabbitMQ broker, on a real server (no mocks)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import dramatiq
import pika
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker as DramatiqRabbitmqBroker

import nbqueue
from nbqueue.brokers.rabbitmq import RabbitmqBroker
from nbqueue.errors import (
    BrokerConnectionError,
    BrokerError,
    ConnectionFailed,
    PublishNacked,
    PublishUnroutable,
)
from tests._ports import free_port
from tests.brokers import _rabbitmq
from tests.brokers.recording import Enqueued

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def rabbit(rabbitmq_url, namespace):
    """Make RabbitMQ brokers for this test; their queues are deleted at teardown."""
    made = []

    def make(**options):
        options.setdefault("max_priority", 10)
        broker = RabbitmqBroker(url=rabbitmq_url, **options)
        broker.emit_after("process_boot")
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()
    _rabbitmq.delete_queues(
        pika.URLParameters(rabbitmq_url),
        [namespace, f"{namespace}-a", f"{namespace}-b", f"{namespace}-nack"],
    )


def refusing_queue(url, name, length):
    """Declare ``name`` holding at most ``length`` messages and refusing (nacking) the next."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(
            name, arguments={"x-max-length": length, "x-overflow": "reject-publish"}
        )
    finally:
        connection.close()
    return name


def _dramatiq_broker(url, **options):
    broker = DramatiqRabbitmqBroker(url=url, **options)
    return broker


@pytest.mark.parametrize("max_priority", [None, 10])
def test_queue_arguments_are_identical_to_dramatiqs_in_both_orders(
    rabbit, rabbitmq_url, namespace, max_priority
):
    first, second = f"{namespace}-a", f"{namespace}-b"
    ours = rabbit(max_priority=max_priority)
    theirs = _dramatiq_broker(rabbitmq_url, max_priority=max_priority, confirm_delivery=True)
    try:
        # Dramatiq declares first, then nbqueue: a difference would be a 406 here.
        theirs.declare_queue(first, ensure=True)
        ours.declare_queue(first)
        ours._ensure(first)
        # nbqueue first, then Dramatiq.
        ours.declare_queue(second)
        ours._ensure(second)
        theirs.declare_queue(second, ensure=True)
        assert theirs.get_queue_message_counts(second) == (0, 0, 0)
    finally:
        theirs.close()


def test_a_priority_mismatch_with_existing_queues_says_what_to_do(rabbit, rabbitmq_url, namespace):
    theirs = _dramatiq_broker(rabbitmq_url)
    try:
        theirs.declare_queue(namespace, ensure=True)
    finally:
        theirs.close()
    ours = rabbit(max_priority=10)
    with pytest.raises(BrokerError, match="same max_priority"):
        ours.declare_queue(namespace)
        ours._ensure(namespace)


def test_messages_are_published_as_dramatiq_publishes_them(rabbit, rabbitmq_url, namespace):
    broker = rabbit()

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def add(x, y):
        return x + y

    sent = add.send_with_options(args=(1, 2), priority=3)
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        method, properties, body = connection.channel().basic_get(namespace, auto_ack=True)
    finally:
        connection.close()
    assert method.exchange == "" and method.routing_key == namespace
    assert properties.delivery_mode == 2
    assert properties.priority == 3
    assert properties.headers is None and properties.content_type is None
    assert json.loads(body) == sent.asdict() | {"args": [1, 2]}


def test_larger_priorities_are_delivered_first_with_max_priority(
    rabbit, namespace, worker_factory, monkeypatch
):
    monkeypatch.setattr(nbqueue.worker, "QUEUE_PREFETCH", 1)
    broker = rabbit(max_priority=10)
    order = []

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def record(p):
        order.append(p)

    for p in [3, 0, 9, 5, 1, 7]:
        record.send_with_options(args=(p,), priority=p)
    record.send_with_options(args=(10,), broker_priority=10)  # Dramatiq's option works too
    worker = worker_factory(broker, worker_threads=1)
    broker.join(namespace, timeout=10000)
    worker.join()
    assert order == [10, 9, 7, 5, 3, 1, 0]


def test_priorities_without_max_priority_log_one_warning(rabbit, namespace, caplog):
    broker = rabbit(max_priority=None)

    @nbqueue.actor(queue_name=namespace, broker=broker, priority=5)
    def urgent():
        pass

    with caplog.at_level(logging.WARNING, logger="nbqueue.broker.RabbitmqBroker"):
        urgent.send()
        urgent.send()
    warnings = [r for r in caplog.records if "max_priority" in r.getMessage()]
    assert len(warnings) == 1
    assert "FIFO" in warnings[0].getMessage()


def test_send_returns_after_the_confirm_and_bulk_sends_are_confirmed_together(rabbit, namespace):
    broker = rabbit()

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def work(i):
        pass

    work.send(0)
    assert broker.queue_stats()[namespace].ready == 1
    sent = work.send_many(range(2000))
    assert len(sent) == 2000
    assert broker.queue_stats()[namespace].ready == 2001


def test_concurrent_senders_all_get_their_confirms(rabbit, namespace):
    broker = rabbit()

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def work(i):
        pass

    errors = []

    def send(n):
        try:
            for i in range(n):
                work.send(i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(100,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert broker.queue_stats()[namespace].ready == 800


def test_a_deleted_queue_is_declared_again_on_send(rabbit, rabbitmq_url, namespace):
    broker = rabbit()

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def work():
        pass

    work.send()
    _rabbitmq.delete_queues(pika.URLParameters(rabbitmq_url), [namespace])
    work.send()
    assert broker.queue_stats()[namespace].ready == 1


def test_an_unroutable_publish_raises_its_own_error(rabbit, namespace):
    broker = rabbit()
    with pytest.raises(PublishUnroutable, match="no such queue"):
        broker._republish(b"{}", pika.BasicProperties(delivery_mode=2), f"{namespace}-missing")


def test_a_nacked_publish_raises_its_own_error(rabbit, rabbitmq_url, namespace):
    name = refusing_queue(rabbitmq_url, f"{namespace}-nack", 0)
    broker = rabbit()
    with pytest.raises(PublishNacked, match="not enqueued"):
        broker._republish(b"{}", pika.BasicProperties(delivery_mode=2), name)


def test_a_stopped_server_gives_a_clear_error_once_the_connection_attempts_are_spent(
    namespace, caplog
):
    # What bounds the wait: three attempts half a second apart, each with short socket and
    # handshake timeouts, inside confirm_timeout (5 s) for the call. Here the call's deadline
    # is far away, so the error can only come from the attempts giving up, however slow the
    # machine; a connection that retried forever would be stopped by pytest-timeout.
    port = free_port()  # nothing listens there
    default = RabbitmqBroker(url=f"amqp://guest:guest@127.0.0.1:{port}/%2F")
    [params] = default._params
    assert (params.connection_attempts, params.retry_delay) == (3, 0.5)
    assert (params.socket_timeout, params.stack_timeout) == (2.0, 4.0)
    assert default.confirm_timeout == 5000
    broker = RabbitmqBroker(url=f"amqp://guest:guest@127.0.0.1:{port}/%2F", confirm_timeout=50_000)
    try:
        with pytest.raises(
            ConnectionFailed,
            match=rf"Could not connect to RabbitMQ at \S*127\.0\.0\.1:{port}.* check that the server",
        ):
            broker.declare_queue(namespace)
            broker.enqueue(nbqueue.Message(namespace, "a", (), {}, {}))
        attempts = [r for r in caplog.records if "TCP Connection attempt failed" in r.getMessage()]
        assert len(attempts) == 3
    finally:
        broker.close()
        default.close()


def test_a_hung_server_fails_a_call_at_the_configured_deadline(namespace):
    # A socket that accepts connections and never answers: each connection attempt waits for
    # its 4 s handshake timeout, so a call can only fail within half a second through its own
    # deadline, which the error names.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        broker = RabbitmqBroker(url=f"amqp://guest:guest@127.0.0.1:{port}/%2F", confirm_timeout=500)
        try:
            with pytest.raises(ConnectionFailed, match=r"did not answer within 0\.5 s"):
                broker.declare_queue(namespace, ensure=True)
        finally:
            broker.close()


def test_passwords_stay_out_of_reprs_logs_and_errors(namespace, rabbitmq_url, caplog):
    canary = "nbq-CANARY-s3cr3t"
    port = free_port()
    urls = f"amqp://guest:{canary}@127.0.0.1:{port}/%2F;amqp://bob:{canary}@127.0.0.1:{port}/%2F"
    caplog.set_level(logging.DEBUG)
    broker = RabbitmqBroker(url=urls)
    try:
        assert canary not in repr(broker) and "***" in repr(broker)
        with pytest.raises(BrokerConnectionError) as info:
            broker.enqueue(nbqueue.Message(namespace, "a", (), {}, {}))
        text = "".join([str(info.value), repr(info.value), str(info.value.__cause__)])
        assert canary not in text
        # A wrong password on the real server.
        good = rabbitmq_url.replace("guest:guest", f"guest:{canary}")
        wrong = RabbitmqBroker(url=good)
        with pytest.raises(BrokerConnectionError) as info:
            wrong.enqueue(nbqueue.Message(namespace, "a", (), {}, {}))
        wrong.close()
        assert canary not in str(info.value) and info.value.__cause__ is None
    finally:
        broker.close()
    assert canary not in caplog.text


def test_a_url_list_fails_over_to_the_next_server(rabbitmq_url, namespace):
    port = free_port()
    broker = RabbitmqBroker(url=[f"amqp://guest:guest@127.0.0.1:{port}/%2F", rabbitmq_url])
    try:
        broker.declare_queue(namespace)
        broker.enqueue(nbqueue.Message(namespace, "a", (), {}, {}))
        assert broker.queue_stats()[namespace].ready == 1
    finally:
        broker.close()
        _rabbitmq.delete_queues(pika.URLParameters(rabbitmq_url), [namespace])


def test_connect_routes_amqp_urls_here(rabbitmq_url):
    broker = nbqueue.connect(rabbitmq_url)
    try:
        assert isinstance(broker, RabbitmqBroker)
        assert nbqueue.get_broker() is broker
    finally:
        broker.close()


def test_malformed_messages_among_valid_ones_are_dead_lettered_alone(
    rabbit, namespace, worker_factory
):
    broker = rabbit()
    done = []
    lock = threading.Lock()

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def ok(i):
        with lock:
            done.append(i)

    bad = {
        b"\xff\xfe": "undecodable",
        b"not json": "undecodable",
        b'{"queue_name": "q"': "undecodable",
        b"[1, 2]": "invalid",
        b"42": "invalid",
        json.dumps({"actor_name": "ok", "args": 5}).encode(): "invalid",
        json.dumps(
            {"queue_name": namespace, "actor_name": "ok", "args": [], "kwargs": [], "options": {}}
        ).encode(): "invalid",
        json.dumps(
            {
                "queue_name": namespace,
                "actor_name": "ok",
                "args": [],
                "kwargs": {},
                "options": {},
                "extra": 1,
            }
        ).encode(): "invalid",
    }
    bodies = list(bad)
    for i in range(200):
        ok.send(i)
        if i % 25 == 0:
            _rabbitmq.inject_raw(broker, namespace, bodies[i // 25])
    worker = worker_factory(broker, worker_threads=4)
    broker.join(namespace, timeout=20000)
    worker.join()
    assert sorted(done) == list(range(200))
    letters = broker.get_dead_letters(namespace)
    assert {letter.data: letter.reason for letter in letters} == bad
    assert all(letter.error for letter in letters)
    assert worker.consumers[namespace].is_alive()


def test_dead_letters_can_be_read_twice_and_stay_counted(rabbit, namespace, worker_factory):
    broker = rabbit()

    @nbqueue.actor(queue_name=namespace, broker=broker, max_retries=0)
    def fails(i):
        raise ValueError(f"bad {i}")

    for i in range(3):
        fails.send(i)
    worker = worker_factory(broker)
    broker.join(namespace, timeout=10000)
    worker.join()
    first = broker.get_dead_letters(namespace)
    second = broker.get_dead_letters(namespace)
    assert [d.message.args for d in first] == [d.message.args for d in second]
    assert sorted(d.message.args[0] for d in first) == [0, 1, 2]
    assert {d.reason for d in first} == {"retries_exhausted"}
    assert all("ValueError: bad" in d.error for d in first)
    assert broker.queue_stats()[namespace].dead == 3
    with pytest.raises(ValueError, match="bad"):
        broker.join(namespace, timeout=1000, fail_fast=True)


def test_queue_stats_cost_three_declarations_per_queue_on_one_open_connection(
    rabbit, namespace, monkeypatch
):
    # What makes them cheap enough for two updates a second: no connection or channel is
    # opened per call, and each count is one passive declaration (one round trip) on the
    # publisher's admin channel.
    broker = rabbit()
    names = [namespace] + [f"{namespace}-{i}" for i in range(1, 5)]
    for name in names:
        broker.declare_queue(name, ensure=True)
    try:
        broker.queue_stats()
        publisher = broker.publisher
        connection, admin = publisher.connection, publisher._admin
        operations = []
        run = broker._run

        def counted(fn):
            operations.append(fn)
            return run(fn)

        monkeypatch.setattr(broker, "_run", counted)
        for _ in range(10):
            stats = broker.queue_stats()
        assert sorted(stats) == sorted(names)
        assert len(operations) == 10 * 3 * len(names)
        assert broker.publisher is publisher
        assert (publisher.connection, publisher._admin) == (connection, admin)
    finally:
        broker.close()
        _rabbitmq.delete_queues(broker._params, names[1:])


def test_heartbeats_flow_while_an_actor_runs(rabbitmq_url, namespace, worker_factory):
    # The server drops a connection that misses two heartbeats: 2 s here, while the actor
    # runs 4 s. The consumer's I/O thread keeps answering, so the message runs once.
    broker = RabbitmqBroker(url=rabbitmq_url + "?heartbeat=1")
    broker.emit_after("process_boot")
    runs = []

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def slow():
        runs.append(1)
        time.sleep(4)

    try:
        slow.send()
        worker = worker_factory(broker, worker_threads=1)
        broker.join(namespace, timeout=20000)
        worker.join()
        assert len(runs) == 1
    finally:
        broker.close()
        _rabbitmq.delete_queues(pika.URLParameters(rabbitmq_url), [namespace])


def test_dramatiq_can_read_what_a_bulk_send_published(rabbit, rabbitmq_url, namespace):
    broker = rabbit()

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def add(x, y):
        return x + y

    add.send_many([(i, i) for i in range(10)])
    theirs = _dramatiq_broker(rabbitmq_url, max_priority=10)
    try:
        consumer = theirs.consume(namespace, prefetch=10, timeout=2000)
        got = [next(consumer) for _ in range(10)]
        for message in got:
            consumer.ack(message)
        consumer.close()
    finally:
        theirs.close()
    assert sorted(m.args for m in got) == [(i, i) for i in range(10)]
    assert all(isinstance(m._message, dramatiq.Message) for m in got)


def test_the_constructors_users_write_do_not_connect_until_used():
    # from the seed's examples: nothing here may touch the network
    by_host = RabbitmqBroker(host="localhost", port=5672)
    by_url = RabbitmqBroker(
        url="amqp://user:password@localhost:5672/vhost",
        confirm_delivery=True,
        connection_attempts=5,
        max_priority=10,
        middleware=[nbqueue.middleware.AgeLimit(), nbqueue.middleware.Retries()],
    )
    assert repr(by_host) == "RabbitmqBroker('localhost:5672')"
    assert "password" not in repr(by_url) and "vhost" in repr(by_url)
    assert by_url._params[0].connection_attempts == 5
    with pytest.raises(ValueError, match="not both"):
        RabbitmqBroker(url="amqp://localhost", host="localhost")
    with pytest.raises(ValueError, match="max_priority"):
        RabbitmqBroker(max_priority=0)


def test_dramatiq_style_helpers_declare_and_count(rabbit, namespace):
    broker = rabbit()
    broker.declare_queue(namespace, ensure=True)
    broker.enqueue(nbqueue.Message(namespace, "a", (), {}, {}))
    broker.enqueue(nbqueue.Message(namespace, "a", (), {}, {}), delay=60000)
    assert broker.get_queue_message_counts(namespace) == (1, 1, 0)
    broker.flush(namespace)
    assert broker.get_queue_message_counts(namespace) == (0, 0, 0)


def test_a_partly_refused_bulk_send_names_every_message_not_enqueued(
    rabbit, rabbitmq_url, namespace
):
    name = refusing_queue(rabbitmq_url, f"{namespace}-nack", 5)
    broker = rabbit()
    broker._ensured.add(name)  # a queue of its own making: do not declare Dramatiq's arguments
    messages = [nbqueue.Message(name, "a", (i,), {}, {}) for i in range(10)]
    with pytest.raises(PublishNacked, match="5 of 10 messages") as info:
        broker.enqueue_many(messages)
    assert sorted(m.args[0] for m in info.value.messages) == [5, 6, 7, 8, 9]


def test_connection_and_channel_are_each_threads_own_and_declare_queues_of_ones_own(
    rabbit, namespace
):
    # Dramatiq users check the server with broker.connection and declare extra queues with
    # broker.channel; nbqueue's own I/O never uses these.
    broker = rabbit()
    extra = f"{namespace}-extra"
    connection = broker.connection
    assert connection.is_open and broker.connection is connection
    channel = broker.channel
    assert channel.is_open and broker.channel is channel and channel.connection is connection
    try:
        channel.queue_declare(extra, durable=True)
        channel.basic_publish("", extra, b"hello", mandatory=True)  # confirmed: it is there
        _method, _properties, body = channel.basic_get(extra, auto_ack=True)
        assert body == b"hello"

        other: dict[str, object] = {}

        def use_from_another_thread():
            other["connection"], other["channel"] = broker.connection, broker.channel

        thread = threading.Thread(target=use_from_another_thread)
        thread.start()
        thread.join(30)
        assert other["connection"] is not connection and other["channel"] is not channel

        # A channel the server closed (a refused re-declaration) is replaced on next access.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            broker.channel.queue_declare(extra, durable=False)
        assert broker.channel is not channel and broker.channel.is_open

        del broker.channel
        del broker.connection
        assert not connection.is_open
        assert broker.connection is not connection
    finally:
        broker.channel.queue_delete(extra)
    broker.close()
    assert not other["connection"].is_open  # type: ignore[attr-defined]
    assert not broker._blocking._open
    assert broker.connection.is_open  # a closed broker opens a new one when asked
    broker.close()


def test_an_unreachable_server_fails_broker_connection_without_the_password(namespace):
    canary = "nbq-CANARY-s3cr3t"
    port = free_port()  # nothing listens there
    broker = RabbitmqBroker(url=f"amqp://guest:{canary}@127.0.0.1:{port}/%2F")
    try:
        with pytest.raises(ConnectionFailed, match=r"Could not connect to RabbitMQ") as info:
            broker.connection  # noqa: B018 - the property connects
        assert canary not in str(info.value) and info.value.__cause__ is None
        with pytest.raises(ConnectionFailed):
            broker.channel  # noqa: B018
    finally:
        broker.close()


def test_pipelined_sends_return_before_their_confirms_and_the_block_waits_for_all(
    rabbit, namespace
):
    broker = rabbit()
    recorder = Enqueued()
    broker.add_middleware(recorder)
    broker.declare_queue(namespace, ensure=True)
    with broker.pipelined():
        for i in range(200):
            broker.enqueue(nbqueue.Message(namespace, "a", (i,), {}, {}))
        with broker.pipelined():  # nested: ends with the outer block
            broker.enqueue_many([nbqueue.Message(namespace, "a", (i,), {}, {}) for i in (200, 201)])
        # Handed to the I/O thread, not yet confirmed: no hook has run.
        assert recorder.seen == []
    assert recorder.seen == list(range(202))  # all confirmed, hooks in the order of the sends
    assert broker.get_queue_message_counts(namespace) == (202, 0, 0)
    broker.enqueue(nbqueue.Message(namespace, "a", (202,), {}, {}))  # outside: confirmed at once
    assert recorder.seen[-1] == 202


def test_a_pipelined_block_names_every_send_that_was_refused(rabbit, rabbitmq_url, namespace):
    name = refusing_queue(rabbitmq_url, f"{namespace}-nack", 5)
    broker = rabbit()
    recorder = Enqueued()
    broker.add_middleware(recorder)
    broker._ensured.add(name)  # a queue of its own making: do not declare Dramatiq's arguments
    with pytest.raises(PublishNacked, match="5 of 10 messages") as info:
        with broker.pipelined():
            for i in range(10):
                broker.enqueue(nbqueue.Message(name, "a", (i,), {}, {}))
    assert sorted(m.args[0] for m in info.value.messages) == [5, 6, 7, 8, 9]
    assert recorder.seen == [0, 1, 2, 3, 4]


def test_an_error_in_a_pipelined_block_wins_and_the_sends_before_it_are_settled(rabbit, namespace):
    broker = rabbit()
    recorder = Enqueued()
    broker.add_middleware(recorder)
    broker.declare_queue(namespace, ensure=True)
    with pytest.raises(KeyError):
        with broker.pipelined():
            for i in range(3):
                broker.enqueue(nbqueue.Message(namespace, "a", (i,), {}, {}))
            raise KeyError("in the block")
    assert recorder.seen == [0, 1, 2]
    assert broker.get_queue_message_counts(namespace) == (3, 0, 0)
