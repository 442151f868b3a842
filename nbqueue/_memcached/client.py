"""memcached clients shared by the memcached backends: a pylibmc pool with deadlines.

Every client gets deadlines for connecting and for each reply, taking a client from the pool
waits a bounded time, every pylibmc error becomes an nbqueue error that says what to do, and a
SASL password never reaches a repr or an error message.
"""

from __future__ import annotations

import contextlib
import math
import queue
import time
from collections.abc import Iterator
from typing import Any

try:
    import pylibmc
except ImportError as e:  # pragma: no cover - exercised with pylibmc hidden
    raise ImportError(
        "nbqueue's memcached support needs the pylibmc package: pip install 'nbqueue[memcached]'."
    ) from e

from ..errors import BrokerError, ConnectionClosed, ConnectionFailed

__all__ = ["MemcachedConnection", "expiry", "pylibmc"]

#: The server used when no ``servers=`` are given (memcached's own default port).
DEFAULT_SERVERS = ("127.0.0.1:11211",)

#: How long opening a connection may take, in seconds.
CONNECT_TIMEOUT = 3.0

#: How long a request may wait for the server to take it or to answer, in seconds.
IO_TIMEOUT = 3.0

#: How long a caller waits for a free client of the pool, in seconds.
POOL_TIMEOUT = 10.0

#: memcached reads an expiry time above 30 days as a Unix timestamp, not as seconds from now.
MAX_RELATIVE_EXPIRY = 30 * 24 * 3600


def default_behaviors() -> dict[str, Any]:
    """Return the pylibmc behaviors nbqueue uses unless told otherwise: deadlines on connecting
    (``connect_timeout``, ms), on every wait for the socket (``_poll_timeout``, ms) and on each
    send and receive (µs), so that a hung server fails a call within ``IO_TIMEOUT``."""
    return {
        "connect_timeout": int(CONNECT_TIMEOUT * 1000),
        "_poll_timeout": int(IO_TIMEOUT * 1000),
        "send_timeout": int(IO_TIMEOUT * 1_000_000),
        "receive_timeout": int(IO_TIMEOUT * 1_000_000),
        "tcp_nodelay": True,
    }


def expiry(ttl: int, now: float | None = None) -> int:
    """Return memcached's expiry time for a TTL in milliseconds.

    memcached counts whole seconds on a clock that ticks once a second, so an item set with
    expiry ``n`` lives between ``n - 1`` and ``n`` seconds. The TTL is rounded up to seconds
    and one second added: an item lives at least ``ttl`` and at most a second longer. (Dramatiq
    truncates instead, so its TTLs under a second mean "never expire".) Past 30 days the expiry
    is sent as a Unix timestamp, which is how memcached reads such values.

    Parameters:
      ttl: the TTL, in milliseconds; 0 and less live for the shortest time, one second.
      now: the current Unix time in seconds (for tests); defaults to ``time.time()``.
    """
    seconds = max(0, math.ceil(ttl / 1000)) + 1
    if seconds > MAX_RELATIVE_EXPIRY:
        return int(time.time() if now is None else now) + seconds
    return seconds


#: The server cannot be reached at all, or pylibmc marked it down after a failure (until its
#: ``retry_timeout`` passes).
_UNREACHABLE = (
    pylibmc.ConnectionError,
    pylibmc.ConnectionBindError,
    pylibmc.HostLookupError,
    pylibmc.NoServers,
    pylibmc.ServerDead,
    pylibmc.ServerDown,
)
#: The connection broke while a request was under way.
_BROKEN = (
    pylibmc.ReadError,
    pylibmc.SocketCreateError,
    pylibmc.UnknownReadFailure,
    pylibmc.WriteError,
)


def _look_at(pool: queue.Queue[Any], cas: bool) -> str | None:
    """Return the servers of a given pool's clients, and check that they can compare-and-swap
    when ``cas`` is asked for (``gets`` refuses otherwise); ``None`` when every client is in use.

    Raises:
      ValueError: ``cas`` is asked for and the clients cannot.
    """
    try:
        client = pool.get_nowait()
    except queue.Empty:
        return None  # in use: the first gets() will tell
    try:
        if cas and not client.behaviors.get("cas"):
            raise ValueError(
                "The clients of the given pylibmc pool need compare-and-swap: make them with "
                "pylibmc.Client(servers, behaviors={'cas': True})."
            )
        return ",".join(str(address) for address in client.addresses)
    finally:
        pool.put(client)


