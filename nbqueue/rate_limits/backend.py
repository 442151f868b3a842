"""The contract rate limiters and barriers need from a storage backend."""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["RateLimiterBackend"]


class RateLimiterBackend:
    """Base class for rate limiter backends: atomic counters with TTLs, and events.

    Every ``ttl`` and ``timeout`` is in milliseconds. Keys are used as given (no namespace), as
    in Dramatiq, so nbqueue and Dramatiq processes share limits.
    """

    def add(self, key: str, value: int, ttl: int) -> bool:
        """Set ``key`` to ``value`` only if it does not exist.

        Returns:
          Whether the key was added.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement add(); rate limiter backends must "
            f"implement add, incr, decr, incr_and_sum, wait and wait_notify."
        )

    def incr(self, key: str, amount: int, maximum: int, ttl: int) -> bool:
        """Atomically add ``amount`` to ``key`` unless the result would exceed ``maximum``.

        A missing key counts as 0. The key's TTL is reset to ``ttl``.

        Returns:
          Whether the key was incremented.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement incr(); rate limiter backends must "
            f"implement add, incr, decr, incr_and_sum, wait and wait_notify."
        )

    def decr(self, key: str, amount: int, minimum: int, ttl: int) -> bool:
        """Atomically subtract ``amount`` from ``key`` unless the result would drop below
        ``minimum``.

        A missing key counts as 0. The key's TTL is reset to ``ttl``.

        Returns:
          Whether the key was decremented.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement decr(); rate limiter backends must "
            f"implement add, incr, decr, incr_and_sum, wait and wait_notify."
        )

    def incr_and_sum(
        self,
        key: str,
        keys: Callable[[], Iterable[str]],
        amount: int,
        maximum: int,
        ttl: int,
    ) -> bool:
        """Atomically add ``amount`` to ``key`` unless the sum over ``keys()`` plus ``amount``
        would exceed ``maximum``.

        Parameters:
          keys: returns the keys to sum over (``key`` among them); it is called while the
            operation runs, so the window is computed at the right moment.

        Returns:
          Whether the key was incremented.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement incr_and_sum(); rate limiter backends "
            f"must implement add, incr, decr, incr_and_sum, wait and wait_notify."
        )

    def wait(self, key: str, timeout: int | None) -> bool:
        """Block until an event is published on ``key`` or ``timeout`` passes.

        An event published before the call still counts while it lives (its ``ttl``), so a
        late waiter does not miss it.

        Parameters:
          timeout: in milliseconds; ``None`` waits forever.

        Returns:
          Whether an event was published.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement wait(); rate limiter backends must "
            f"implement add, incr, decr, incr_and_sum, wait and wait_notify."
        )

    def wait_notify(self, key: str, ttl: int) -> None:
        """Publish an event on ``key`` that lives for ``ttl`` milliseconds, waking every
        ``wait()`` on it."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement wait_notify(); rate limiter backends "
            f"must implement add, incr, decr, incr_and_sum, wait and wait_notify."
        )
