"""The memcached rate limiter backend: Dramatiq's raw keys and integer values, kept exact with
compare-and-swap.

pylibmc 1.6.3's ``gets`` (the read that returns a CAS token) frees a ``str`` key's encoded bytes
before it sends them, so another thread's allocation can overwrite the key in flight: the read
then misses (refusing a release and leaking a slot) or sends garbage (and pylibmc marks the
server down). ``gets`` is therefore always given ``bytes``, which it leaves alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ..common import compute_backoff
from ..errors import BrokerError
from ..rate_limits.backend import RateLimiterBackend
from .client import MemcachedConnection, expiry, pylibmc

__all__ = ["MemcachedBackend"]

#: How long one operation may keep losing compare-and-swap races before it gives up, in seconds.
CAS_DEADLINE = 10.0

#: The first and the longest pause between two looks of ``wait``, in milliseconds.
POLL_FIRST = 2
POLL_MAX = 50

#: The value of a published event.
_EVENT = b"x"


def _count(key: str, value: Any) -> int:
    """Return a counter's value as an int (pylibmc decodes what it stored as int; another
    client may have stored digits as bytes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BrokerError(
            f"The memcached key {key!r} holds {value!r}, not a counter; use a key of its own "
            f"for each rate limiter."
        ) from None


class MemcachedBackend(RateLimiterBackend):
    """Keep rate limiter counters and barrier events in memcached.

    Keys are used as given, without a namespace, and counters are stored as pylibmc stores
    ints, as in Dramatiq, so nbqueue and Dramatiq processes share limits. Every operation keeps
    the contract of ``RateLimiterBackend`` exactly: ``incr`` and ``decr`` change a counter only
    when the result stays within its bound, and reset its TTL, with compare-and-swap (Dramatiq
    uses memcached's ``incr``/``decr``, which count a refused acquisition and never reset the
    TTL). TTLs are kept to the second, at least as long as asked.

    ``wait`` looks for the event after pauses that start at 2 ms and grow to at most 50 ms
    (memcached has no blocking read), so ``Barrier`` and group callbacks work here; Dramatiq's
    memcached backend cannot wait or publish events.

    memcached is a cache: under memory pressure it may evict a counter, which then counts as
    0 again.

    Example::

        backend = MemcachedBackend(servers=["127.0.0.1:11211"])
        mutex = ConcurrentRateLimiter(backend, "distributed-mutex", limit=1)

    Parameters:
      pool: a ready ``pylibmc.ClientPool`` whose clients have ``behaviors={"cas": True}``;
        used as is.
      pool_size: how many clients the pool holds (one per thread that uses it at once).
      parameters: ``pylibmc.Client`` options: ``servers=`` (default ``["127.0.0.1:11211"]``),
        ``binary=``, ``username=``, ``password=``, ``behaviors=`` (``cas`` is always turned on;
        nbqueue's deadlines apply unless overridden: 3 s to connect and for each reply).

    Every operation raises ``ConnectionFailed`` or ``ConnectionClosed`` when the server cannot
    be reached or does not answer in time, and ``BrokerError`` when it answers with an error.

    Raises:
      ValueError: the clients of ``pool`` lack the ``cas`` behavior, or ``pool_size`` is
        smaller than 1.
    """

    def __init__(self, *, pool: Any = None, pool_size: int = 8, **parameters: Any) -> None:
        self.connection = MemcachedConnection(
            pool=pool, pool_size=pool_size, cas=True, **parameters
        )
        self.pool = self.connection.pool

    def __repr__(self) -> str:
        return f"MemcachedBackend({self.connection.where!r})"

    def add(self, key: str, value: int, ttl: int) -> bool:
        with self.connection.client() as client:
            return bool(client.add(key, value, time=expiry(ttl)))

    def incr(self, key: str, amount: int, maximum: int, ttl: int) -> bool:
        return self._change(key, amount, lambda value: value <= maximum, ttl)

    def decr(self, key: str, amount: int, minimum: int, ttl: int) -> bool:
        return self._change(key, -amount, lambda value: value >= minimum, ttl)

    def _change(self, key: str, delta: int, allowed: Callable[[int], bool], ttl: int) -> bool:
        """Add ``delta`` to the counter (a missing one counts as 0) if ``allowed`` the result."""
        raw = key.encode("utf-8")  # for gets: see the module docstring
        seconds = expiry(ttl)
        deadline = time.monotonic() + CAS_DEADLINE
        with self.connection.client() as client:
            while True:
                value, token = client.gets(raw)
                if token is not None:
                    changed = _count(key, value) + delta
                    if not allowed(changed):
                        return False
                    if self._swap(client, key, changed, token, seconds):
                        return True
                else:
                    if not allowed(delta):
                        return False
                    if client.add(key, delta, time=seconds):
                        return True
                self._check(key, deadline)

    def incr_and_sum(
        self,
        key: str,
        keys: Callable[[], Iterable[str]],
        amount: int,
        maximum: int,
        ttl: int,
    ) -> bool:
        raw = key.encode("utf-8")  # for gets: see the module docstring
        seconds = expiry(ttl)
        deadline = time.monotonic() + CAS_DEADLINE
        with self.connection.client() as client:
            client.add(key, 0, time=seconds)
            while True:
                value, token = client.gets(raw)
                if token is None:  # expired or evicted since it was added
                    client.add(key, 0, time=seconds)
                else:
                    changed = _count(key, value) + amount
                    if changed > maximum:
                        return False
                    # The key's own count is the one read with its token, not a second read.
                    others = [k for k in (keys() if callable(keys) else keys) if k != key]
                    found = client.get_multi(others) if others else {}
                    total = changed + sum(_count(k, v) for k, v in found.items())
                    if total > maximum:
                        return False
                    if self._swap(client, key, changed, token, seconds):
                        return True
                self._check(key, deadline)

    @staticmethod
    def _swap(client: Any, key: str, value: int, token: int, seconds: int) -> bool:
        """Store ``value`` if the key still has the CAS ``token``; False when it changed."""
        try:
            return bool(client.cas(key, value, token, seconds))
        except pylibmc.NotFound:  # deleted or expired since it was read
            return False

    def _check(self, key: str, deadline: float) -> None:
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"The memcached counter {key!r} changed under every attempt for "
                f"{CAS_DEADLINE} s; too many processes update it at once: spread the load over "
                f"more keys, or use the Redis backend."
            )

    def wait(self, key: str, timeout: int | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        attempts = 0
        while True:
            with self.connection.client() as client:
                if client.get(key) is not None:
                    return True
            attempts, pause = compute_backoff(attempts, factor=POLL_FIRST, max_backoff=POLL_MAX)
            pause /= 1000
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                pause = min(pause, remaining)
            time.sleep(pause)

    def wait_notify(self, key: str, ttl: int) -> None:
        with self.connection.client() as client:
            stored = client.set(key, _EVENT, time=expiry(ttl))
        if not stored:
            raise BrokerError(
                f"memcached at {self.connection.where} did not store the event {key!r}; check "
                f"the server's memory and log."
            )

    def close(self) -> None:
        """Disconnect the pool's clients, unless the pool was passed in."""
        self.connection.close()


# Dramatiq's import path is the public one (reprs, docs and pickled references name it).
MemcachedBackend.__module__ = "nbqueue.rate_limits.backends.memcached"
