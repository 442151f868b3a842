"""The group commit that lets worker threads share Redis round trips, on a real Redis."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis as redis_py

from nbqueue._redis.group import GroupCommit
from nbqueue.message import Message
from nbqueue.results.backends import RedisBackend
from tests.brokers._redis import delete_namespace

pytestmark = pytest.mark.redis


@pytest.fixture
def backend(redis_url, namespace):
    backend = RedisBackend(url=redis_url, namespace=namespace, use_namespace_prefix_keys=True)
    yield backend
    delete_namespace(backend.client, namespace)
    backend.close()


def test_results_stored_by_many_threads_at_once_are_each_stored_before_store_returns(backend):
    messages = [
        Message(queue_name="default", actor_name="add", args=(), kwargs={}, options={})
        for _ in range(400)
    ]
    missing: list[str] = []
    start = threading.Barrier(8)

    def store(part: list[Message[Any]]) -> None:
        start.wait()
        for i, message in enumerate(part):
            backend.store_result(message, {"n": i}, 60000)
            # stored before store_result returned (a result must land before the ack)
            if backend.client.lrange(backend.build_message_key(message), 0, -1) != [
                f'{{"n":{i}}}'.encode()
            ]:
                missing.append(message.message_id)

    threads = [threading.Thread(target=store, args=(messages[k::8],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not missing
    ttl = backend.client.pttl(backend.build_message_key(messages[-1]))
    assert 0 < ttl <= 60000


def test_a_store_replaces_the_previous_value_of_its_key(backend):
    message = Message(queue_name="default", actor_name="add", args=(), kwargs={}, options={})
    backend.store_result(message, 1, 60000)
    backend.store_result(message, 2, 60000)
    assert backend.client.lrange(backend.build_message_key(message), 0, -1) == [b"2"]


def test_error_replies_go_to_the_request_that_caused_them_only(redis_url, namespace):
    client = redis_py.Redis.from_url(redis_url)
    group = GroupCommit(client)
    key = f"{namespace}:list"
    try:
        client.rpush(key, "x")
        errors: list[Any] = []
        oks: list[Any] = []
        start = threading.Barrier(6)

        def call(i: int) -> None:
            start.wait()
            for _ in range(50):
                if i == 0:  # INCR on a list: an error reply for this request only
                    errors.extend(group.execute(lambda pipe: pipe.incr(key)))
                else:
                    oks.extend(group.execute(lambda pipe: pipe.llen(key)))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(errors) == 50 and all(isinstance(e, redis_py.ResponseError) for e in errors)
        assert oks == [1] * 250
    finally:
        client.delete(key)
        client.close()


def test_a_failed_round_trip_raises_in_every_waiting_thread_and_the_next_one_works():
    client = redis_py.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    group = GroupCommit(client)
    failures: list[BaseException] = []

    def call() -> None:
        try:
            group.execute(lambda pipe: pipe.ping())
        except redis_py.ConnectionError as e:
            failures.append(e)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(failures) == 4
    call()
    assert len(failures) == 5
