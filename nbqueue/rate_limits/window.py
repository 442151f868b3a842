"""WindowRateLimiter: at most ``limit`` acquisitions in any sliding window of seconds."""

from __future__ import annotations

import time

from .backend import RateLimiterBackend
from .rate_limiter import RateLimiter

__all__ = ["WindowRateLimiter"]


class WindowRateLimiter(RateLimiter):
    """Allow at most ``limit`` acquisitions in the last ``window`` seconds.

    The window is in **seconds**, not milliseconds (as in Dramatiq): one counter is kept per
    second (key ``"<key>@<unix second>"``) and summed over the window.

    Parameters:
      backend: where the counters live.
      key: the name of the limit.
      limit: acquisitions allowed per window.
      window: the window length, in seconds; wider windows cost more to check.

    Raises:
      ValueError: ``limit`` or ``window`` is smaller than 1.
    """

    def __init__(
        self, backend: RateLimiterBackend, key: str, *, limit: int = 1, window: int = 1
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}.")
        if window < 1:
            raise ValueError(f"window must be at least 1 second, got {window!r}.")
        super().__init__(backend, key)
        self.limit = limit
        self.window = window
        self.window_millis = window * 1000

    def _get_keys(self) -> list[str]:
        now = int(time.time())
        return [f"{self.key}@{now - i}" for i in range(self.window)]

    def _acquire(self) -> bool:
        return self.backend.incr_and_sum(
            self._get_keys()[0],
            self._get_keys,
            1,
            maximum=self.limit,
            ttl=self.window_millis,
        )

    def _release(self) -> None:
        # Acquisitions count against the window until they age out of it.
        pass
