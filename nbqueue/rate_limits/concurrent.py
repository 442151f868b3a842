"""ConcurrentRateLimiter: at most ``limit`` holders at once (a distributed mutex at 1)."""

from __future__ import annotations

from .backend import RateLimiterBackend
from .rate_limiter import RateLimiter

__all__ = ["ConcurrentRateLimiter"]


class ConcurrentRateLimiter(RateLimiter):
    """Allow at most ``limit`` concurrent holders of ``key``; with ``limit=1`` it is a mutex.

    Parameters:
      backend: where the counter lives.
      key: the name of the limit.
      limit: how many holders may run at once.
      ttl: how long the counter lives, in milliseconds, so that a crashed holder does not keep
        its slot forever (default 15 minutes).

    Raises:
      ValueError: ``limit`` is smaller than 1.
    """

    def __init__(
        self, backend: RateLimiterBackend, key: str, *, limit: int = 1, ttl: int = 900000
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}.")
        super().__init__(backend, key)
        self.limit = limit
        self.ttl = ttl

    def _acquire(self) -> bool:
        if self.backend.add(self.key, 1, ttl=self.ttl):
            return True
        return self.backend.incr(self.key, 1, maximum=self.limit, ttl=self.ttl)

    def _release(self) -> None:
        self.backend.decr(self.key, 1, minimum=0, ttl=self.ttl)
