"""The Redis rate limiter backend, on a real Redis; keys are prefixed with the test's namespace."""

from __future__ import annotations

import threading
import time

import pytest

from nbqueue.rate_limits import (
    Barrier,
    BucketRateLimiter,
    ConcurrentRateLimiter,
    RateLimitExceeded,
    WindowRateLimiter,
)
from nbqueue.rate_limits.backends import RedisBackend
from tests.brokers._redis import delete_namespace

pytestmark = pytest.mark.redis


@pytest.fixture
def backend(redis_url, namespace):
    backend = RedisBackend(url=redis_url)
    yield backend
    delete_namespace(backend.client, namespace)
    backend.close()


def test_add_sets_a_key_only_when_it_is_absent(backend, namespace):
    key = f"{namespace}:k"
    # TTLs of a minute: the key cannot expire between two calls, however slow the machine.
    assert backend.add(key, 3, 60000)
    assert not backend.add(key, 5, 60000)
    assert backend.client.get(key) == b"3"
    assert 0 < backend.client.pttl(key) <= 60000


def test_incr_and_decr_stop_at_their_bounds_and_reset_the_ttl(backend, namespace):
    key = f"{namespace}:k"
    assert backend.incr(key, 1, 2, 60000)
    assert backend.incr(key, 1, 2, 60000)
    assert not backend.incr(key, 1, 2, 60000)
    assert backend.client.get(key) == b"2"
    assert backend.decr(key, 1, 1, 600000)
    assert not backend.decr(key, 1, 1, 600000)
    assert backend.client.get(key) == b"1"
    assert 60000 < backend.client.pttl(key) <= 600000  # the decr set the TTL again


def test_incr_and_sum_checks_the_sum_over_the_window(backend, namespace):
    older, current = f"{namespace}:k@1", f"{namespace}:k@2"
    backend.add(older, 2, 10000)

    def keys() -> list[str]:
        return [current, older]

    assert backend.incr_and_sum(current, keys, 1, 3, 10000)
    assert not backend.incr_and_sum(current, keys, 1, 3, 10000)
    assert backend.client.get(current) == b"1"


def test_wait_wakes_when_an_event_is_published_and_late_waiters_see_it(backend, namespace):
    key = f"{namespace}:e"
    woke: list[bool] = []
    # No timeout: only the event can end the wait; it lives a minute, so a waiter that starts
    # after it was published still sees it.
    thread = threading.Thread(target=lambda: woke.append(backend.wait(key, None)), daemon=True)
    thread.start()
    backend.wait_notify(key, 60000)
    thread.join(30)
    assert woke == [True]
    assert backend.wait(key, 0)


def test_wait_honours_sub_second_timeouts(backend, namespace, monkeypatch):
    # What Redis is asked to block for is counted, not timed: sub-second blocks adding up to the
    # 200 ms, neither rounded up to a second nor down to 0 (which Redis reads as "forever").
    blocks = []
    blmove = backend.client.blmove

    def watched_blmove(first, second, timeout, *args):
        blocks.append(float(timeout))
        return blmove(first, second, timeout, *args)

    monkeypatch.setattr(backend.client, "blmove", watched_blmove)
    started = time.monotonic()
    assert not backend.wait(f"{namespace}:nothing", 200)
    assert time.monotonic() - started >= 0.19  # it waited
    assert blocks and all(0 < block <= 0.2 for block in blocks), blocks
    assert sum(blocks) <= 0.2 + 0.002 * len(blocks), blocks


def test_the_limiters_work_on_redis(backend, namespace):
    mutex = ConcurrentRateLimiter(backend, f"{namespace}:mutex", limit=1)
    with mutex.acquire():
        with pytest.raises(RateLimitExceeded), mutex.acquire():
            pass
    with mutex.acquire(raise_on_failure=False) as acquired:
        assert acquired

    bucket = BucketRateLimiter(backend, f"{namespace}:bucket", limit=2, bucket=60000)
    results = []
    for _ in range(3):
        with bucket.acquire(raise_on_failure=False) as acquired:
            results.append(acquired)
    assert results == [True, True, False]

    window = WindowRateLimiter(backend, f"{namespace}:window", limit=2, window=60)
    results = []
    for _ in range(3):
        with window.acquire(raise_on_failure=False) as acquired:
            results.append(acquired)
    assert results == [True, True, False]


def test_a_barrier_releases_every_party_when_the_last_arrives(backend, namespace):
    barrier = Barrier(backend, f"{namespace}:barrier", ttl=10000)
    assert barrier.create(parties=3)
    released: list[bool] = []
    waiters = [
        threading.Thread(target=lambda: released.append(barrier.wait(timeout=5000)))
        for _ in range(2)
    ]
    for waiter in waiters:
        waiter.start()
    deadline = time.monotonic() + 5
    while backend.client.get(f"{namespace}:barrier") != b"1":  # both waiters have arrived
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert barrier.wait(block=False)
    for waiter in waiters:
        waiter.join(5)
    assert released == [True, True]


def test_dramatiq_and_nbqueue_share_limits(backend, namespace):
    from dramatiq.rate_limits.backends import RedisBackend as DramatiqBackend

    theirs = DramatiqBackend(client=backend.client)
    key = f"{namespace}:shared"
    assert backend.add(key, 1, 10000)
    assert theirs.incr(key, 1, 2, 10000)
    assert not backend.incr(key, 1, 2, 10000)
    assert backend.decr(key, 1, 0, 10000)
    assert theirs.incr(key, 1, 2, 10000)
    backend.wait_notify(f"{key}@events", 10000)
    assert theirs.wait(f"{key}@events", 1000)


def test_group_callbacks_run_once_on_a_redis_broker(backend, redis_url, namespace, worker_factory):
    import nbqueue
    from nbqueue import group
    from nbqueue.middleware.group_callbacks import GroupCallbacks
    from nbqueue.results import Results
    from nbqueue.results.backends import RedisBackend as ResultsBackend
    from tests.brokers._redis import cleanup, make_broker

    created = []

    class Recording(RedisBackend):
        def add(self, key, value, ttl):
            created.append(key)  # the barrier's key is a bare uuid, outside the namespace
            return super().add(key, value, ttl)

    backend = Recording(client=backend.client)
    broker = make_broker(redis_url, namespace)
    results = ResultsBackend(url=redis_url, namespace=namespace, use_namespace_prefix_keys=True)
    broker.add_middleware(GroupCallbacks(backend))
    broker.add_middleware(Results(backend=results))
    nbqueue.set_broker(broker)
    calls, called = [], threading.Event()
    try:

        @nbqueue.actor(queue_name=namespace, store_results=True)
        def add(x, y=0):
            return x + y

        @nbqueue.actor(queue_name=namespace)
        def done(label):
            calls.append(label)
            called.set()

        worker = worker_factory(broker, worker_threads=4)
        g = group([add.message(1), add.message(2) | add.message(3), add.message(4)])
        g.add_completion_callback(done.message("all"))
        g.run()
        g.wait(timeout=10000)
        assert called.wait(10)
        broker.join(namespace, timeout=10000)
        assert calls == ["all"]
        worker.stop()
    finally:
        broker.close()
        results.close()
        cleanup(broker, namespace)
        for key in created:
            backend.client.delete(key, f"{key}@events")
