"""nbqueue and real Dramatiq 2.x on the same memcached: results and rate-limiter counters, in
both directions (same keys, same values)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import nbqueue
from nbqueue.message import Message
from nbqueue.rate_limits import ConcurrentRateLimiter, WindowRateLimiter
from nbqueue.rate_limits.backends import MemcachedBackend as LimitsBackend
from nbqueue.results import ResultFailure, Results
from nbqueue.results.backends import MemcachedBackend
from tests._memcached import forget, raw_client

dramatiq = pytest.importorskip("dramatiq")
from dramatiq.rate_limits import ConcurrentRateLimiter as TheirConcurrent  # noqa: E402
from dramatiq.rate_limits import WindowRateLimiter as TheirWindow  # noqa: E402
from dramatiq.rate_limits.backends import MemcachedBackend as TheirLimitsBackend  # noqa: E402
from dramatiq.results import ResultFailure as TheirResultFailure  # noqa: E402
from dramatiq.results import Results as TheirResults  # noqa: E402
from dramatiq.results.backends import MemcachedBackend as TheirBackend  # noqa: E402

pytestmark = pytest.mark.memcached


@pytest.fixture(params=[False, True], ids=["md5-keys", "prefixed-keys"])
def backends(request, memcached_server, namespace):
    """nbqueue's and Dramatiq's result backends on one memcached, with one namespace."""
    prefixed = request.param
    ours = MemcachedBackend(
        servers=[memcached_server], namespace=namespace, use_namespace_prefix_keys=prefixed
    )
    theirs = TheirBackend(
        servers=[memcached_server], namespace=namespace, use_namespace_prefix_keys=prefixed
    )
    keys: list[str] = []
    yield ours, theirs, keys
    forget(memcached_server, keys)
    ours.close()


def pair(actor_name: str = "add") -> tuple[Message[Any], Any]:
    """The same message as nbqueue and as Dramatiq see it."""
    ours: Message[Any] = Message(
        queue_name="default", actor_name=actor_name, args=(1, 2), kwargs={}, options={}
    )
    return ours, dramatiq.Message(**ours.asdict())


def test_both_build_the_same_key(backends):
    ours, theirs, _ = backends
    message, their_message = pair()
    assert ours.build_message_key(message) == theirs.build_message_key(their_message)


def test_a_result_written_by_dramatiq_is_read_by_nbqueue(backends):
    ours, theirs, keys = backends
    message, their_message = pair()
    keys.append(ours.build_message_key(message))
    theirs.store_result(their_message, {"total": [1, 2.5, "x"]}, 60_000)
    assert ours.get_result(message) == {"total": [1, 2.5, "x"]}


def test_a_result_written_by_nbqueue_is_read_by_dramatiq(backends):
    ours, theirs, keys = backends
    message, their_message = pair()
    keys.append(ours.build_message_key(message))
    ours.store_result(message, {"total": 3}, 60_000)
    assert theirs.get_result(their_message) == {"total": 3}


def test_failures_are_read_across(backends):
    ours, theirs, keys = backends
    (message, their_message), (other, their_other) = pair("a"), pair("b")
    keys += [ours.build_message_key(message), ours.build_message_key(other)]

    theirs.store_exception(their_message, ValueError("from dramatiq"), 60_000)
    with pytest.raises(ResultFailure) as info:
        ours.get_result(message)
    assert (info.value.orig_exc_type, info.value.orig_exc_msg) == ("ValueError", "from dramatiq")
    assert info.value.traceback is None  # Dramatiq stores none

    try:
        raise KeyError("from nbqueue")
    except KeyError as e:
        ours.store_exception(other, e, 60_000)
    with pytest.raises(TheirResultFailure) as their_info:
        theirs.get_result(their_other)
    assert their_info.value.orig_exc_type == "KeyError"
    assert "from nbqueue" in their_info.value.orig_exc_msg


def test_a_blocked_nbqueue_reader_gets_what_dramatiq_writes_later(backends):
    ours, theirs, keys = backends
    message, their_message = pair()
    keys.append(ours.build_message_key(message))
    received: list[int] = []
    reader = threading.Thread(
        target=lambda: received.append(ours.get_result(message, block=True, timeout=60_000)),
        daemon=True,
    )
    reader.start()
    theirs.store_result(their_message, 99, 60_000)
    reader.join(60)
    assert received == [99]


@pytest.mark.redis
def test_workers_of_each_store_results_the_other_reads(
    memcached_server, redis_url, namespace, worker_factory
):
    # Messages cross on Redis; results cross on memcached.
    from dramatiq.brokers.redis import RedisBroker as TheirRedisBroker

    from tests.brokers._redis import cleanup, make_broker

    results = MemcachedBackend(servers=[memcached_server], namespace=namespace)
    their_results = TheirBackend(servers=[memcached_server], namespace=namespace)
    ours = make_broker(redis_url, namespace)
    ours.add_middleware(Results(backend=results))
    theirs = TheirRedisBroker(url=redis_url, namespace=namespace)
    theirs.add_middleware(TheirResults(backend=their_results))
    nbqueue.set_broker(ours)
    keys: list[str] = []
    their_worker = None
    try:

        @nbqueue.actor(queue_name=namespace, actor_name="mul", broker=ours, store_results=True)
        def mul(x, y):
            return x * y

        @dramatiq.actor(
            queue_name=f"{namespace}-d", actor_name="dmul", broker=theirs, store_results=True
        )
        def dmul(x, y):
            return x * y

        their_worker = dramatiq.Worker(theirs, worker_timeout=100, worker_threads=2)
        their_worker.start()
        sent = dmul.send(6, 7)
        as_ours = nbqueue.Message(**sent.asdict())
        keys.append(results.build_message_key(as_ours))
        assert as_ours.get_result(backend=results, block=True, timeout=30_000) == 42

        worker_factory(ours)
        mine = mul.send(3, 5)
        keys.append(results.build_message_key(mine))
        as_theirs = dramatiq.Message(**mine.asdict())
        assert their_results.get_result(as_theirs, block=True, timeout=30_000) == 15
    finally:
        if their_worker is not None:
            their_worker.stop()
        ours.close()
        theirs.close()
        cleanup(ours, namespace)
        forget(memcached_server, keys)
        results.close()


@pytest.fixture
def limit_backends(memcached_server):
    ours = LimitsBackend(servers=[memcached_server])
    theirs = TheirLimitsBackend(servers=[memcached_server])
    yield ours, theirs
    ours.close()


def test_rate_limit_counters_are_shared(limit_backends, memcached_server, namespace):
    ours, theirs = limit_backends
    key = f"{namespace}:shared"
    try:
        assert ours.add(key, 1, 60_000)
        assert not theirs.add(key, 1, 60_000)
        assert theirs.incr(key, 1, 2, 60_000)  # Dramatiq's server-side incr: 2
        assert not ours.incr(key, 1, 2, 60_000)  # refused at the maximum, still 2
        assert raw_client(memcached_server).get(key) == 2
        assert theirs.decr(key, 1, 0, 60_000)  # Dramatiq's server-side decr: 1
        assert ours.incr(key, 1, 2, 60_000)  # nbqueue's compare-and-swap: 2
        assert ours.decr(key, 2, 0, 60_000)  # 0
        assert raw_client(memcached_server).get(key) == 0
        assert theirs.incr(key, 3, 3, 60_000)  # Dramatiq reads and counts nbqueue's value
    finally:
        forget(memcached_server, [key])


def test_a_mutex_held_by_either_is_held_for_both(limit_backends, memcached_server, namespace):
    ours, theirs = limit_backends
    key = f"{namespace}:mutex"
    mine = ConcurrentRateLimiter(ours, key, limit=1)
    their_mutex = TheirConcurrent(theirs, key, limit=1)
    try:
        with their_mutex.acquire():
            with mine.acquire(raise_on_failure=False) as acquired:
                assert not acquired
        with mine.acquire():
            with their_mutex.acquire(raise_on_failure=False) as acquired:
                assert not acquired
        # (Dramatiq's refused acquisition stays counted: its memcached incr is never undone, so
        # this slot is now taken until the key expires, for Dramatiq and nbqueue alike.)
    finally:
        forget(memcached_server, [key])


def test_window_limits_are_counted_across(limit_backends, memcached_server, namespace):
    ours, theirs = limit_backends
    key = f"{namespace}:window"
    mine = WindowRateLimiter(ours, key, limit=3, window=60)
    their_window = TheirWindow(theirs, key, limit=3, window=60)
    outcomes = []
    try:
        for limiter in (mine, their_window, mine, their_window, mine):
            with limiter.acquire(raise_on_failure=False) as acquired:
                outcomes.append(acquired)
        assert outcomes == [True, True, True, False, False]
    finally:
        now = int(time.time())
        forget(memcached_server, [f"{key}@{now - i}" for i in range(-5, 180)])
