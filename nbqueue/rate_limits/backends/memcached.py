"""Dramatiq's import path of the memcached rate-limiter backend; it lives in
``nbqueue._memcached.rate_limits``."""

from __future__ import annotations

from ..._memcached.rate_limits import MemcachedBackend

__all__ = ["MemcachedBackend"]
