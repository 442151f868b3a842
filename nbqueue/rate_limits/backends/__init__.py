"""Rate limiter backends: ``StubBackend`` (in memory) and ``RedisBackend`` (needs
``nbqueue[redis]``).

``RedisBackend`` is imported on first use, so ``import nbqueue`` works without the redis package.
"""

from __future__ import annotations

import importlib
from typing import Any

from .stub import StubBackend

# RedisBackend is left out of __all__ so that ``from ... import *`` works without redis.
__all__ = ["StubBackend"]

_LAZY = ("RedisBackend",)


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        try:
            importlib.import_module("redis")
        except ImportError as e:
            raise ImportError(
                "RedisBackend needs the redis package: pip install 'nbqueue[redis]'."
            ) from e
        # Imported by name: type checkers need neither redis nor the module until it is used.
        return importlib.import_module(f"{__name__}.redis").RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
