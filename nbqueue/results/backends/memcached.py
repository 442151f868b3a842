"""Dramatiq's import path of the memcached result backend; it lives in
``nbqueue._memcached.results``."""

from __future__ import annotations

from ..._memcached.results import MemcachedBackend

__all__ = ["MemcachedBackend"]
