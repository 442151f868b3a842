"""The in-memory rate limiter backend, for the in-memory broker and for tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from ..backend import RateLimiterBackend

__all__ = ["StubBackend"]


class StubBackend(RateLimiterBackend):
    """Keep counters and events in memory, in this process.

    Thread-safe: every operation holds one lock. ``wait`` sleeps on a condition variable and
    wakes the moment ``wait_notify`` publishes; an event published earlier is seen at once
    while it lives, so a late waiter cannot miss it (Dramatiq's stub loses such wake-ups).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published = threading.Condition(self._lock)
        #: key -> (value, monotonic expiry time in seconds)
        self.db: dict[str, tuple[int, float]] = {}
        #: event key -> monotonic expiry time in seconds
        self.events: dict[str, float] = {}

    def __repr__(self) -> str:
        return "StubBackend()"

    def _get(self, key: str) -> int | None:
        entry = self.db.get(key)
        if entry is None:
            return None
        value, expiry = entry
        if time.monotonic() >= expiry:
            del self.db[key]
            return None
        return value

    def _put(self, key: str, value: int, ttl: int) -> bool:
        self.db[key] = (value, time.monotonic() + ttl / 1000)
        return True

    def add(self, key: str, value: int, ttl: int) -> bool:
        with self._lock:
            if self._get(key) is not None:
                return False
            return self._put(key, value, ttl)

    def incr(self, key: str, amount: int, maximum: int, ttl: int) -> bool:
        with self._lock:
            value = (self._get(key) or 0) + amount
            if value > maximum:
                return False
            return self._put(key, value, ttl)

    def decr(self, key: str, amount: int, minimum: int, ttl: int) -> bool:
        with self._lock:
            value = (self._get(key) or 0) - amount
            if value < minimum:
                return False
            return self._put(key, value, ttl)

    def incr_and_sum(
        self,
        key: str,
        keys: Callable[[], Iterable[str]],
        amount: int,
        maximum: int,
        ttl: int,
    ) -> bool:
        with self._lock:
            current = self._get(key)
            if current is None:
                current = 0
                self._put(key, 0, ttl)
            value = current + amount
            if value > maximum:
                return False
            key_list = keys() if callable(keys) else keys
            total = amount + sum(self._get(k) or 0 for k in key_list)
            if total > maximum:
                return False
            return self._put(key, value, ttl)

    def _event_alive(self, key: str) -> bool:
        expiry = self.events.get(key)
        if expiry is None:
            return False
        if time.monotonic() >= expiry:
            del self.events[key]
            return False
        return True

    def wait(self, key: str, timeout: int | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        with self._lock:
            while not self._event_alive(key):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._published.wait(remaining)
            return True

    def wait_notify(self, key: str, ttl: int) -> None:
        with self._lock:
            self.events[key] = time.monotonic() + ttl / 1000
            self._published.notify_all()
