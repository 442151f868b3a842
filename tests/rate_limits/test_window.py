from __future__ import annotations

import types

import pytest

from nbqueue.rate_limits import WindowRateLimiter
from nbqueue.rate_limits import window as window_module
from nbqueue.rate_limits.backends import StubBackend


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The window module's wall clock, in seconds; tests move it forward."""
    now = [1_700_000_000.0]
    monkeypatch.setattr(window_module, "time", types.SimpleNamespace(time=lambda: now[0]))
    return now


def acquire(limiter: WindowRateLimiter) -> bool:
    with limiter.acquire(raise_on_failure=False) as acquired:
        return acquired


def test_the_limit_applies_across_the_whole_window(clock: list[float]) -> None:
    limiter = WindowRateLimiter(StubBackend(), "k", limit=2, window=3)
    assert acquire(limiter)
    clock[0] += 1
    assert acquire(limiter)
    clock[0] += 1
    assert not acquire(limiter)  # two in the last three seconds
    clock[0] += 1
    assert acquire(limiter)  # the first one left the window


def test_keys_are_one_per_second(clock: list[float]) -> None:
    backend = StubBackend()
    limiter = WindowRateLimiter(backend, "k", limit=5, window=2)
    acquire(limiter)
    assert list(backend.db) == ["k@1700000000"]
    assert limiter._get_keys() == ["k@1700000000", "k@1699999999"]


def test_window_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="limit"):
        WindowRateLimiter(StubBackend(), "k", limit=0)
    with pytest.raises(ValueError, match="window"):
        WindowRateLimiter(StubBackend(), "k", window=0)
