"""Redis Sentinel URLs and ``min_replicas``: parsing, redaction, the entry points that accept
the URL, and WAIT against real servers (failover itself: tests/reliability/test_redis_sentinel.py).
"""

from __future__ import annotations

import pytest

import nbqueue
from nbqueue import ConnectionFailed, Message
from nbqueue._redis.client import split_broker_options
from nbqueue._redis.sentinel import parse_sentinel_url
from nbqueue.brokers.redis import RedisBroker
from nbqueue.common import redact_url
from nbqueue.connection import broker_from_url, connect, default_broker, results_url_for
from nbqueue.errors import PublishOutcomeUnknown
from nbqueue.results import Results
from nbqueue.results.backends import RedisBackend
from tests.brokers._redis import PrivateRedis, cleanup, make_broker
from tests.brokers._sentinel import wait_for_sync

pytestmark = pytest.mark.redis

SECRET = "hunter2-s3cret"
#: A port of this suite's private range where nothing listens.
NOBODY = 26419


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database():
    parsed = parse_sentinel_url(
        f"redis+sentinel://:{SECRET}@h1:26379,h2,[::1]:26380/mymaster/3"
        f"?sentinel_password=pw2&socket_timeout=1.5&min_other_sentinels=1"
    )
    assert parsed.sentinels == [("h1", 26379), ("h2", 26379), ("::1", 26380)]
    assert parsed.service_name == "mymaster" and parsed.db == 3
    assert parsed.password == SECRET and parsed.sentinel_password == "pw2"
    assert parsed.options == {"socket_timeout": 1.5, "min_other_sentinels": 1}
    assert not parsed.tls
    assert parse_sentinel_url("rediss+sentinel://h1/m").tls
    assert parse_sentinel_url("redis+sentinel://alice@h1/m/").username == "alice"
    assert parse_sentinel_url("redis+sentinel://h1/m").db == 0


def test_passwords_never_appear_in_reprs_or_redacted_urls():
    url = f"redis+sentinel://:{SECRET}@h1,h2/mymaster/0?sentinel_password={SECRET}x"
    parsed = parse_sentinel_url(url)
    assert SECRET not in repr(parsed)
    assert parsed.masked() == "redis+sentinel://:***@h1:26379,h2:26379/mymaster/0"
    assert SECRET not in redact_url(url)
    assert redact_url(url).endswith("?sentinel_password=***")
    broker = RedisBroker(url=url)
    assert SECRET not in repr(broker)
    assert repr(broker) == (
        "RedisBroker('redis+sentinel://:***@h1:26379,h2:26379/mymaster/0', namespace='dramatiq')"
    )
    broker.close()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel:///mymaster", "names no sentinel"),
        ("redis+sentinel://h1:26379", "names no master"),
        ("redis+sentinel://h1:26379/mymaster/zero", "is not a number"),
        ("redis+sentinel://h1:port/mymaster", "not a port number"),
        ("redis+sentinel://h1/mymaster/0/extra", "more than a master name"),
        ("redis+sentinel://h1/mymaster?sockettimeout=1", "unknown option 'sockettimeout'"),
        ("redis+sentinel://h1/mymaster?socket_timeout=soon", "must be a number"),
        ("redis+sentinel://h1/mymaster?ssl_ca_certs=/ca.pem", "needs TLS"),
    ],
)
def test_a_bad_sentinel_url_gets_one_sentence_naming_the_expected_form(url, why):
    with pytest.raises(ValueError) as info:
        parse_sentinel_url(url.replace("://", f"://:{SECRET}@", 1))
    text = str(info.value)
    assert why in text and SECRET not in text
    assert text.endswith(
        "expected redis+sentinel://[:password@]host1:26379,host2:26379/mymaster/0."
    )
    assert text.count(". ") == 0  # one sentence


