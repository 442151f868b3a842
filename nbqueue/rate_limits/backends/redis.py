"""Dramatiq's import path of the Redis rate-limiter backend; it lives in
``nbqueue._redis.rate_limits``."""

from __future__ import annotations

from ..._redis.rate_limits import RedisBackend

__all__ = ["RedisBackend"]
