"""Result backends: ``StubBackend`` (in memory), ``RedisBackend`` (needs ``nbqueue[redis]``) and
``MemcachedBackend`` (needs ``nbqueue[memcached]``).

The server backends are imported on first use, so ``import nbqueue`` works without redis or
pylibmc.
"""

from __future__ import annotations

from ...common import LAZY_BACKENDS, lazy_backends
from .stub import StubBackend

# The server backends are left out of __all__ so that ``from ... import *`` works without their
# client packages.
__all__ = ["StubBackend"]

__getattr__ = lazy_backends(__name__)


def __dir__() -> list[str]:
    return sorted([*globals(), *LAZY_BACKENDS])
