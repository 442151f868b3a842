from __future__ import annotations

import threading

import pytest

from nbqueue.errors import RateLimitExceeded
from nbqueue.rate_limits import ConcurrentRateLimiter
from nbqueue.rate_limits.backends import StubBackend


def test_a_limit_of_one_is_a_mutex() -> None:
    mutex = ConcurrentRateLimiter(StubBackend(), "mutex", limit=1)

    with mutex.acquire() as acquired:
        assert acquired
        with mutex.acquire(raise_on_failure=False) as again:
            assert not again
        with pytest.raises(RateLimitExceeded, match="'mutex'"):
            with mutex.acquire():
                pass  # pragma: no cover

    with mutex.acquire() as acquired:
        assert acquired


def test_a_failed_block_releases_its_slot() -> None:
    limiter = ConcurrentRateLimiter(StubBackend(), "k", limit=1)
    with pytest.raises(KeyError):
        with limiter.acquire():
            raise KeyError("x")
    with limiter.acquire() as acquired:
        assert acquired


def test_concurrency_never_exceeds_the_limit() -> None:
    limiter = ConcurrentRateLimiter(StubBackend(), "k", limit=3)
    lock = threading.Lock()
    running, peak, acquired_total = 0, 0, 0
    start = threading.Barrier(8)

    def work() -> None:
        nonlocal running, peak, acquired_total
        start.wait()
        for _ in range(200):
            with limiter.acquire(raise_on_failure=False) as acquired:
                if not acquired:
                    continue
                with lock:
                    running += 1
                    acquired_total += 1
                    peak = max(peak, running)
                with lock:
                    running -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert 0 < peak <= 3
    assert acquired_total > 0


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConcurrentRateLimiter(StubBackend(), "k", limit=0)
