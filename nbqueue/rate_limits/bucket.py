"""BucketRateLimiter: at most ``limit`` acquisitions per fixed time bucket."""

from __future__ import annotations

import time

from .backend import RateLimiterBackend
from .rate_limiter import RateLimiter

__all__ = ["BucketRateLimiter"]


class BucketRateLimiter(RateLimiter):
    """Allow at most ``limit`` acquisitions per bucket of ``bucket`` milliseconds.

    Buckets are aligned to the clock (key ``"<key>@<bucket start ms>"``), which is cheap but lets
    up to twice the limit through around a bucket boundary; ``WindowRateLimiter`` does not.

    Parameters:
      backend: where the counters live.
      key: the name of the limit.
      limit: acquisitions allowed per bucket.
      bucket: the bucket length, in milliseconds.

    Raises:
      ValueError: ``limit`` or ``bucket`` is smaller than 1.
    """

    def __init__(
        self, backend: RateLimiterBackend, key: str, *, limit: int = 1, bucket: int = 1000
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}.")
        if bucket < 1:
            raise ValueError(f"bucket must be at least 1 ms, got {bucket!r}.")
        super().__init__(backend, key)
        self.limit = limit
        self.bucket = bucket

    def _acquire(self) -> bool:
        now = time.time_ns() // 1_000_000
        current_key = f"{self.key}@{now - now % self.bucket}"
        if self.backend.add(current_key, 1, ttl=self.bucket):
            return True
        return self.backend.incr(current_key, 1, maximum=self.limit, ttl=self.bucket)

    def _release(self) -> None:
        # A spent slot stays spent until its bucket ends.
        pass
