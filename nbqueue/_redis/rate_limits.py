"""The Redis rate limiter backend: Dramatiq's raw keys, each operation one atomic script."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ..rate_limits.backend import RateLimiterBackend
from .client import RedisConnection, load_script, redis

__all__ = ["RedisBackend"]


class RedisBackend(RateLimiterBackend):
    """Keep rate limiter counters and barrier events in Redis.

    Keys are used as given, without a namespace, as in Dramatiq. ``wait`` blocks with
    ``BLMOVE`` and wakes the moment ``wait_notify`` publishes; sub-second timeouts work.

    Parameters:
      client: a ready ``redis.Redis``; used as is and never closed.
      url: a Redis URL; wins over the connection parameters.
      parameters: ``redis.Redis`` options; nbqueue's deadlines apply unless overridden.
    """

    def __init__(
        self, *, client: redis.Redis | None = None, url: str | None = None, **parameters: Any
    ) -> None:
        self.connection = RedisConnection(url, client=client, **parameters)
        self.client = self.connection.client
        self._incr = load_script(self.client, "rate_incr")
        self._decr = load_script(self.client, "rate_decr")
        self._incr_and_sum = load_script(self.client, "rate_incr_and_sum")

    def __repr__(self) -> str:
        return f"RedisBackend({self.connection.where!r})"

    def add(self, key: str, value: int, ttl: int) -> bool:
        with self.connection.errors():
            return bool(self.client.set(key, value, px=ttl, nx=True))

    def incr(self, key: str, amount: int, maximum: int, ttl: int) -> bool:
        with self.connection.errors():
            return bool(self._incr(keys=[key], args=[amount, maximum, ttl]))

    def decr(self, key: str, amount: int, minimum: int, ttl: int) -> bool:
        with self.connection.errors():
            return bool(self._decr(keys=[key], args=[amount, minimum, ttl]))

    def incr_and_sum(
        self,
        key: str,
        keys: Callable[[], Iterable[str]],
        amount: int,
        maximum: int,
        ttl: int,
    ) -> bool:
        window = list(keys() if callable(keys) else keys)
        with self.connection.errors():
            return bool(self._incr_and_sum(keys=[key, *window], args=[amount, maximum, ttl]))

    def wait(self, key: str, timeout: int | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        limit = self.connection.block_limit
        while True:
            block = limit
            if deadline is not None:
                block = min(block, deadline - time.monotonic())
            with self.connection.errors():
                if block < 0.002:
                    event = self.client.lindex(key, 0)
                else:
                    # From the list to itself: the event stays for every other waiter.
                    # Redis takes fractional seconds; redis-py annotates the timeout as int.
                    seconds: Any = round(block, 3)
                    event = self.client.blmove(key, key, seconds, "RIGHT", "RIGHT")
            if event == b"x" or event == "x":
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def wait_notify(self, key: str, ttl: int) -> None:
        with self.connection.errors():
            pipe = self.client.pipeline()
            pipe.rpush(key, b"x")
            pipe.pexpire(key, ttl)
            pipe.execute()

    def close(self) -> None:
        """Close the connections, unless the client was passed in."""
        self.connection.close()


# Dramatiq's import path is the public one (reprs, docs and pickled references name it).
RedisBackend.__module__ = "nbqueue.rate_limits.backends.redis"