def test_every_url_entry_point_accepts_a_sentinel_url(monkeypatch):
    url = f"redis+sentinel://:{SECRET}@127.0.0.1:{NOBODY}/mymaster/2?min_replicas=1"
    where = f"redis+sentinel://:***@127.0.0.1:{NOBODY}/mymaster/2"
    broker = broker_from_url(url, namespace="nbq-test-sentinel")  # nothing connects yet
    assert isinstance(broker, RedisBroker) and broker.min_replicas == 1
    [results] = [m for m in broker.middleware if isinstance(m, Results)]
    assert isinstance(results.backend, RedisBackend)
    assert repr(results.backend) == f"RedisBackend({where!r}, namespace='dramatiq-results')"
    broker.close()
    monkeypatch.setenv("NBQUEUE_BROKER_URL", url)
    broker = default_broker()
    assert repr(broker) == f"RedisBroker({where!r}, namespace='dramatiq')"
    broker.close()
    broker = connect(url)
    assert nbqueue.get_broker() is broker
    broker.close()
    monkeypatch.setenv("NBQUEUE_RESULTS_URL", url)
    assert results_url_for("amqp://guest:guest@127.0.0.1/") == url


def test_unreachable_sentinels_fail_a_send_within_failover_wait_without_the_password():
    url = (
        f"redis+sentinel://:{SECRET}@127.0.0.1:{NOBODY}/mymaster/0"
        f"?sentinel_password={SECRET}&failover_wait=0.3&socket_connect_timeout=0.5"
    )
    broker = RedisBroker(url=url, namespace="nbq-test-nobody")
    broker.declare_queue("q")
    with pytest.raises(ConnectionFailed) as info:
        broker.enqueue(Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}))
    assert "named no master" in str(info.value) and SECRET not in str(info.value)
    broker.close()


def test_broker_options_are_taken_out_of_any_redis_url():
    url, options = split_broker_options("redis://h:1/0?min_replicas=2&socket_timeout=1")
    assert url == "redis://h:1/0?socket_timeout=1" and options == {"min_replicas": 2}
    assert split_broker_options("redis://h:1/0") == ("redis://h:1/0", {})
    with pytest.raises(ValueError, match="min_replicas must be a whole number"):
        split_broker_options("redis://h:1/0?min_replicas=all")


def test_wait_timeout_must_stay_below_the_socket_timeout():
    with pytest.raises(ValueError, match="below the socket timeout"):
        RedisBroker(url="redis://127.0.0.1:1/0?min_replicas=1&wait_timeout=5000")
    with pytest.raises(ValueError, match="min_replicas must be 0 or more"):
        RedisBroker(url="redis://127.0.0.1:1/0", min_replicas=-1)
    broker = RedisBroker(url="redis://127.0.0.1:1/0?min_replicas=1", wait_timeout=200)
    assert (broker.min_replicas, broker.wait_timeout) == (1, 200)
    broker.close()


def test_a_send_that_too_few_replicas_confirm_raises_and_says_the_message_may_survive(
    redis_url, namespace
):
    # The shared test server has no replicas: WAIT 1 answers 0.
    broker = make_broker(f"{redis_url}?min_replicas=1&wait_timeout=50", namespace)
    try:
        broker.declare_queue(namespace)
        message = Message(queue_name=namespace, actor_name="a", args=(), kwargs={}, options={})
        with pytest.raises(PublishOutcomeUnknown) as info:
            broker.enqueue(message)
        assert "on 0 of the 1 replicas" in str(info.value)
        assert "most likely run" in str(info.value)
        assert [m.message_id for m in info.value.messages] == [message.message_id]
        assert broker.queue_stats()[namespace].ready == 1  # the master has it
        with pytest.raises(PublishOutcomeUnknown, match="The 0 messages before them"):
            broker.enqueue_many([message.copy() for _ in range(3)])
    finally:
        broker.close()
        cleanup(broker, namespace)


def test_bulk_sends_wait_for_replicas_once_per_batch(namespace):
    master = PrivateRedis("--repl-diskless-sync-delay", "0")
    master.port, master.url = 6410, "redis://127.0.0.1:6410/0"
    replica = PrivateRedis("--replicaof", "127.0.0.1", "6410")
    replica.port = 6411
    try:
        master.start()
        replica.start()
        wait_for_sync(6410, 1)
        broker = make_broker(f"{master.url}?min_replicas=1", namespace)
        broker.declare_queue(namespace)
        messages = [
            Message(queue_name=namespace, actor_name="a", args=(i,), kwargs={}, options={})
            for i in range(2500)
        ]
        before = broker.client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
        broker.enqueue_many(messages)
        broker.enqueue(messages[0])
        after = broker.client.info("commandstats")["cmdstat_wait"]["calls"]
        assert after - before == 3 + 1  # batches of 1000, then the single send
        assert broker.queue_stats()[namespace].ready == 2501
        broker.close()
    finally:
        replica.stop()
        master.stop()
