"""Dramatiq's import path of the Redis broker; it lives in ``nbqueue._redis.broker``."""

from __future__ import annotations

from .._redis.broker import (
    DEFAULT_DEAD_MESSAGE_TTL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    RedisBroker,
    RedisKeys,
)

__all__ = ["DEFAULT_DEAD_MESSAGE_TTL", "DEFAULT_HEARTBEAT_TIMEOUT", "RedisBroker", "RedisKeys"]
