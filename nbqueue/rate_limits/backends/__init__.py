"""Rate limiter backends: ``StubBackend`` (in memory) and ``RedisBackend`` (needs
``nbqueue[redis]``).

``RedisBackend`` is imported on first use, so ``import nbqueue`` works without the redis package.
"""

from __future__ import annotations

from ...common import lazy_redis_backend
from .stub import StubBackend

# RedisBackend is left out of __all__ so that ``from ... import *`` works without redis.
__all__ = ["StubBackend"]

__getattr__ = lazy_redis_backend(__name__)


def __dir__() -> list[str]:
    return sorted([*globals(), "RedisBackend"])
