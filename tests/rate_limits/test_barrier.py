from __future__ import annotations

import threading
import time
import uuid

import pytest

from nbqueue.rate_limits import Barrier
from nbqueue.rate_limits.backends import StubBackend


@pytest.fixture
def barrier() -> Barrier:
    return Barrier(StubBackend(), str(uuid.uuid4()), ttl=30000)


def test_only_the_last_party_clears_the_barrier(barrier: Barrier) -> None:
    assert barrier.create(3)
    assert [barrier.wait(block=False) for _ in range(3)] == [False, False, True]


def test_a_barrier_is_created_once(barrier: Barrier) -> None:
    assert barrier.create(2)
    assert not barrier.create(2)


def test_a_barrier_needs_a_party(barrier: Barrier) -> None:
    with pytest.raises(ValueError, match="at least one party"):
        barrier.create(0)


def test_blocked_parties_wake_when_the_last_one_arrives(barrier: Barrier) -> None:
    barrier.create(3)
    woke: list[bool] = []
    lock = threading.Lock()

    def party() -> None:
        # No timeout: only the last party's release can end this wait.
        cleared = barrier.wait(timeout=None)
        with lock:
            woke.append(cleared)

    threads = [threading.Thread(target=party, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    # Whether or not both already wait, the event published by the last party releases them.
    assert barrier.wait(block=False)
    for thread in threads:
        thread.join(30)

    assert woke == [True, True]


def test_a_blocking_wait_times_out(barrier: Barrier) -> None:
    barrier.create(2)
    start = time.monotonic()
    assert not barrier.wait(timeout=30)
    waited = time.monotonic() - start
    assert waited >= 0.029  # it waited its 30 ms
    assert waited < 10  # a hang guard: 30 ms taken as seconds would be 30 s
