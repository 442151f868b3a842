"""Dramatiq's import path of the Redis broker; it lives in ``nbqueue._redis.broker``."""

from __future__ import annotations

from .._redis.broker import RedisBroker, RedisKeys

__all__ = ["RedisBroker", "RedisKeys"]
