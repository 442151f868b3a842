"""Redis Sentinel by URL: ``redis+sentinel://[[user]:password@]h1:26379,h2:26379/mymaster/0``.

The URL names the sentinels (port 26379 unless given), the master's service name and the
database; the password in the URL is the data servers' (master and replicas). The client is
redis-py's ``Sentinel(...).master_for(name)``: its pool asks the sentinels where the master is
whenever it opens a connection, and a connection that finds it talks to a demoted master
(``READONLY``) drops and reconnects. ``rediss+sentinel://`` speaks TLS to the sentinels and to
the data servers.

Query options (all optional)::

    sentinel_username, sentinel_password   credentials of the sentinels (AUTH), if they need any
    socket_timeout, socket_connect_timeout deadlines of each command and connection, in seconds
    failover_wait                          how long a call keeps retrying a lost connection while
                                           the sentinels elect a new master, in seconds (10)
    min_other_sentinels                    ignore a sentinel that sees fewer peers than this (0)
    ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs
                                           TLS settings (rediss+sentinel:// only)
    min_replicas, wait_timeout             see RedisBroker (any Redis URL takes them)
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

__all__ = [
    "DEFAULT_FAILOVER_WAIT",
    "FailoverRetry",
    "SENTINEL_SCHEMES",
    "SentinelURL",
    "is_sentinel_url",
    "parse_sentinel_url",
    "sentinel_pool",
]

#: The URL schemes served here.
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")

#: How long one call retries lost connections during a failover, in seconds.
DEFAULT_FAILOVER_WAIT = 10.0

#: The port of a sentinel when the URL gives none.
SENTINEL_PORT = 26379

EXPECTED_FORM = "redis+sentinel://[:password@]host1:26379,host2:26379/mymaster/0"

_FLOATS = ("socket_timeout", "socket_connect_timeout", "failover_wait")
_TLS_ONLY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_STRINGS = ("sentinel_username", "sentinel_password", *_TLS_ONLY)
#: Options the broker reads (see RedisBroker); any Redis URL may carry them.
BROKER_OPTIONS = ("min_replicas", "wait_timeout")
_OPTIONS = (*_FLOATS, *_STRINGS, "min_other_sentinels", *BROKER_OPTIONS)

T = TypeVar("T")


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names Redis servers through sentinels."""
    return url.split(":", 1)[0].lower() in SENTINEL_SCHEMES


def _bad(url_text: str, why: str) -> ValueError:
    return ValueError(f"Bad Redis Sentinel URL {url_text!r}: {why}; expected {EXPECTED_FORM}.")


