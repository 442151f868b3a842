"""CrashLimit's start counters in Redis, counted through the group commit.

A counter is a string key ``<prefix><message id>.<retries>`` holding how many times that
attempt started without finishing; by default the prefix is ``<namespace>:__nbq__:crashes:``
(``RedisKeys.start_counters``). Counting a start is one ``count_starts.lua`` call (INCR and
PEXPIRE, or with ``first`` a GET that leaves a counter already started alone, plus the DELs of
the counters finished since the last call), sent in the round trip the worker threads starting
at the same moment share (``GroupCommit``). A thread that gives up waiting for that round trip
withdraws its call: a start that was reported as not counted is never counted later.
"""

from __future__ import annotations

import threading
from typing import Any

from redis.exceptions import NoScriptError

from ..services import StartCounter
from .client import RedisConnection, load_script
from .group import GroupCommit, group_commit
from .keys import RedisKeys

__all__ = ["DEFAULT_NAMESPACE", "RedisStartCounter"]

#: The namespace of the counters on a server that is not a broker's (``CrashLimit(redis=...)``).
DEFAULT_NAMESPACE = "nbqueue"


class RedisStartCounter(StartCounter):
    """Start counters under ``prefix``, on a Redis connection.

    Parameters:
      connection: the connection; closed by ``close()`` only with ``owns_connection``.
      prefix: the start of every counter's key.
      group: the group commit counts go through; by default the connection's own, shared with
        its other users (a broker's live writes, made at the same moment as a count).
      owns_connection: ``close()`` closes the connection too.
    """

    def __init__(
        self,
        connection: RedisConnection,
        prefix: str,
        *,
        group: GroupCommit | None = None,
        owns_connection: bool = False,
    ) -> None:
        self.connection = connection
        self.prefix = prefix
        self.group = group if group is not None else group_commit(connection)
        self._owns_connection = owns_connection
        self._script = load_script(connection.client, "count_starts")
        self._lock = threading.Lock()
        self._finished: list[str] = []

    @classmethod
    def at(cls, redis: Any, *, prefix: str | None = None, timeout: float) -> RedisStartCounter:
        """Return counters on a server of their own: a URL, or a ``redis.Redis`` used as is
        (its own timeouts apply, and it is never closed).

        Parameters:
          redis: a ``redis://`` URL or a ``redis.Redis``.
          prefix: the start of every counter's key; by default under ``DEFAULT_NAMESPACE``.
          timeout: the deadline of each call on a connection made from a URL, in seconds; a
            count waits at most twice that, plus a second, for another thread's round trip.
        """
        if isinstance(redis, str):
            connection = RedisConnection(
                redis, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        else:
            connection = RedisConnection(client=redis)
        return cls(
            connection,
            RedisKeys(DEFAULT_NAMESPACE).start_counters if prefix is None else prefix,
            group=GroupCommit(connection.client, timeout=timeout * 2 + 1),
            owns_connection=True,
        )

    def __repr__(self) -> str:
        return f"RedisStartCounter({self.connection.where!r}, prefix={self.prefix!r})"

    def count(self, name: str, ttl: int, *, first: bool = False) -> int:
        """Count one start of ``name``; see ``StartCounter.count``."""
        key = self.prefix + name
        sha = self._script.sha
        finished: list[str] = []
        args: tuple[Any, ...] = (ttl, 1, "first") if first else (ttl, 1)

        def add(pipe: Any) -> None:
            # Called only by the thread that sends this request: a request withdrawn on its
            # timeout takes no deletions with it.
            with self._lock:
                finished[:], self._finished = self._finished, []
            pipe.evalsha(sha, 1 + len(finished), key, *finished, *args)

        try:
            with self.connection.errors():
                (reply,) = self.group.execute(add)
                if isinstance(reply, NoScriptError):  # the server lost its scripts (a restart)
                    reply = self._script(keys=[key, *finished], args=list(args))
                elif isinstance(reply, Exception):
                    raise reply
        except BaseException:
            self._requeue(finished)  # DEL is idempotent: sending these again is harmless
            raise
        return int(reply[0])

    def finish(self, name: str) -> None:
        """Queue the deletion of ``name``'s counter; see ``StartCounter.finish``."""
        with self._lock:
            self._finished.append(self.prefix + name)

    def delete(self, name: str) -> None:
        """Delete ``name``'s counter now; see ``StartCounter.delete``."""
        with self.connection.errors():
            self.connection.client.delete(self.prefix + name)

    def flush(self) -> None:
        """Delete the counters queued by ``finish``; see ``StartCounter.flush``."""
        with self._lock:
            finished, self._finished = self._finished, []
        if not finished:
            return
        try:
            with self.connection.errors():
                self.connection.client.delete(*finished)
        except BaseException:
            self._requeue(finished)
            raise

    def close(self) -> None:
        """Flush, then close the connection if this counter made it."""
        try:
            self.flush()
        finally:
            if self._owns_connection:
                self.connection.close()

    def _requeue(self, finished: list[str]) -> None:
        if finished:
            with self._lock:
                self._finished[:0] = finished
