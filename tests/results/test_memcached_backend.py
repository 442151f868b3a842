"""The memcached result backend, on a real memcached."""

from __future__ import annotations

import hashlib
import threading
import time
import types
from typing import Any

import pytest

import nbqueue
from nbqueue import group
from nbqueue.errors import EncodeError
from nbqueue.message import Message
from nbqueue.results import ResultFailure, ResultMissing, Results, ResultTimeout
from nbqueue.results.backends import MemcachedBackend
from tests._memcached import forget, raw_client, remaining_ttl

pytestmark = pytest.mark.memcached


class RecordingBackend(MemcachedBackend):
    """Remembers every key it stores, so that the test deletes exactly those."""

    stored: list[str]

    def _store(self, message_key: str, result: Any, ttl: int) -> None:
        self.stored.append(message_key)
        super()._store(message_key, result, ttl)


def make_backend(server: str, namespace: str, **options: Any) -> RecordingBackend:
    backend = RecordingBackend(servers=[server], namespace=namespace, **options)
    backend.stored = []
    return backend


@pytest.fixture
def backend(memcached_server, namespace):
    backend = make_backend(memcached_server, namespace)
    yield backend
    forget(memcached_server, backend.stored)
    backend.close()


def make_message(actor_name: str = "add") -> Message[Any]:
    return Message(queue_name="default", actor_name=actor_name, args=(), kwargs={}, options={})


def test_results_are_stored_as_dramatiq_stores_them(backend, memcached_server, namespace):
    message = make_message()
    backend.store_result(message, {"total": 3}, 120_000)

    key = hashlib.md5(f"{namespace}:default:add:{message.message_id}".encode()).hexdigest()
    assert backend.stored == [key]
    # Plain bytes (pylibmc's flag 0), the encoder's output, as Dramatiq's backend stores them.
    assert raw_client(memcached_server).get(key) == b'{"total":3}'
    # 120 s rounded up and one second added: never shorter than asked.
    # (The lower bound leaves a loaded machine 20 s between the write and the read.)
    assert 100 <= remaining_ttl(memcached_server, key) <= 121
    assert backend.get_result(message) == {"total": 3}


def test_prefixed_keys_show_the_namespace(memcached_server, namespace):
    backend = make_backend(memcached_server, namespace, use_namespace_prefix_keys=True)
    message = make_message()
    try:
        backend.store_result(message, 7, 10_000)
        assert backend.stored == [f"{namespace}:default:add:{message.message_id}"]
        assert raw_client(memcached_server).get(backend.stored[0]) == b"7"
    finally:
        forget(memcached_server, backend.stored)
        backend.close()


def test_a_missing_result_raises_at_once_without_blocking(backend):
    with pytest.raises(ResultMissing, match="block=True"):
        backend.get_result(make_message())


def test_a_blocked_reader_gets_the_result_once_it_is_written(backend, monkeypatch):
    from nbqueue._memcached import results as module

    pauses: list[float] = []
    waiting = threading.Event()

    def recorded_sleep(seconds: float) -> None:
        pauses.append(seconds)
        waiting.set()
        time.sleep(seconds)

    monkeypatch.setattr(
        module, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=recorded_sleep)
    )
    message = make_message()
    received: list[int] = []
    # An hour: only the write can end this read within the test.
    reader = threading.Thread(
        target=lambda: received.append(backend.get_result(message, block=True, timeout=3_600_000)),
        daemon=True,
    )
    reader.start()
    assert waiting.wait(30)  # the reader found nothing and is polling
    backend.store_result(message, 42, 60_000)
    reader.join(30)
    assert received == [42]
    # memcached cannot block, so the reader looks again after short pauses: never longer than
    # 50 ms (Dramatiq's grow to 2 s).
    assert pauses and max(pauses) <= 0.05


def test_sub_second_timeouts_are_honoured(backend):
    started = time.monotonic()
    with pytest.raises(ResultTimeout) as info:
        backend.get_result(make_message(), block=True, timeout=300)
    assert info.value.timeout == 300
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
    assert info.value.traceback is not None and "secret sauce" in info.value.traceback


def test_a_result_too_large_for_memcached_stores_a_failure_instead(backend):
    message = make_message("big")
    with pytest.raises(EncodeError, match="more than memcached"):
        backend.store_result(message, "x" * (2 << 20), 10_000)
    # The reader learns at once instead of timing out.
    with pytest.raises(ResultFailure) as info:
        backend.get_result(message, block=True, timeout=1000)
    assert info.value.orig_exc_type == "EncodeError"
    assert "smaller result" in info.value.orig_exc_msg


def test_send_to_result_through_a_worker(stub_broker, backend, worker_factory):
    stub_broker.add_middleware(Results(backend=backend))

    @nbqueue.actor(store_results=True, max_retries=0)
    def add(x, y):
        return x + y

    @nbqueue.actor(store_results=True, max_retries=0)
    def fail():
        raise ValueError("no good")

    worker_factory(stub_broker, worker_threads=4)
    messages = [add.send(i, i) for i in range(20)]
    assert [m.get_result(block=True, timeout=30_000) for m in messages] == [
        2 * i for i in range(20)
    ]
    with pytest.raises(ResultFailure, match="no good"):
        fail.send().get_result(block=True, timeout=30_000)
    g = group(add.message(i, 1) for i in range(5)).run()
    assert list(g.get_results(block=True, timeout=30_000)) == [1, 2, 3, 4, 5]
    # Every message stored its result under its own key: 20 + 1 + 5.
    assert len(set(backend.stored)) == 26


def test_the_backend_offers_no_live_channel(backend):
    assert backend.live_transport() is None
    assert backend.code_store() is None
    assert backend.start_counter() is None


def test_with_a_redis_broker_the_live_channel_lives_in_the_brokers_redis(
    memcached_server, redis_url, namespace, worker_factory
):
    # memcached cannot carry the channel, so the broker's own server does: a watcher in another
    # process, with a broker of its own on the same Redis, sees the status.
    from nbqueue.brokers.redis import RedisBroker
    from nbqueue.live import Live, MessageStatus, status
    from nbqueue.middleware import default_middleware
    from tests.brokers._redis import cleanup

    backend = make_backend(memcached_server, namespace)
    middleware = [*(m() for m in default_middleware), Results(backend=backend), Live()]
    broker = RedisBroker(url=redis_url, namespace=namespace, middleware=middleware)
    broker.emit_after("process_boot")
    elsewhere = RedisBroker(url=redis_url, namespace=namespace)
    try:

        @nbqueue.actor(queue_name=namespace, broker=broker, store_results=True)
        def add(x, y):
            return x + y

        worker_factory(broker)
        message = add.send(1, 2)
        assert message.get_result(backend=backend, block=True, timeout=30_000) == 3
        deadline = time.monotonic() + 30
        while (record := status(message, broker=elsewhere)) is None or (
            record.status is not MessageStatus.succeeded
        ):
            assert time.monotonic() < deadline, record
            time.sleep(0.01)
    finally:
        broker.close()
        elsewhere.close()
        cleanup(broker, namespace)
        forget(memcached_server, backend.stored)
        backend.close()
