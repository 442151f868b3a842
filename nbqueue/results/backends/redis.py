"""Dramatiq's import path of the Redis result backend; it lives in ``nbqueue._redis.results``."""

from __future__ import annotations

from ..._redis.results import RedisBackend

__all__ = ["RedisBackend"]