class MemcachedConnection:
    """A pool of pylibmc clients with bounded deadlines, plus what is needed to report errors.

    Parameters:
      pool: a ready ``pylibmc.ClientPool`` (or ``ThreadMappedPool``); used as is, its clients'
        own behaviors apply.
      pool_size: how many clients the pool holds when this makes it.
      behaviors: pylibmc behaviors; nbqueue's deadlines (``default_behaviors``) apply unless
        overridden here.
      cas: turn on compare-and-swap (the ``cas`` behavior), which ``gets`` needs.
      parameters: ``pylibmc.Client`` options: ``servers=`` (default ``["127.0.0.1:11211"]``),
        ``binary=``, ``username=``, ``password=``.

    Raises:
      ValueError: ``cas`` is asked for and the clients of ``pool`` lack it, or ``pool_size`` is
        smaller than 1.
    """

    def __init__(
        self,
        *,
        pool: Any = None,
        pool_size: int = 8,
        behaviors: dict[str, Any] | None = None,
        cas: bool = False,
        **parameters: Any,
    ) -> None:
        self._secret: str | None = parameters.get("password") or None
        self.owns_pool = pool is None
        if pool is None:
            if pool_size < 1:
                raise ValueError(f"pool_size must be at least 1, got {pool_size!r}.")
            servers = parameters.pop("servers", None) or list(DEFAULT_SERVERS)
            if isinstance(servers, str):
                servers = [servers]
            options = default_behaviors()
            options.update(behaviors or {})
            if cas:
                options["cas"] = True
            client = pylibmc.Client(list(servers), behaviors=options, **parameters)
            pool = pylibmc.ClientPool(client, pool_size)
            self.where = ",".join(str(server) for server in servers)
        else:
            where = _look_at(pool, cas) if isinstance(pool, queue.Queue) else None
            self.where = where or "a given pylibmc pool"
        self.pool = pool
        self.pool_size = pool_size

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """Lend a client of the pool for the block, turning its errors into nbqueue errors.

        Raises:
          ConnectionClosed: no client became free within ``POOL_TIMEOUT``, or the server did
            not answer in time.
          ConnectionFailed, BrokerError: see ``errors``.
        """
        if not isinstance(self.pool, queue.Queue):  # a ThreadMappedPool: one client per thread
            with self.pool.reserve() as client, self.errors():
                yield client
            return
        try:
            client = self.pool.get(True, POOL_TIMEOUT)
        except queue.Empty:
            raise ConnectionClosed(
                f"No client of the memcached pool for {self.where} was free within "
                f"{POOL_TIMEOUT} s; pass a larger pool_size= (one per thread that uses the "
                f"backend at once)."
            ) from None
        try:
            with self.errors():
                yield client
        finally:
            self.pool.put(client)

    def scrub(self, text: str) -> str:
        """Return ``text`` with the SASL password, if it appears, replaced by ``***``."""
        if self._secret and self._secret in text:
            return text.replace(self._secret, "***")
        return text

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn pylibmc errors raised inside the block into nbqueue errors.

        Raises:
          ConnectionFailed: the server cannot be reached (refused, unknown host, or marked
            down after a failure until pylibmc's retry timeout passes).
          ConnectionClosed: the connection dropped, or the server did not answer in time.
          BrokerError: the server answered with an error.
        """
        try:
            yield
        except _UNREACHABLE as e:
            raise ConnectionFailed(
                f"Could not reach memcached at {self.where} ({self.scrub(str(e))}); check that "
                f"the server is running and that servers= is right (after a failure, pylibmc "
                f"skips the server for its retry_timeout, 2 s by default)."
            ) from None
        except _BROKEN as e:
            raise ConnectionClosed(
                f"Lost the connection to memcached at {self.where} ({self.scrub(str(e))}); the "
                f"call may not have completed: check the server, then try again."
            ) from None
        except pylibmc.Error as e:
            text = self.scrub(str(e))
            # libmemcached's MEMCACHED_TIMEOUT has no exception class of its own in pylibmc.
            if "TIMEOUT" in text.upper():
                raise ConnectionClosed(
                    f"memcached at {self.where} did not answer in time ({text}); check that the "
                    f"server is running and not paused, or pass larger timeouts in behaviors= "
                    f"(a write that timed out may still take effect)."
                ) from None
            raise BrokerError(
                f"memcached at {self.where} answered with an error: {text}; check the server's log."
            ) from None

    def close(self) -> None:
        """Disconnect the pool's clients (they reconnect if used again), unless the pool was
        passed in."""
        if not self.owns_pool:
            return
        clients = []
        while True:
            try:
                clients.append(self.pool.get_nowait())
            except queue.Empty:
                break
        for client in clients:
            with contextlib.suppress(pylibmc.Error):
                client.disconnect_all()
            self.pool.put(client)
