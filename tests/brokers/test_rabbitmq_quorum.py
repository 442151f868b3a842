"""Quorum queues on the shared RabbitMQ server (``queue_type="quorum"``), with queue names of
the test's own; the cluster and its failover are in ``tests/reliability/test_rabbitmq_cluster.py``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

import nbqueue
from nbqueue.brokers.rabbitmq import RabbitmqBroker
from nbqueue.cli import ExitCode, main, parse_options
from nbqueue.errors import BrokerError
from tests.brokers import _rabbitmq
from tests.brokers._redis import wait_until

pytestmark = pytest.mark.rabbitmq

Make = Callable[..., RabbitmqBroker]


@pytest.fixture
def rabbit(rabbitmq_url: str, namespace: str) -> Iterator[Make]:
    """Make brokers on the shared server; the test's queues (and only those) are deleted."""
    made: list[RabbitmqBroker] = []

    def make(url: str | None = None, **options: Any) -> RabbitmqBroker:
        broker = RabbitmqBroker(url=url or rabbitmq_url, **options)
        broker.emit_after("process_boot")
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()
    _rabbitmq.delete_queues(pika.URLParameters(rabbitmq_url), [namespace])


def declare_raw(url: str, name: str, arguments: dict[str, Any]) -> None:
    """Declare a queue with pika itself; raises pika's ChannelClosedByBroker on a 406."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(name, durable=True, arguments=arguments)
    finally:
        connection.close()


def test_quorum_queues_carry_the_quorum_type_and_only_arguments_quorum_accepts(
    rabbit: Make, rabbitmq_url: str, namespace: str, worker_factory: Any
) -> None:
    broker = rabbit(queue_type="quorum", delivery_limit=7)
    done: list[int] = []

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def record(i: int) -> None:
        done.append(i)

    for i in range(3):
        record.send(i)
    worker_factory(broker)
    broker.join(namespace, timeout=20_000)
    assert sorted(done) == [0, 1, 2]

    # RabbitMQ accepts exactly these arguments again, x-queue-type included (it refuses any
    # difference with 406), so all three are quorum queues with these arguments and no others.
    arguments = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{namespace}.XQ",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 7,
    }
    declare_raw(rabbitmq_url, namespace, arguments)
    declare_raw(rabbitmq_url, f"{namespace}.DQ", arguments)
    declare_raw(
        rabbitmq_url, f"{namespace}.XQ", {"x-queue-type": "quorum", "x-message-ttl": 604800000}
    )


def test_the_url_carries_queue_type_and_delivery_limit_past_pika(
    rabbit: Make, rabbitmq_url: str, namespace: str
) -> None:
    broker = rabbit(url=f"{rabbitmq_url}?heartbeat=20&queue_type=quorum&delivery_limit=3")
    assert (broker.queue_type, broker.delivery_limit) == ("quorum", 3)
    assert broker._params[0].heartbeat == 20
    assert repr(broker).endswith("/%2F?heartbeat=20', queue_type='quorum')"), repr(broker)
    broker.declare_queue(namespace, ensure=True)  # pika would refuse an unknown URL setting
    declare_raw(
        rabbitmq_url,
        namespace,
        {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{namespace}.XQ",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": 3,
        },
    )


def test_the_environment_chooses_the_queue_type_when_nothing_else_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NBQUEUE_RABBITMQ_QUEUE_TYPE", "quorum")
    assert RabbitmqBroker().queue_type == "quorum"
    assert RabbitmqBroker(queue_type="classic").queue_type == "classic"
    assert RabbitmqBroker(url="amqp://127.0.0.1/?queue_type=classic").queue_type == "classic"
    monkeypatch.setenv("NBQUEUE_RABBITMQ_QUEUE_TYPE", "stream")
    with pytest.raises(ValueError, match="NBQUEUE_RABBITMQ_QUEUE_TYPE must be 'classic' or"):
        RabbitmqBroker()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"queue_type": "mirrored"}, "queue_type must be 'classic' or 'quorum', got 'mirrored'"),
        ({"queue_type": "quorum", "max_priority": 10}, "Quorum queues have no priorities"),
        ({"url": "amqp://h/?queue_type=quorum", "queue_type": "classic"}, "disagree"),
        ({"url": "amqp://a/?queue_type=quorum;amqp://b/?queue_type=classic"}, "disagree"),
        ({"url": "amqp://h/?delivery_limit=-1"}, "delivery_limit must be a whole number"),
        ({"delivery_limit": 2.5}, "delivery_limit must be a whole number"),
    ],
)
def test_bad_queue_settings_are_refused_with_what_to_do(kwargs: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RabbitmqBroker(**kwargs)


def test_a_queue_of_the_other_type_is_refused_in_one_line_that_says_what_to_do(
    rabbit: Make, namespace: str
) -> None:
    rabbit(max_priority=None).declare_queue(namespace, ensure=True)  # classic, as Dramatiq's
    quorum = rabbit(queue_type="quorum")
    with pytest.raises(BrokerError) as info:
        quorum.declare_queue(namespace, ensure=True)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(
        f"Queue {namespace!r} already exists on RabbitMQ as a classic queue, but this broker "
        "declares quorum queues; use queue_type='classic'"
    )
    assert f"delete {namespace!r}, '{namespace}.DQ' and '{namespace}.XQ'" in text


def test_a_classic_broker_on_quorum_queues_is_refused_the_same_way(
    rabbit: Make, namespace: str
) -> None:
    rabbit(queue_type="quorum").declare_queue(namespace, ensure=True)
    with pytest.raises(BrokerError, match="as a quorum queue, but this broker declares classic"):
        rabbit(max_priority=None).declare_queue(namespace, ensure=True)


def test_a_message_past_the_delivery_limit_is_dead_lettered_with_its_reason(
    rabbit: Make, rabbitmq_url: str, namespace: str
) -> None:
    broker = rabbit(queue_type="quorum", delivery_limit=1)

    @nbqueue.actor(queue_name=namespace, broker=broker)
    def job(i: int) -> None:
        pass

    job.send(42)
    consumer = broker.consume(namespace, timeout=10_000)
    try:
        # Handed out, returned, handed out again, returned: the second return passes the limit.
        for _ in range(2):
            proxy = next(consumer)
            assert proxy is not None and proxy.args == (42,)
            consumer.requeue([proxy])
    finally:
        consumer.close()
    # RabbitMQ dead-letters asynchronously: wait for the delivery of the dead letter itself.
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        channel = connection.channel()
        delivery = next(channel.consume(f"{namespace}.XQ", inactivity_timeout=20))
        assert delivery[0] is not None, "no dead letter within 20 s"
        channel.cancel()  # returns the unacknowledged dead letter to q.XQ
    finally:
        connection.close()
    letters = broker.get_dead_letters(namespace)
    assert [(letter.reason, letter.message and letter.message.args) for letter in letters] == [
        ("delivery_limit", (42,))
    ]
    # The peek hands the dead letter back to q.XQ; RabbitMQ counts it as ready again once it
    # has taken it back, which it does on its own time.
    wait_until(
        lambda: broker.get_queue_message_counts(namespace) == (0, 0, 1),
        what="the dead letter counted in q.XQ again after the peek",
    )


def test_priorities_on_quorum_queues_are_ignored_with_one_warning(
    rabbit: Make, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = rabbit(queue_type="quorum")

    @nbqueue.actor(queue_name=namespace, broker=broker, priority=5)
    def urgent() -> None:
        pass

    with caplog.at_level(logging.WARNING, logger="nbqueue.broker.RabbitmqBroker"):
        urgent.send()
        urgent.send()
    warnings = [r.getMessage() for r in caplog.records if "quorum queues" in r.getMessage()]
    assert len(warnings) == 1
    assert "FIFO" in warnings[0]


def test_the_cli_takes_the_queue_type_for_url_brokers_only(
    tmp_path: Path, rabbitmq_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_options(["tasks", "--queue-type", "quorum"]).queue_type == "quorum"
    assert parse_options(["tasks"]).queue_type is None
    (tmp_path / "tasks.py").write_text("")
    code = main(["tasks", "-P", str(tmp_path), "--broker", "redis://h", "--queue-type", "quorum"])
    assert code == ExitCode.USAGE
    assert "--queue-type applies to RabbitMQ brokers only" in capsys.readouterr().err
    code = main(["tasks", "-P", str(tmp_path), "--queue-type", "quorum"])
    assert code == ExitCode.USAGE
    assert "--queue-type applies to a broker built from --broker" in capsys.readouterr().err


def test_a_cli_worker_builds_a_quorum_broker_from_the_flag(
    tmp_path: Path, rabbitmq_url: str
) -> None:
    (tmp_path / "probe.py").write_text(
        textwrap.dedent(
            """
            import os, signal
            import nbqueue

            print("queue_type", nbqueue.get_broker().queue_type, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            """
        )
    )
    command = [sys.executable, "-m", "nbqueue", "worker", "probe", "-P", str(tmp_path)]
    command += ["--broker", rabbitmq_url, "--queue-type", "quorum"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert "queue_type quorum" in result.stdout, result.stderr
    assert "(quorum queues)" in result.stderr


_TAIL = "for queue 'q' in vhost '/': "


@pytest.mark.parametrize(
    ("ours", "text", "existing"),
    [
        # RabbitMQ 3.10.8's texts: it names the first differing argument in an order of its own.
        (
            "quorum",
            "'x-overflow' received the value 'reject-publish' of type 'longstr' but "
            "current is none",
            "classic",
        ),
        (
            "quorum",
            "'x-max-priority' received none but current is the value '10' of type 'signedint'",
            "classic",
        ),
        (
            "quorum",
            "'x-queue-type' received the value 'quorum' of type 'longstr' but current is none",
            "classic",
        ),
        ("quorum", "'x-delivery-limit' received '5' but current is '20'", None),
        (
            "quorum",
            "'x-delivery-limit' received the value '5' of type 'signedint' but current is none",
            None,
        ),
        (
            "classic",
            "'x-dead-letter-strategy' received none but current is the value "
            "'at-least-once' of type 'longstr'",
            "quorum",
        ),
        ("classic", "'x-queue-type' received 'classic' but current is 'quorum'", "quorum"),
        (
            "classic",
            "'x-max-priority' received none but current is the value '10' of type 'signedint'",
            None,
        ),
    ],
)
def test_the_existing_queue_type_is_read_from_rabbitmqs_refusal(
    ours: str, text: str, existing: str | None
) -> None:
    from nbqueue._rabbitmq.layout import existing_type

    argument, _, rest = text.partition(" ")
    full = f"406 PRECONDITION_FAILED - inequivalent arg {argument} {_TAIL}{rest}."
    assert existing_type(full, ours) == existing
