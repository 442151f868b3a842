"""The rate limiter base class: a context manager that acquires a slot or refuses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import RateLimitExceeded
from .backend import RateLimiterBackend

__all__ = ["RateLimiter"]


class RateLimiter:
    """Base class for rate limiters.

    Example::

        mutex = ConcurrentRateLimiter(backend, "reports-mutex", limit=1)
        with mutex.acquire(raise_on_failure=False) as acquired:
            if not acquired:
                return
            build_report()

    Parameters:
      backend: where the counters live; every process sharing a limit uses the same backend.
      key: the name of the limit.
    """

    def __init__(self, backend: RateLimiterBackend, key: str) -> None:
        self.backend = backend
        self.key = key

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r}, {self.key!r})"

    def _acquire(self) -> bool:
        """Try to take a slot; return whether it was taken."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement _acquire(); rate limiters must "
            f"implement _acquire() and _release()."
        )

    def _release(self) -> None:
        """Give back a slot taken by ``_acquire``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement _release(); rate limiters must "
            f"implement _acquire() and _release()."
        )

    @contextmanager
    def acquire(self, *, raise_on_failure: bool = True) -> Iterator[bool]:
        """Take a slot for the duration of the ``with`` block. Does not block.

        Parameters:
          raise_on_failure: raise when no slot is free; when False, the block runs anyway and
            receives whether the slot was taken.

        Raises:
          RateLimitExceeded: no slot was free and ``raise_on_failure`` is True. Raised inside
            an actor, the Retries middleware retries the message later.
        """
        acquired = False
        try:
            acquired = self._acquire()
            if raise_on_failure and not acquired:
                raise RateLimitExceeded(
                    f"Rate limit exceeded for key {self.key!r}; try again later, or use "
                    f"acquire(raise_on_failure=False) to check without raising."
                )
            yield acquired
        finally:
            if acquired:
                self._release()
