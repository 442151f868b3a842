"""The Redis result backend: Dramatiq's keys and stored format, and reads that wake on the write."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import NoScriptError

from ..encoder import Encoder
from ..live.channel import get_publisher
from ..results.backend import DEFAULT_TIMEOUT, Missing, ResultBackend
from ..services import TickClaims, once
from .client import RedisConnection, load_script, redis
from .group import group_commit
from .keys import schedules_prefix
from .live import claim_held, shared_transport
from .ticks import RedisTickClaims

if TYPE_CHECKING:
    from ..broker import MessageProxy
    from ..live.transport import Transport
    from ..message import Message

R = TypeVar("R")

__all__ = ["RedisBackend"]


class RedisBackend(ResultBackend):
    """Store results in Redis, readable by Dramatiq's RedisBackend and the reverse.

    A result is a one-element Redis list under the key Dramatiq uses (the MD5 of
    ``"<namespace>:<queue>:<actor>:<message id>"``), expiring after the result TTL. A blocking
    ``get_result`` waits with ``BLMOVE``, so it returns the moment the result is written;
    sub-second timeouts are honoured (Dramatiq rounds them down to whole seconds).

    Example::

        backend = RedisBackend(url="redis://localhost:6379/0")
        broker.add_middleware(Results(backend=backend))

    Parameters:
      namespace, encoder, use_namespace_prefix_keys: see ``ResultBackend``.
      client: a ready ``redis.Redis``; used as is and never closed.
      url: a Redis URL; wins over the connection parameters.
      parameters: ``redis.Redis`` options (``host=``, ``port=``, ``db=``, ``password=``...);
        nbqueue's deadlines apply unless overridden (``socket_timeout=`` is 3 s).
    """

    def __init__(
        self,
        *,
        namespace: str = "dramatiq-results",
        encoder: Encoder | None = None,
        use_namespace_prefix_keys: bool = False,
        client: redis.Redis | None = None,
        url: str | None = None,
        **parameters: Any,
    ) -> None:
        super().__init__(
            namespace=namespace,
            encoder=encoder,
            use_namespace_prefix_keys=use_namespace_prefix_keys,
        )
        self.connection = RedisConnection(url, client=client, **parameters)
        self.client = self.connection.client
        self._store_script = load_script(self.client, "result_store")
        self._store_live_script = load_script(self.client, "result_store_live")

    def __repr__(self) -> str:
        return f"RedisBackend({self.connection.where!r}, namespace={self.namespace!r})"

    def live_transport(self, *, namespace: str | None = None, max_events: int = 1000) -> Transport:
        """The live channel in this backend's Redis, under ``namespace`` (the broker's, when it
        has one) or this backend's own."""
        return shared_transport(self.connection, namespace or self.namespace, max_events=max_events)

    def tick_claims(self) -> TickClaims:
        """Schedule ticks are claimed under this backend's namespace
        (``<ns>:__nbq__:schedules:<name>``): what lets a broker without a store of its own
        (RabbitMQ) run schedules."""
        return once(
            self,
            "_tick_claims",
            lambda: RedisTickClaims(self.connection, schedules_prefix(self.namespace)),
        )

    def get_result(
        self, message: Message[R], *, block: bool = False, timeout: int | None = None
    ) -> R:
        """Get the result of a message; see ``ResultBackend.get_result``.

        A blocking read goes straight to ``BLMOVE``, which returns at once when the result is
        already there: one round trip fewer than looking first.
        """
        if not block:
            return super().get_result(message, block=False)
        key = self.build_message_key(message)
        value = self._wait_for(message, key, DEFAULT_TIMEOUT if timeout is None else timeout)
        result: R = self.unwrap_result(value)
        return result

    def _decode(self, data: Any) -> Any:
        if data is None:
            return Missing
        return self.encoder.decode(data)

    def _get(self, message_key: str) -> Any:
        with self.connection.errors():
            data = self.client.lindex(message_key, 0)
        return self._decode(data)

    def _store(self, message_key: str, result: Any, ttl: int) -> None:
        self._commit(message_key, result, ttl, None)

    def _store_for(
        self, message: Message[Any] | MessageProxy, message_key: str, result: Any, ttl: int
    ) -> None:
        # The message's last live status and output, held by the Live middleware (which runs
        # before Results), are stored with the result in one script (see _commit).
        self._commit(message_key, result, ttl, message.message_id)

    def _commit(self, message_key: str, result: Any, ttl: int, message_id: str | None) -> None:
        if isinstance(result, dict) and isinstance(result.get("exn"), dict):
            # A failure's text may quote the URL it failed on: never store this server's password.
            exn = {
                k: self.connection.scrub(v) if isinstance(v, str) else v
                for k, v in result["exn"].items()
            }
            result = {**result, "exn": exn}
        data = self.encoder.encode(result)  # first: a result that cannot be encoded raises here
        live = [] if message_id is None else claim_held(self.connection, message_id)
        script, keys = self._store_script, [message_key]
        args: list[Any] = [data, ttl]
        separate = live
        if len(live) == 1:
            # The usual case: the result and the message's last live write (status and output)
            # in one script, atomic on the server, so whoever sees the one sees the other.
            transport, write = live[0]
            script, separate = self._store_live_script, []
            keys += transport.keys(write.message_id)
            args += transport.write_args(write)

        def add(pipe: Any) -> None:
            for transport, write in separate:  # several live stores: theirs go first
                transport.add_write(pipe, write)
            pipe.evalsha(script.sha, len(keys), *keys, *args)

        # Worker threads storing at the same moment share one round trip (a group commit); the
        # call still returns only once this result is stored, so it is stored before the ack.
        with self.connection.errors():
            try:
                replies = group_commit(self.connection).execute(add)
            except BaseException:
                for transport, write in live:  # the live writes get another chance
                    get_publisher(transport).submit(write)
                raise
            for (transport, write), reply in zip(separate, replies, strict=False):
                transport.settle_write(write, reply)
            reply = replies[-1]
            if isinstance(reply, NoScriptError):  # the server lost its scripts (a restart)
                script(keys=keys, args=args)
            elif isinstance(reply, Exception):
                raise reply

    def _wait(self, message_key: str, timeout: float) -> Any:
        # BLMOVE from the list to itself leaves the one element in place for other readers.
        # Redis reads a timeout under a millisecond as "forever", so short waits just look.
        timeout = min(timeout, self.connection.block_limit)
        if timeout < 0.002:
            return self._get(message_key)
        with self.connection.errors():
            # Redis takes fractional seconds; redis-py annotates the timeout as int.
            seconds: Any = round(timeout, 3)
            data = self.client.blmove(message_key, message_key, seconds, "RIGHT", "RIGHT")
        return self._decode(data)

    def close(self) -> None:
        """Close the connections, unless the client was passed in."""
        self.connection.close()


# Dramatiq's import path is the public one (reprs, docs and pickled references name it).
RedisBackend.__module__ = "nbqueue.results.backends.redis"
