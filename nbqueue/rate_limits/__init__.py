"""Rate limits and barriers shared across processes through a backend.

``ConcurrentRateLimiter`` bounds how many run at once, ``BucketRateLimiter`` and
``WindowRateLimiter`` how many run per time period, and ``Barrier`` tells the last of N parties
that all arrived. Backends live in ``nbqueue.rate_limits.backends``.
"""

from __future__ import annotations

from ..errors import RateLimitExceeded
from .backend import RateLimiterBackend
from .barrier import Barrier
from .bucket import BucketRateLimiter
from .concurrent import ConcurrentRateLimiter
from .rate_limiter import RateLimiter
from .window import WindowRateLimiter

__all__ = [
    "Barrier",
    "BucketRateLimiter",
    "ConcurrentRateLimiter",
    "RateLimitExceeded",
    "RateLimiter",
    "RateLimiterBackend",
    "WindowRateLimiter",
]
