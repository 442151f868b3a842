"""The memcached rate limiter backend, on a real memcached; keys start with the test's namespace
and are deleted after it, or expire within a minute."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import nbqueue
from nbqueue import group
from nbqueue.errors import BrokerError
from nbqueue.middleware.group_callbacks import GroupCallbacks
from nbqueue.rate_limits import (
    Barrier,
    BucketRateLimiter,
    ConcurrentRateLimiter,
    RateLimitExceeded,
    WindowRateLimiter,
)
from nbqueue.rate_limits.backends import MemcachedBackend
from nbqueue.results import Results
from nbqueue.results.backends import StubBackend as ResultsStub
from tests._memcached import forget, raw_client, remaining_ttl

pytestmark = pytest.mark.memcached


class RecordingBackend(MemcachedBackend):
    """Remembers the keys it creates, so that the test deletes exactly those."""

    created: list[str]

    def add(self, key, value, ttl):
        self.created.append(key)
        return super().add(key, value, ttl)

    def wait_notify(self, key, ttl):
        self.created.append(key)
        super().wait_notify(key, ttl)


@pytest.fixture
def backend(memcached_server, namespace):
    backend = RecordingBackend(servers=[memcached_server])
    backend.created = []
    yield backend
    forget(memcached_server, backend.created)
    backend.close()


@pytest.fixture
def raw(memcached_server):
    client = raw_client(memcached_server)
    yield client
    client.disconnect_all()


def test_add_sets_a_key_only_when_it_is_absent(backend, raw, memcached_server, namespace):
    key = f"{namespace}:k"
    assert backend.add(key, 3, 60000)
    assert not backend.add(key, 5, 60000)
    assert raw.get(key) == 3  # an int, as pylibmc stores ints (and Dramatiq's backend does)
    assert 30 <= remaining_ttl(memcached_server, key) <= 61  # never more than a second extra


def test_incr_and_decr_stop_at_their_bounds_and_reset_the_ttl(
    backend, raw, memcached_server, namespace
):
    key = f"{namespace}:k"
    backend.created.append(key)
    assert backend.incr(key, 1, 2, 60000)  # a missing key counts as 0
    assert backend.incr(key, 1, 2, 60000)
    # Refused, and not counted: Dramatiq's memcached backend would leave 3 here.
    assert not backend.incr(key, 1, 2, 60000)
    assert raw.get(key) == 2
    assert backend.decr(key, 1, 1, 600000)
    assert not backend.decr(key, 1, 1, 600000)
    assert raw.get(key) == 1
    assert 61 < remaining_ttl(memcached_server, key) <= 601  # the decr set the TTL again


def test_decr_of_a_missing_key_counts_from_zero(backend, raw, namespace):
    key = f"{namespace}:k"
    backend.created.append(key)
    assert not backend.decr(key, 1, 0, 60000)
    assert raw.get(key) is None
    assert backend.decr(key, 1, -5, 60000)
    assert raw.get(key) == -1


def test_incr_and_sum_checks_the_sum_over_the_window(backend, raw, namespace):
    older, current = f"{namespace}:k@1", f"{namespace}:k@2"
    backend.add(older, 2, 10000)
    backend.created.append(current)

    def keys() -> list[str]:
        return [current, older]

    assert backend.incr_and_sum(current, keys, 1, 3, 10000)
    assert not backend.incr_and_sum(current, keys, 1, 3, 10000)
    assert raw.get(current) == 1


def test_a_counter_that_is_not_a_number_is_named(backend, raw, namespace):
    key = f"{namespace}:text"
    backend.created.append(key)
    raw.set(key, b"not a number")
    with pytest.raises(BrokerError, match=f"'{key}' holds b'not a number', not a counter"):
        backend.incr(key, 1, 5, 10000)


def test_concurrent_increments_never_pass_the_maximum(backend, raw, namespace):
    # Eight threads race for four slots, many times over: compare-and-swap keeps it exact, and
    # every release finds its slot (a read that missed the counter once leaked slots here).
    limiter = ConcurrentRateLimiter(backend, f"{namespace}:slots", limit=4, ttl=60000)
    backend.created.append(limiter.key)
    lock = threading.Lock()
    holding, peak, acquired = 0, 0, 0
    start = threading.Barrier(8)

    def work() -> None:
        nonlocal holding, peak, acquired
        start.wait()
        for _ in range(250):
            with limiter.acquire(raise_on_failure=False) as ok:
                if not ok:
                    continue
                with lock:
                    holding += 1
                    acquired += 1
                    peak = max(peak, holding)
                with lock:
                    holding -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert 0 < peak <= 4
    assert acquired > 0
    assert raw.get(limiter.key) == 0  # every slot given back


def test_counters_are_read_right_whatever_the_allocator_does(memcached_server, namespace):
    # pylibmc 1.6.3's gets() frees a str key before sending it; the debug allocator overwrites
    # freed memory at once, so a backend that handed it str keys would miss every counter here.
    code = textwrap.dedent(
        f"""
        from nbqueue.rate_limits.backends import MemcachedBackend
        backend = MemcachedBackend(servers=[{memcached_server!r}])
        key = {namespace!r} + ":debug-malloc"
        try:
            print(
                backend.add(key, 2, 60000),
                backend.decr(key, 1, 0, 60000),
                backend.incr(key, 1, 2, 60000),
                backend.incr_and_sum(key, lambda: [key], 1, 3, 60000),
            )
        finally:
            with backend.connection.client() as client:
                client.delete(key)
        """
    )
    env = {**os.environ, "PYTHONMALLOC": "debug", "PYTHONPATH": os.getcwd()}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True", "True"]


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


def test_wait_times_out_without_an_event(backend, namespace):
    started = time.monotonic()
    assert not backend.wait(f"{namespace}:nothing", 200)
    assert time.monotonic() - started >= 0.19  # it waited its 200 ms
    assert not backend.wait(f"{namespace}:nothing", 0)


def test_the_limiters_work_on_memcached(backend, namespace):
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


def test_a_barrier_releases_every_party_when_the_last_arrives(backend, raw, namespace):
    # Dramatiq's memcached backend cannot publish the release (wait_notify is not implemented).
    barrier = Barrier(backend, f"{namespace}:barrier", ttl=10000)
    assert barrier.create(parties=3)
    released: list[bool] = []
    waiters = [
        threading.Thread(target=lambda: released.append(barrier.wait(timeout=30000)))
        for _ in range(2)
    ]
    for waiter in waiters:
        waiter.start()
    deadline = time.monotonic() + 30
    while raw.get(barrier.key) != 1:  # both waiters have arrived
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert barrier.wait(block=False)
    for waiter in waiters:
        waiter.join(30)
    assert released == [True, True]


def test_group_callbacks_run_once_with_a_memcached_backend(backend, stub_broker, worker_factory):
    stub_broker.add_middleware(GroupCallbacks(backend))
    stub_broker.add_middleware(Results(backend=ResultsStub()))
    calls, called = [], threading.Event()

    @nbqueue.actor(store_results=True)
    def add(x, y=0):
        return x + y

    @nbqueue.actor
    def done(label):
        calls.append(label)
        called.set()

    worker_factory(stub_broker, worker_threads=4)
    g = group([add.message(1), add.message(2) | add.message(3), add.message(4)])
    g.add_completion_callback(done.message("all"))
    g.run()
    g.wait(timeout=30000)
    assert called.wait(30)
    stub_broker.join(add.queue_name, timeout=30000)
    assert calls == ["all"]
    assert len(backend.created) == 2  # the barrier and its release event, on memcached
