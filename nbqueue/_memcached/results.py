"""The memcached result backend: Dramatiq's keys and stored values, and reads that poll briefly."""

from __future__ import annotations

import time
from typing import Any

from ..common import compute_backoff
from ..encoder import Encoder
from ..errors import BrokerError, EncodeError
from ..results.backend import Missing, ResultBackend
from .client import MemcachedConnection, expiry, pylibmc

__all__ = ["MemcachedBackend"]

#: The first pause of a blocking read, in milliseconds; each pause then doubles (with jitter).
POLL_FIRST = 2

#: The longest pause between two looks of a blocking read, in milliseconds.
POLL_MAX = 50


class MemcachedBackend(ResultBackend):
    """Store results in memcached, readable by Dramatiq's MemcachedBackend and the reverse.

    A result is the encoded value under the key Dramatiq uses (the MD5 of
    ``"<namespace>:<queue>:<actor>:<message id>"``), stored with pylibmc as plain bytes and
    expiring after the result TTL. memcached has no blocking read, so a blocking ``get_result``
    looks again after pauses that start at 2 ms and grow to at most 50 ms (Dramatiq's start at
    100 ms and grow to 2 s). TTLs are kept to the second, at least as long as asked.

    memcached is a cache: it evicts items when its memory is full, and loses everything when it
    restarts; a result can then be missing although it was stored. A read cut off by its
    deadline (a hung server) also looks like a missing result the first time, as libmemcached
    reports it; the calls after it fail with ``ConnectionFailed`` while pylibmc skips the server.

    The live channel (status, progress, output) cannot be kept in memcached:
    ``live_transport()`` answers ``None``, and the broker's own server carries it (Redis), or
    this process.

    Example::

        backend = MemcachedBackend(servers=["127.0.0.1:11211"])
        broker.add_middleware(Results(backend=backend))

    Parameters:
      namespace, encoder, use_namespace_prefix_keys: see ``ResultBackend``.
      pool: a ready ``pylibmc.ClientPool``; used as is (its clients' behaviors apply).
      pool_size: how many clients the pool holds (one per thread that uses it at once).
      parameters: ``pylibmc.Client`` options: ``servers=`` (default ``["127.0.0.1:11211"]``),
        ``binary=``, ``username=``, ``password=``, ``behaviors=`` (nbqueue's deadlines apply
        unless overridden: 3 s to connect and for each reply).

    Reads and writes raise ``ConnectionFailed`` or ``ConnectionClosed`` when the server cannot
    be reached or does not answer in time, and ``BrokerError`` when it answers with an error.

    Raises:
      ValueError: ``pool_size`` is smaller than 1.
    """

    def __init__(
        self,
        *,
        namespace: str = "dramatiq-results",
        encoder: Encoder | None = None,
        use_namespace_prefix_keys: bool = False,
        pool: Any = None,
        pool_size: int = 8,
        **parameters: Any,
    ) -> None:
        super().__init__(
            namespace=namespace,
            encoder=encoder,
            use_namespace_prefix_keys=use_namespace_prefix_keys,
        )
        self.connection = MemcachedConnection(pool=pool, pool_size=pool_size, **parameters)
        self.pool = self.connection.pool

    def __repr__(self) -> str:
        return f"MemcachedBackend({self.connection.where!r}, namespace={self.namespace!r})"

    def _get(self, message_key: str) -> Any:
        with self.connection.client() as client:
            data = client.get(message_key)
        if data is None:
            return Missing
        return self.encoder.decode(data)

    def _store(self, message_key: str, result: Any, ttl: int) -> None:
        if isinstance(result, dict) and isinstance(result.get("exn"), dict):
            # A failure's text may quote what it failed on: never store the SASL password.
            exn = {
                k: self.connection.scrub(v) if isinstance(v, str) else v
                for k, v in result["exn"].items()
            }
            result = {**result, "exn": exn}
        data = self.encoder.encode(result)
        with self.connection.client() as client:
            try:
                stored = client.set(message_key, data, time=expiry(ttl))
            except pylibmc.TooBig:
                # An EncodeError makes store_result store a (small) failure in its place, so
                # that a caller waiting for the result learns at once.
                raise EncodeError(
                    f"The encoded result is {len(data)} bytes, more than memcached at "
                    f"{self.connection.where} keeps in one item (1 MiB unless memcached runs "
                    f"with -I); return a smaller result, such as a path or an id, or raise the "
                    f"limit."
                ) from None
        if not stored:
            raise BrokerError(
                f"memcached at {self.connection.where} did not store the result under "
                f"{message_key!r}; check the server's memory and log."
            )

    def _wait(self, message_key: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        attempts = 0
        while True:
            attempts, pause = compute_backoff(attempts, factor=POLL_FIRST, max_backoff=POLL_MAX)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Missing
            time.sleep(min(pause / 1000, remaining))
            value = self._get(message_key)
            if value is not Missing:
                return value

    def close(self) -> None:
        """Disconnect the pool's clients, unless the pool was passed in."""
        self.connection.close()


# Dramatiq's import path is the public one (reprs, docs and pickled references name it).
MemcachedBackend.__module__ = "nbqueue.results.backends.memcached"
