from __future__ import annotations

import threading

import pytest

from nbqueue.rate_limits import RateLimiterBackend
from nbqueue.rate_limits.backends import StubBackend


@pytest.fixture
def backend() -> StubBackend:
    return StubBackend()


def test_add_sets_a_key_only_when_it_is_absent(backend: StubBackend) -> None:
    assert backend.add("k", 3, 1000)
    assert not backend.add("k", 5, 1000)
    assert backend.db["k"][0] == 3


def test_incr_stops_at_the_maximum(backend: StubBackend) -> None:
    assert backend.incr("k", 1, 2, 1000)
    assert backend.incr("k", 1, 2, 1000)
    assert not backend.incr("k", 1, 2, 1000)
    assert backend.db["k"][0] == 2


def test_decr_stops_at_the_minimum(backend: StubBackend) -> None:
    backend.add("k", 2, 1000)
    assert backend.decr("k", 1, 1, 1000)
    assert not backend.decr("k", 1, 1, 1000)
    assert backend.db["k"][0] == 1


def test_expired_keys_count_as_absent(backend: StubBackend) -> None:
    backend.add("k", 5, 0)
    assert backend.add("k", 1, 1000)
    backend.add("gone", 5, 0)
    assert backend.incr("gone", 1, 1, 1000)


def test_incr_and_sum_checks_the_sum_over_all_keys(backend: StubBackend) -> None:
    backend.add("k@1", 2, 1000)

    def keys() -> list[str]:
        return ["k@2", "k@1"]

    assert backend.incr_and_sum("k@2", keys, 1, 3, 1000)
    assert not backend.incr_and_sum("k@2", keys, 1, 3, 1000)
    assert backend.db["k@2"][0] == 1


def test_wait_returns_when_an_event_is_published(backend: StubBackend) -> None:
    woke: list[bool] = []
    # No timeout: only the event can end the wait; it lives a minute, so a waiter that starts
    # after it was published still sees it.
    thread = threading.Thread(target=lambda: woke.append(backend.wait("e", None)), daemon=True)
    thread.start()
    backend.wait_notify("e", 60000)
    thread.join(30)
    assert woke == [True]


def test_waiting_after_the_event_returns_at_once(backend: StubBackend) -> None:
    backend.wait_notify("e", 1000)
    assert backend.wait("e", 0)


def test_wait_times_out_without_an_event(backend: StubBackend) -> None:
    assert not backend.wait("e", 20)
    backend.wait_notify("e", 0)  # published, but already expired
    assert not backend.wait("e", 0)


def test_the_base_class_names_the_missing_method() -> None:
    with pytest.raises(NotImplementedError, match="does not implement add"):
        RateLimiterBackend().add("k", 1, 1000)


def test_redis_backend_names_the_extra_when_redis_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    import nbqueue.rate_limits.backends as backends

    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'nbqueue\[redis\]'"):
        backends.RedisBackend  # noqa: B018
