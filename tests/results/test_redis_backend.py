"""The Redis result backend, on a real Redis."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import pytest
import redis

import nbqueue
from nbqueue import ConnectionFailed
from nbqueue.message import Message
from nbqueue.results import ResultFailure, ResultMissing, Results, ResultTimeout
from nbqueue.results.backends import RedisBackend
from tests.brokers._redis import cleanup, delete_namespace, make_broker

pytestmark = pytest.mark.redis


@pytest.fixture
def backend(redis_url, namespace):
    backend = RedisBackend(url=redis_url, namespace=namespace, use_namespace_prefix_keys=True)
    yield backend
    delete_namespace(backend.client, namespace)
    backend.close()


def make_message(actor_name: str = "add") -> Message[Any]:
    return Message(queue_name="default", actor_name=actor_name, args=(), kwargs={}, options={})


def test_results_are_stored_as_dramatiq_stores_them(redis_url, namespace):
    backend = RedisBackend(url=redis_url, namespace=namespace)
    message = make_message()
    key = hashlib.md5(f"{namespace}:default:add:{message.message_id}".encode()).hexdigest()
    try:
        backend.store_result(message, {"total": 3}, 60000)
        assert backend.client.lrange(key, 0, -1) == [b'{"total":3}']
        assert 0 < backend.client.pttl(key) <= 60000
        assert backend.get_result(message) == {"total": 3}
    finally:
        backend.client.delete(key)
        backend.close()


def test_a_missing_result_raises_at_once_without_blocking(backend):
    with pytest.raises(ResultMissing, match="block=True"):
        backend.get_result(make_message())


def test_a_blocked_reader_wakes_the_moment_the_result_is_written(redis_url, namespace):
    # No socket timeout and no cap on one blocking read: the reader's BLMOVE may wait an hour,
    # so within the test only the write can end it.
    backend = RedisBackend(
        url=redis_url, namespace=namespace, use_namespace_prefix_keys=True, socket_timeout=None
    )
    backend.connection.block_limit = 3600.0
    message = make_message()
    key = backend.build_message_key(message)
    replies: list[Any] = []
    blmove = backend.client.blmove

    def recorded_blmove(*args: Any, **kwargs: Any) -> Any:
        replies.append(reply := blmove(*args, **kwargs))
        return reply

    backend.client.blmove = recorded_blmove
    received: list[int] = []
    observer = redis.Redis.from_url(redis_url)
    try:
        with observer.monitor() as monitor:
            thread = threading.Thread(
                target=lambda: received.append(
                    backend.get_result(message, block=True, timeout=3_600_000)
                ),
                daemon=True,
            )
            thread.start()
            # MONITOR lists commands in the order the server runs them: once it shows the
            # reader's BLMOVE, the reader is blocked, and the write below runs after it.
            assert _next_command_on(monitor, key)[0].upper() == "BLMOVE"
            backend.store_result(message, 42, 60_000)
            thread.join()
        assert received == [42]
        assert replies == [b"42"]  # one blocking read, which the write ended
        assert backend.get_result(message) == 42  # the blocking read left the result in place
    finally:
        observer.close()
        delete_namespace(backend.client, namespace)
        backend.close()


def _next_command_on(monitor: Any, key: str) -> list[str]:
    """The next command the server runs on ``key``, as MONITOR reports it."""
    while True:
        command: list[str] = monitor.next_command()["command"].split()
        if key in command:
            return command


def test_sub_second_timeouts_are_honoured(backend):
    blocked_for: list[float] = []
    blmove = backend.client.blmove

    def recorded_blmove(source: str, destination: str, timeout: float, *args: Any) -> Any:
        blocked_for.append(timeout)
        assert 0 < timeout <= 0.3  # 0 would block forever; a whole second would overrun
        return blmove(source, destination, timeout, *args)

    backend.client.blmove = recorded_blmove
    started = time.monotonic()
    with pytest.raises(ResultTimeout) as info:
        backend.get_result(make_message(), block=True, timeout=300)

    assert info.value.timeout == 300
    assert blocked_for  # it waited in Redis, rather than looking once
    # Not before the timeout: a lower bound only, which a loaded machine can only make longer.
    assert time.monotonic() - started >= 0.29


def test_failures_are_stored_as_data(backend):
    message = make_message()
    try:
        raise KeyError("secret sauce")
    except KeyError as e:
        backend.store_exception(message, e, 10000)
    with pytest.raises(ResultFailure) as info:
        backend.get_result(message, block=True, timeout=1000)
    assert info.value.orig_exc_type == "KeyError"
    assert "secret sauce" in info.value.orig_exc_msg


def test_send_to_result_through_a_redis_broker_and_worker(
    redis_url, namespace, backend, worker_factory
):
    broker = make_broker(redis_url, namespace)
    broker.add_middleware(Results(backend=backend))
    try:

        @nbqueue.actor(queue_name=namespace, broker=broker, store_results=True)
        def add(x, y):
            return x + y

        worker = worker_factory(broker, worker_threads=2)
        messages = [add.send(i, i) for i in range(20)]
        assert [m.get_result(backend=backend, block=True, timeout=10000) for m in messages] == [
            2 * i for i in range(20)
        ]
        worker.stop()
    finally:
        broker.close()
        cleanup(broker, namespace)


def test_an_unreachable_server_is_a_clear_error():
    backend = RedisBackend(url="redis://127.0.0.1:1/0")
    with pytest.raises(ConnectionFailed, match="Could not connect to Redis"):
        backend.get_result(make_message())
    assert "127.0.0.1:1" in repr(backend)
