from __future__ import annotations

import types

import pytest

from nbqueue.rate_limits import BucketRateLimiter
from nbqueue.rate_limits import bucket as bucket_module
from nbqueue.rate_limits.backends import StubBackend


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bucket module's wall clock, in milliseconds; tests move it forward."""
    now = [1_700_000_000_000]
    fake = types.SimpleNamespace(time_ns=lambda: now[0] * 1_000_000)
    monkeypatch.setattr(bucket_module, "time", fake)
    return now


def test_only_limit_acquisitions_fit_in_a_bucket(clock: list[int]) -> None:
    limiter = BucketRateLimiter(StubBackend(), "k", limit=2, bucket=1000)
    results = []
    for _ in range(3):
        with limiter.acquire(raise_on_failure=False) as acquired:
            results.append(acquired)
    assert results == [True, True, False]


def test_the_next_bucket_starts_empty(clock: list[int]) -> None:
    backend = StubBackend()
    limiter = BucketRateLimiter(backend, "k", limit=1, bucket=1000)
    with limiter.acquire() as acquired:
        assert acquired
    clock[0] += 1000
    with limiter.acquire() as acquired:
        assert acquired
    assert sorted(backend.db) == ["k@1700000000000", "k@1700000001000"]


def test_bucket_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="limit"):
        BucketRateLimiter(StubBackend(), "k", limit=0)
    with pytest.raises(ValueError, match="bucket"):
        BucketRateLimiter(StubBackend(), "k", bucket=0)