@dataclasses.dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL (the passwords are left out of its repr)."""

    sentinels: list[tuple[str, int]]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)
    tls: bool = False
    #: numbers and strings from the query string (but the sentinel credentials)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def secrets(self) -> list[str]:
        """The passwords in the URL, to scrub from error texts."""
        return [s for s in (self.password, self.sentinel_password) if s]

    def masked(self) -> str:
        """The URL with its passwords and query left out, for reprs, logs and errors."""
        scheme = SENTINEL_SCHEMES[1] if self.tls else SENTINEL_SCHEMES[0]
        userinfo = ""
        if self.password:
            userinfo = f"{self.username or ''}:***@"
        elif self.username:
            userinfo = f"{self.username}@"
        hosts = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels
        )
        return f"{scheme}://{userinfo}{hosts}/{self.service_name}/{self.db}"


def _host_port(item: str, url_text: str) -> tuple[str, int]:
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad(url_text, f"cannot read the IPv6 address {item!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise _bad(url_text, f"a sentinel address {item!r} has no host")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(url_text, f"the port of sentinel {item!r} is not a port number")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` or ``rediss+sentinel://`` URL.

    Raises:
      ValueError: the URL is not of that form, or an option is unknown or not a number; the
        message never contains the passwords.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    netloc, _, tail = rest.partition("/")
    userinfo, at, hosts_text = netloc.rpartition("@")
    # What the error messages show: the URL with its credentials and query left out.
    url_text = f"{scheme}://{'***@' if at else ''}{hosts_text}/{tail.partition('?')[0]}"
    if not sep or scheme not in SENTINEL_SCHEMES:
        raise _bad(url_text, f"the scheme must be {' or '.join(SENTINEL_SCHEMES)}")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon and password_text else None
    if not hosts_text:
        raise _bad(url_text, "it names no sentinel")
    sentinels = [_host_port(item.strip(), url_text) for item in hosts_text.split(",")]
    path, _, query = tail.partition("?")
    parts = [unquote(p) for p in path.split("/")] if path else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash
    if not parts or not parts[0]:
        raise _bad(url_text, "it names no master (the service name sentinels monitor)")
    if len(parts) > 2:
        raise _bad(url_text, "the path has more than a master name and a database")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise _bad(url_text, f"the database {parts[1]!r} is not a number")
        db = int(parts[1])
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _OPTIONS:
            raise _bad(url_text, f"unknown option {name!r} (known: {', '.join(_OPTIONS)})")
        if name in _TLS_ONLY and scheme != SENTINEL_SCHEMES[1]:
            raise _bad(url_text, f"{name} needs TLS, which is rediss+sentinel://")
        if name in _STRINGS:
            options[name] = value
            continue
        try:
            number: float = float(value) if name in _FLOATS else int(value)
        except ValueError:
            raise _bad(url_text, f"option {name} must be a number, got {value!r}") from None
        if number < 0 or (name in _FLOATS and number == 0):
            raise _bad(url_text, f"option {name} must be positive, got {value!r}")
        options[name] = number
    return SentinelURL(
        sentinels=sentinels,
        service_name=parts[0],
        db=db,
        username=username,
        password=password,
        sentinel_username=options.pop("sentinel_username", None) or None,
        sentinel_password=options.pop("sentinel_password", None) or None,
        tls=scheme == SENTINEL_SCHEMES[1],
        options=options,
    )


class FailoverRetry(Retry):
    """Retry a command that lost its connection until ``budget`` seconds after the first loss.

    A failover takes the master's ``down-after-milliseconds`` plus an election: a count of
    retries says nothing about how long that is. The first retry is immediate (a stale pooled
    connection), later ones back off up to half a second. Timeouts are not retried: a hung
    server still fails a call within ``socket_timeout``. redis-py nests retries (a command's
    retry reconnects with the connection's own); only the outer one waits, so a call never
    waits longer than about ``budget`` plus one command's deadline.
    """

    _depth = threading.local()

    def __init__(self, budget: float) -> None:
        super().__init__(NoBackoff(), -1, supported_errors=(redis.ConnectionError,))
        self.budget = budget

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        depth = getattr(self._depth, "value", 0)
        self._depth.value = depth + 1
        try:
            if depth:
                return do()
            return self._retry(do, fail, is_retryable, with_failure_count)
        finally:
            self._depth.value = depth

    def _retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None,
        with_failure_count: bool,
    ) -> T:
        deadline: float | None = None
        failures = 0
        while True:
            try:
                return do()
            except redis.ConnectionError as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.budget
                if now >= deadline:
                    raise
                if failures > 1:
                    time.sleep(min(0.025 * 2 ** (failures - 1), 0.5, deadline - now))


class SentinelConnection(SentinelManagedConnection):
    """A connection to whichever server the sentinels name master, also when it reconnects.

    redis-py's own asks the sentinels only when the pool opens it: a pooled connection whose
    socket dropped reconnects (in ``send_packed_command``) to the address it had, so during a
    failover it keeps knocking at the dead master until its retries run out.
    """

    _connecting_to = False

    def connect_to(self, address: tuple[str, int]) -> None:
        self._connecting_to = True
        try:
            super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self._connecting_to = False

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self._connecting_to:
            super().connect_check_health(
                check_health=check_health, retry_socket_connect=retry_socket_connect
            )
        else:
            # Ask the sentinels where the master is now (a no-op when still connected).
            self.connect()  # type: ignore[no-untyped-call]


class SentinelSSLConnection(SentinelConnection, redis.SSLConnection):
    """``SentinelConnection`` over TLS."""


def sentinel_pool(
    parsed: SentinelURL, options: dict[str, Any], pool_class: type[redis.ConnectionPool]
) -> tuple[Sentinel, SentinelConnectionPool]:
    """Return the sentinels of ``parsed`` and a pool of connections to their master.

    Parameters:
      options: the data connections' options (timeouts, pool size...); the URL's win.
      pool_class: ``redis.BlockingConnectionPool`` for a pool with a connection limit that
        waits for a free connection; anything else gives redis-py's plain sentinel pool.
    """
    settings = dict(options)
    url_options = dict(parsed.options)
    failover_wait = float(url_options.pop("failover_wait", DEFAULT_FAILOVER_WAIT))
    min_other_sentinels = int(url_options.pop("min_other_sentinels", 0))
    for name in BROKER_OPTIONS:
        url_options.pop(name, None)
    settings.update(url_options)
    settings["db"] = parsed.db
    if parsed.username:
        settings["username"] = parsed.username
    if parsed.password:
        settings["password"] = parsed.password
    settings["retry"] = FailoverRetry(failover_wait)
    tls = {k: v for k, v in settings.items() if k.startswith("ssl_")}
    settings["connection_class"] = SentinelSSLConnection if parsed.tls else SentinelConnection
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.get("socket_timeout"),
        "socket_connect_timeout": settings.get("socket_connect_timeout"),
        # A sentinel that is down is skipped at once: the others answer for it.
        "retry": Retry(NoBackoff(), 0),
        **tls,
    }
    if parsed.tls:
        sentinel_kwargs["ssl"] = True
    if parsed.sentinel_username:
        sentinel_kwargs["username"] = parsed.sentinel_username
    if parsed.sentinel_password:
        sentinel_kwargs["password"] = parsed.sentinel_password
    manager = Sentinel(  # type: ignore[no-untyped-call]
        parsed.sentinels, min_other_sentinels=min_other_sentinels, sentinel_kwargs=sentinel_kwargs
    )
    sentinel_class = SentinelConnectionPool
    if issubclass(pool_class, redis.BlockingConnectionPool):
        sentinel_class = BlockingSentinelConnectionPool
    pool = sentinel_class(parsed.service_name, manager, **settings)  # type: ignore[no-untyped-call]
    return manager, pool


class BlockingSentinelConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """A sentinel pool with a connection limit, where a caller over the limit waits (up to the
    pool's ``timeout``) for a free connection instead of failing: redis-py has no such pool."""


def dedicated_pool(pool: SentinelConnectionPool, **overrides: Any) -> SentinelConnectionPool:
    """Return a one-connection pool to the same master as ``pool`` (for blocking commands)."""
    kwargs = dict(pool.connection_kwargs)
    kwargs.pop("connection_pool", None)  # the new pool puts its own there
    kwargs.update(overrides)
    return SentinelConnectionPool(  # type: ignore[no-untyped-call]
        pool.service_name,
        pool.sentinel_manager,
        connection_class=pool.connection_class,
        max_connections=1,
        **kwargs,
    )
