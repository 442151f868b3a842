"""Redis connections shared by the broker and the Redis backends.

Every connection gets deadlines (redis-py's defaults let a hung server hold a call for about a
minute), every redis-py error becomes an nbqueue error that says what to do, and no password
ever reaches a repr, a log line or an error message.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.commands.core import Script
    from redis.retry import Retry
    from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
except ImportError as e:  # pragma: no cover - exercised with redis hidden
    raise ImportError(
        "nbqueue's Redis support needs the redis package: pip install 'nbqueue[redis]'."
    ) from e

from ..errors import BrokerError, ConnectionClosed, ConnectionFailed
from .sentinel import BROKER_OPTIONS, dedicated_pool, is_sentinel_url, parse_sentinel_url
from .sentinel import sentinel_pool as make_sentinel_pool

if TYPE_CHECKING:
    from importlib.abc import Traversable

__all__ = [
    "RedisConnection",
    "as_text",
    "load_script",
    "load_scripts",
    "redis",
    "script_names",
    "split_broker_options",
]

#: How long a command may take before it fails, in seconds (redis-py's default is 5 s with up to
#: ten retries, which lets a paused server hold a call for about a minute).
SOCKET_TIMEOUT = 3.0

#: How long opening a connection may take, in seconds.
CONNECT_TIMEOUT = 3.0

#: The longest a single blocking command (BLPOP, BLMOVE) blocks, in seconds. Blocking calls are
#: chunked to this, so they always stay below the socket timeout.
MAX_BLOCK = 1.0

#: The broker's Lua scripts, what ``load_scripts`` registers unless given other names.
BROKER_SCRIPTS = (
    "ack",
    "bury",
    "dead_letters",
    "requeue_dead",
    "enqueue",
    "fetch",
    "leave",
    "nack",
    "requeue",
    "signoff",
    "tick",
)

_LIBRARY = "_lib"
_sources: dict[str, str] = {}
_sources_lock = threading.Lock()

#: Servers already warned about in this process (by masked address).
_warned_servers: set[str] = set()
_warned_lock = threading.Lock()


def as_text(value: Any, errors: str = "strict") -> str:
    """Return a reply from redis-py as ``str``: bytes decoded as UTF-8 (``errors`` as for
    ``bytes.decode``), anything else through ``str()`` (a client may decode replies itself)."""
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)


def _folder() -> Traversable:
    return importlib.resources.files("nbqueue._redis") / "lua"


def script_names() -> list[str]:
    """Return the name of every Lua script shipped in ``lua/`` (each file but the library)."""
    return sorted(
        entry.name.removesuffix(".lua")
        for entry in _folder().iterdir()
        if entry.name.endswith(".lua") and entry.name != f"{_LIBRARY}.lua"
    )


def script_source(name: str) -> str:
    """Return the source of the script ``lua/<name>.lua``, with ``_lib.lua`` prepended.

    Raises:
      ValueError: there is no such script.
    """
    with _sources_lock:
        if name not in _sources:
            folder = _folder()
            if name == _LIBRARY or not (folder / f"{name}.lua").is_file():
                raise ValueError(
                    f"There is no Lua script {name!r} in nbqueue/_redis/lua/; pass one of "
                    f"{script_names()}."
                )
            lib = (folder / f"{_LIBRARY}.lua").read_text(encoding="utf-8")
            body = (folder / f"{name}.lua").read_text(encoding="utf-8")
            _sources[name] = f"{lib}\n{body}"
        return _sources[name]


def load_script(client: redis.Redis, name: str) -> Script:
    """Register the Lua script ``lua/<name>.lua`` on ``client`` (sent with EVALSHA, loaded on
    first use and reloaded after a server restart).

    Raises:
      ValueError: there is no such script.
    """
    return client.register_script(script_source(name))


def load_scripts(client: redis.Redis, names: Iterable[str] = BROKER_SCRIPTS) -> dict[str, Script]:
    """Register Lua scripts on ``client`` (by default the broker's), by name; see
    ``load_script``."""
    return {name: load_script(client, name) for name in names}


def split_broker_options(url: str) -> tuple[str, dict[str, int]]:
    """Take the broker's own options (``min_replicas``, ``wait_timeout``) out of a URL's query
    string: return the URL without them, and them as integers.

    Raises:
      ValueError: one of them is not a whole number.
    """
    parts = urlsplit(url) if "?" in url else None
    if parts is None or not any(name in parts.query for name in BROKER_OPTIONS):
        return url, {}
    kept, taken = [], {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in BROKER_OPTIONS:
            kept.append((name, value))
            continue
        if not value.isdigit():
            raise ValueError(
                f"The URL option {name} must be a whole number, got {value!r}; for example "
                f"?min_replicas=1&wait_timeout=1000."
            )
        taken[name] = int(value)
    return urlunsplit(parts._replace(query=urlencode(kept))), taken


def connection_defaults() -> dict[str, Any]:
    """Return the connection options nbqueue uses unless told otherwise.

    A lost connection is retried once (a stale pooled connection, a server restart); a timeout
    is not retried, so a hung server fails a call within ``SOCKET_TIMEOUT``.
    """
    return {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "retry_on_timeout": False,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    }


class RedisConnection:
    """A redis-py client with bounded deadlines, plus what is needed to report its errors.

    Parameters:
      url: ``redis://``, ``rediss://``, ``unix://``, or ``redis+sentinel://`` and
        ``rediss+sentinel://`` (see ``sentinel.py``); wins over ``host``/``port``/``db``. The
        broker's options in its query string (``min_replicas``, ``wait_timeout``) are taken
        out and kept in ``url_options``.
      client: a ready client; used as is (its own timeouts apply) and never closed here.
      host, port, db, password: connection parameters when there is no URL.
      pool_kwargs: options for the connection pool, e.g. ``{"max_connections": 20}``; with a
        limit, callers wait for a free connection rather than fail. Blocked idle consumers use
        connections of their own, outside the limit.
      redis_kwargs: any other ``redis.Redis`` option (``socket_timeout=``, ``ssl_ca_certs=``...).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        host: str | None = None,
        port: int | None = None,
        db: int | None = None,
        password: str | None = None,
        pool_kwargs: dict[str, Any] | None = None,
        **redis_kwargs: Any,
    ) -> None:
        self.owns_client = client is None
        #: the broker's options found in the URL (``min_replicas``, ``wait_timeout``)
        self.url_options: dict[str, int] = {}
        self.sentinel: Sentinel | None = None
        secrets: list[str] = []
        where: str | None = None
        if url:
            url, self.url_options = split_broker_options(url)
        if client is None:
            options = connection_defaults()
            explicit = {"host": host, "port": port, "db": db, "password": password}
            options.update({k: v for k, v in explicit.items() if v is not None})
            options.update(redis_kwargs)
            options.update(pool_kwargs or {})
            # With a connection limit, a caller waits (up to the socket timeout) for a free
            # connection instead of failing with "Too many connections".
            pool_class: type[redis.ConnectionPool] = redis.ConnectionPool
            if options.get("max_connections"):
                pool_class = redis.BlockingConnectionPool
                options.setdefault("timeout", options.get("socket_timeout") or SOCKET_TIMEOUT)
            pool: redis.ConnectionPool
            if url and is_sentinel_url(url):
                parsed = parse_sentinel_url(url)
                self.sentinel, pool = make_sentinel_pool(parsed, options, pool_class)
                secrets, where = parsed.secrets, parsed.masked()
            elif url:
                pool = pool_class.from_url(url, **options)
            else:
                pool = pool_class(**options)
            client = redis.Redis(connection_pool=pool)
        self.client: redis.Redis = client
        kwargs = client.connection_pool.connection_kwargs
        password = kwargs.get("password")
        #: the passwords to scrub from error texts (the server's, the sentinels')
        self._secrets = [s for s in {*secrets, password} if isinstance(s, str) and s]
        self.where = where or self._describe(client)
        timeout = kwargs.get("socket_timeout")
        #: the longest one blocking command may block, in seconds
        self.block_limit = MAX_BLOCK if not timeout else min(MAX_BLOCK, timeout / 2)
        self.socket_timeout: float | None = timeout
        self._checked = threading.Event()
        self._check_lock = threading.Lock()

    @staticmethod
    def _describe(client: redis.Redis) -> str:
        """Return the server's address as a URL with the password masked."""
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        db = kwargs.get("db", 0)
        if "path" in kwargs:
            return f"unix://{kwargs['path']}?db={db}"
        scheme = "rediss" if issubclass(pool.connection_class, redis.SSLConnection) else "redis"
        username, password = kwargs.get("username"), kwargs.get("password")
        userinfo = ""
        if password:
            userinfo = f"{username or ''}:***@"
        elif username:
            userinfo = f"{username}@"
        host = kwargs.get("host", "localhost")
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{userinfo}{host}:{kwargs.get('port', 6379)}/{db}"

    def dedicated(self, *, socket_timeout: float | None = None) -> redis.Redis:
        """Return a client with one connection of its own to the same server, for a blocking
        command that should neither wait for nor hold a connection of the shared pool.

        Parameters:
          socket_timeout: replaces the pool's, in seconds (for a command that blocks longer
            than ``block_limit``).
        """
        pool = self.client.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            overrides = {} if socket_timeout is None else {"socket_timeout": socket_timeout}
            return redis.Redis(connection_pool=dedicated_pool(pool, **overrides))
        kwargs = dict(pool.connection_kwargs)
        if socket_timeout is not None:
            kwargs["socket_timeout"] = socket_timeout
        own = redis.ConnectionPool(
            connection_class=pool.connection_class, max_connections=1, **kwargs
        )
        return redis.Redis(connection_pool=own)

    def check_server(self, logger: logging.Logger) -> None:
        """Check the server once per connection: its version, and whether it keeps what it is
        sent (a warning once per server and process: no persistence, or an evicting policy).

        Raises:
          BrokerError: the server is older than Redis 6.2.
          ConnectionFailed, ConnectionClosed: the server cannot be reached.
        """
        if self._checked.is_set():
            return
        with self._check_lock:
            if self._checked.is_set():
                return
            with self.errors():
                info = self.client.info("server")
                settings = self._read_settings()
            version = str(info.get("redis_version", "0"))
            parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
            if parts < (6, 2):
                raise BrokerError(
                    f"Redis at {self.where} is version {version}; nbqueue needs Redis 6.2 or "
                    f"newer (for LPOP with a count and BLMOVE): upgrade the server."
                )
            self._warn_about(settings, logger)
            self._checked.set()

    def _read_settings(self) -> dict[str, str]:
        try:
            pipe = self.client.pipeline(transaction=False)
            for name in ("appendonly", "save", "maxmemory-policy"):
                pipe.config_get(name)
            settings: dict[str, str] = {}
            for reply in pipe.execute():
                settings.update({as_text(k): as_text(v) for k, v in reply.items()})
            return settings
        except redis.ResponseError:
            # CONFIG is often disabled on managed servers; INFO tells almost as much.
            persistence = self.client.info("persistence")
            memory = self.client.info("memory")
            return {
                "appendonly": "yes" if persistence.get("aof_enabled") else "no",
                "maxmemory-policy": str(memory.get("maxmemory_policy", "")),
            }

    def _warn_about(self, settings: dict[str, str], logger: logging.Logger) -> None:
        with _warned_lock:
            if self.where in _warned_servers:
                return
            _warned_servers.add(self.where)
        if settings.get("appendonly") == "no" and settings.get("save", "?") == "":
            logger.warning(
                'Redis at %s has no persistence (appendonly no, save ""): queued messages are '
                "lost if the server restarts; set appendonly yes for durable queues.",
                self.where,
            )
        policy = settings.get("maxmemory-policy", "noeviction")
        if policy and policy != "noeviction":
            logger.warning(
                "Redis at %s may evict keys (maxmemory-policy %s): queued messages can vanish "
                "when memory runs short; set maxmemory-policy noeviction.",
                self.where,
                policy,
            )

    def scrub(self, text: str) -> str:
        """Return ``text`` with the passwords, if they appear, replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn redis-py errors raised inside the block into nbqueue errors.

        Raises:
          ConnectionFailed: the server refused the connection or the credentials.
          ConnectionClosed: the connection dropped, or the server did not answer in time.
          BrokerError: the server answered with an error (out of memory, read-only...).
        """
        try:
            yield
        except redis.AuthenticationError as e:
            raise ConnectionFailed(
                f"Redis at {self.where} refused the credentials ({self.scrub(str(e))}); "
                f"check the user name and password."
            ) from None
        except redis.TimeoutError as e:
            raise ConnectionClosed(
                f"Redis at {self.where} did not answer within {self.socket_timeout} s "
                f"({self.scrub(str(e))}); check that the server is running and not paused, "
                f"or pass a larger socket_timeout= (a write that timed out may still take "
                f"effect when the server resumes)."
            ) from None
        except MasterNotFoundError as e:
            raise ConnectionFailed(
                f"The sentinels of {self.where} named no master that is up "
                f"({self.scrub(str(e))}); check that the sentinels are running, that they "
                f"monitor that master name, and whether a failover is still under way."
            ) from None
        except redis.ConnectionError as e:
            text = self.scrub(str(e))
            if "connecting to" in text or "Connection refused" in text:
                raise ConnectionFailed(
                    f"Could not connect to Redis at {self.where} ({text}); check that the "
                    f"server is running and that the URL is right."
                ) from None
            raise ConnectionClosed(
                f"Lost the connection to Redis at {self.where} ({text}); the call may not have "
                f"completed: check the server, then try again."
            ) from None
        except redis.OutOfMemoryError as e:
            raise BrokerError(
                f"Redis at {self.where} is out of memory ({self.scrub(str(e))}); nothing was "
                f"written: free memory or raise maxmemory, then try again."
            ) from None
        except redis.ReadOnlyError as e:
            raise BrokerError(
                f"Redis at {self.where} is a read-only replica ({self.scrub(str(e))}); point "
                f"the URL at the primary."
            ) from None
        except redis.ResponseError as e:
            raise BrokerError(
                f"Redis at {self.where} answered with an error: {self.scrub(str(e))}; check "
                f"the server's log and its version (nbqueue needs Redis 6.2 or newer)."
            ) from None

    def close(self) -> None:
        """Close the connections, unless the client was passed in."""
        if self.owns_client:
            self.client.close()
            self.client.connection_pool.disconnect()
            if self.sentinel is not None:
                self.sentinel.close()
