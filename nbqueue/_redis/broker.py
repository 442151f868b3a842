"""The Redis broker: Dramatiq's key layout on the wire, with real priorities and bounded recovery.

Keys under the namespace ``ns`` (default ``dramatiq``), for a queue ``q``, as Dramatiq writes
them: ``ns:q`` (list of ids), ``ns:q.msgs`` (id -> message), ``ns:q.DQ`` and ``ns:q.DQ.msgs``
(delayed), ``ns:q.XQ`` and ``ns:q.XQ.msgs`` (dead letters), ``ns:__acks__.<worker>.<queue>``
(fetched, not yet acknowledged) and ``ns:__heartbeats__``. Each enqueue stores a fresh
``options.redis_message_id``. So a Dramatiq worker runs what nbqueue sends, and the reverse.
Keys only nbqueue writes sit under ``ns:__nbq__:`` (see ``RedisKeys``). Every move is one Lua
script (``lua/``). Needs Redis 6.2 or newer.

**What differs from Dramatiq, and what a Dramatiq worker sees.**

* Priorities are real: a message with a non-zero priority (clamped to +-1023) is stored in a
  sorted set (``ns:__nbq__:q.prio``) and fetched before (priority > 0) or after (priority < 0)
  the default-priority messages of the list, across the whole queue. A Dramatiq worker reads
  only the list, so it never runs a prioritized message, unless a Dramatiq worker's maintenance
  recovers one from a dead nbqueue worker (it then lands in the list, its priority lost). Send
  with priority 0, or pass ``priorities=False``, on queues that Dramatiq workers consume.
* Idle nbqueue consumers block instead of polling, and a message sent while one is idle is
  handed straight to it (its id goes into that worker's ack set, as a fetch would put it, so
  a crash still recovers it); such a message never appears in the list, so an idle nbqueue
  worker wins it over a Dramatiq worker. Messages from Dramatiq producers, which neither hand
  over nor wake, are picked up within ``poll_interval``.
* A dead worker's messages come back on a schedule: every consuming process heartbeats and
  runs maintenance about once a second, judging liveness by the Redis server's clock, so what a
  ``kill -9``'d worker held is redelivered within ``heartbeat_timeout`` + 1 s (Dramatiq: random
  maintenance, from seconds to never). No ``KEYS``: nbqueue workers record which queues they
  hold messages of; a dead Dramatiq worker's ack sets are found once with ``SCAN``. Dramatiq
  workers judge nbqueue's heartbeats by their own clock: keep the machines' clocks in sync.
* Acknowledgements are written in the background, in batches: a worker that crashes just after
  finishing a message may run it again, as after any crash of an at-least-once worker.
* A message that cannot be decoded or validated is dead-lettered alone, with its reason, which
  ``get_dead_letters`` returns (Dramatiq's consumer crashes and strands it with its neighbours).
* A size limit (``max_message_size``, 16 MiB by default; Dramatiq has none): a larger send
  raises ``MessageTooLarge`` before Redis is contacted, and a larger stored body is
  dead-lettered ``too_large`` without leaving Redis (fetch.lua checks ``HSTRLEN`` first), so a
  50 MB body costs the consumer no memory. The wire format is unchanged.
* Every call has a deadline: a hung server fails a call within about 3 s (``socket_timeout``).
* Through Redis Sentinel (``redis+sentinel://`` URLs, see ``sentinel.py``), a call that loses
  its connection asks the sentinels for the master and retries for up to ``failover_wait``
  (10 s), so sends and workers carry on through a failover.
* ``min_replicas=N`` (Dramatiq has none): every enqueue is followed by ``WAIT N wait_timeout``
  on the same connection, so ``send()`` returns only once N replicas hold the message, and
  raises ``PublishOutcomeUnknown`` when fewer confirm in time. Replication stays asynchronous:
  without it, a send acknowledged just before the master dies can be lost in a failover.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

try:
    import redis
    from redis.exceptions import NoScriptError
except ImportError as e:  # pragma: no cover - exercised with redis hidden
    raise ImportError("RedisBroker needs the redis package: pip install 'nbqueue[redis]'.") from e

from ..broker import Broker, Consumer, DeadLetter, QueueStats
from ..common import dq_name, q_name
from ..errors import (
    BrokerError,
    DecodeError,
    NbqueueError,
    PublishOutcomeUnknown,
    QueueJoinTimeout,
)
from ..message import FROM_ENVIRONMENT, Message, generate_unique_id, resolve_max_message_size
from ..middleware.base import Middleware
from ..services import CodeStore, StartCounter, TickClaims, WorkerRegistry, once
from .client import RedisConnection, as_text, load_scripts
from .code_store import RedisCodeStore
from .consumer import RedisConsumer
from .counters import RedisStartCounter
from .keys import WAKE_CAP, WAKE_TTL, RedisKeys
from .live import shared_transport
from .service import BrokerService
from .ticks import RedisTickClaims
from .workers import RedisWorkerRegistry

if TYPE_CHECKING:
    from ..live.transport import Transport

__all__ = ["RedisBroker", "RedisKeys"]

#: Dramatiq's defaults, in milliseconds.
DEFAULT_HEARTBEAT_TIMEOUT = 60000
DEFAULT_DEAD_MESSAGE_TTL = 7 * 86400000

#: How often an idle consumer looks for messages that arrived without a wake-up (ms).
DEFAULT_POLL_INTERVAL = 1000

#: Priorities are clamped to this range on Redis, so that their scores stay exact.
MAX_PRIORITY = 1023

#: How long an enqueue waits for ``min_replicas`` replicas to confirm it, in milliseconds.
DEFAULT_WAIT_TIMEOUT = 1000

#: How many messages one enqueue script call carries at most, and how many bytes.
BATCH_MESSAGES, BATCH_BYTES = 1000, 1 << 20


class RedisBroker(Broker):
    """A broker that keeps messages in Redis, wire-compatible with Dramatiq's RedisBroker.

    Example::

        broker = RedisBroker(url="redis://localhost:6379/0")
        broker = RedisBroker(host="localhost", port=6379, db=0,
                             connection_pool_kwargs={"max_connections": 20})
        broker = RedisBroker(url="redis+sentinel://s1:26379,s2:26379,s3:26379/mymaster/0",
                             min_replicas=1)

    Nothing connects until the broker is first used. The first use checks the server (Redis 6.2
    or newer) and logs a warning once if it has no persistence or may evict keys.

    Parameters:
      url: ``redis://``, ``rediss://``, ``unix://``, or ``redis+sentinel://`` and
        ``rediss+sentinel://`` (the master the sentinels name; the options of its query string
        are listed in ``nbqueue/_redis/sentinel.py``); wins over ``host``, ``port``, ``db``.
        Any of them may carry ``?min_replicas=N&wait_timeout=MS``.
      host, port, db, password: connection parameters when there is no URL.
      namespace: the prefix of every key; Dramatiq's default, so both see the same queues.
      connection_pool_kwargs: options for redis-py's connection pool.
      heartbeat_timeout: how long a worker may go without a heartbeat before its messages are
        redelivered, in milliseconds. Keep it well above the longest time a native call may hold
        the GIL in an actor.
      dead_message_ttl: how long dead letters are kept, in milliseconds (7 days).
      poll_interval: how often an idle consumer checks for messages sent by producers that do
        not wake it (Dramatiq's), in milliseconds.
      priorities: store messages with a non-zero priority in nbqueue's sorted set (see the
        module docstring); False sends every message to the Dramatiq list.
      middleware: see ``Broker``.
      client: a ready ``redis.Redis``; used as is, with its own timeouts, and never closed.
      maintenance_chance: accepted for compatibility with Dramatiq and ignored: maintenance
        runs on a timer.
      max_message_size: the largest encoded message, in bytes, this broker sends or runs:
        ``enqueue`` raises ``MessageTooLarge`` above it before talking to Redis, and a consumer
        dead-letters a larger body (``too_large``) without fetching it (fetch.lua checks its
        length with ``HSTRLEN``). The default is ``$NBQUEUE_MAX_MESSAGE_SIZE``, else 16 MiB;
        ``None`` or 0 disables it (Dramatiq has no limit).
      min_replicas: after each enqueue (each batch of ``enqueue_many``), wait until this many
        replicas hold it (Redis ``WAIT``): a send that returned then survives a failover to
        one of them. ``None`` takes the URL's ``min_replicas``, else 0 (no wait).
      wait_timeout: how long that wait lasts at most, in milliseconds (``None``: the URL's,
        else 1000); it must stay below ``socket_timeout``. When fewer replicas confirm in
        time, the send raises ``PublishOutcomeUnknown``: the master has the message, so it
        most likely runs, but it may be lost if the master fails before replicating it.
      redis_kwargs: other ``redis.Redis`` options, e.g. ``socket_timeout=`` (3 s by default).

    Raises:
      ValueError: a timeout or interval is out of range, or ``max_message_size`` (or
        ``NBQUEUE_MAX_MESSAGE_SIZE``) is not a size.
    """

    #: ``enqueue_many`` prepares the whole batch before sending any of it (see ``Broker``).
    validates_batches = True

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        db: int | None = None,
        password: str | None = None,
        namespace: str = "dramatiq",
        connection_pool_kwargs: dict[str, Any] | None = None,
        heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT,
        dead_message_ttl: int = DEFAULT_DEAD_MESSAGE_TTL,
        poll_interval: int = DEFAULT_POLL_INTERVAL,
        priorities: bool = True,
        middleware: list[Middleware] | None = None,
        client: redis.Redis | None = None,
        maintenance_chance: int | None = None,
        max_message_size: int | None = FROM_ENVIRONMENT,
        min_replicas: int | None = None,
        wait_timeout: int | None = None,
        **redis_kwargs: Any,
    ) -> None:
        if heartbeat_timeout < 1000:
            raise ValueError(
                f"heartbeat_timeout is in milliseconds and must be at least 1000, got "
                f"{heartbeat_timeout!r}."
            )
        if poll_interval < 10:
            raise ValueError(f"poll_interval must be at least 10 ms, got {poll_interval!r}.")
        #: the size limit in bytes (``None``: no limit); see the class docstring
        self.max_message_size = resolve_max_message_size(max_message_size)
        super().__init__(middleware=middleware)
        self.connection = RedisConnection(
            url,
            client=client,
            host=host,
            port=port,
            db=db,
            password=password,
            pool_kwargs=connection_pool_kwargs,
            **redis_kwargs,
        )
        self.client = self.connection.client
        url_options = self.connection.url_options
        if min_replicas is None:
            min_replicas = url_options.get("min_replicas", 0)
        if wait_timeout is None:
            wait_timeout = url_options.get("wait_timeout", DEFAULT_WAIT_TIMEOUT)
        if min_replicas < 0:
            raise ValueError(f"min_replicas must be 0 or more, got {min_replicas!r}.")
        socket_timeout = self.connection.socket_timeout
        if min_replicas and (
            wait_timeout < 1 or (socket_timeout and wait_timeout >= socket_timeout * 1000)
        ):
            raise ValueError(
                f"wait_timeout is in milliseconds and must be at least 1 and below the socket "
                f"timeout ({socket_timeout} s), got {wait_timeout!r}; lower it or pass a larger "
                f"socket_timeout=."
            )
        #: replicas each enqueue waits for (``WAIT``); 0 waits for none
        self.min_replicas = min_replicas
        #: how long that wait lasts at most, in milliseconds
        self.wait_timeout = wait_timeout
        self.namespace = namespace
        self.keys = RedisKeys(namespace)
        self.broker_id = str(uuid.uuid4())
        self.heartbeat_timeout = heartbeat_timeout
        self.dead_message_ttl = dead_message_ttl
        self.poll_interval = poll_interval
        self.priorities = priorities
        self.scripts = load_scripts(self.client)
        self.service = BrokerService(self)

    def __repr__(self) -> str:
        return f"RedisBroker({self.connection.where!r}, namespace={self.namespace!r})"

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Call ``after_<signal>`` on every middleware; see ``Broker.emit_after``.

        A worker does not settle a message through a consumer it has closed (restarted after a
        lost connection, or stopped), but it still announces the ack or nack: the broker then
        settles the message by its id, so a reconnect neither runs it twice nor strands it.
        """
        super().emit_after(signal, *args, **kwargs)
        if self.service.strays and (signal == "ack" or signal == "nack"):
            self.service.settle_stray(args[0], ack=signal == "ack")

    def close(self) -> None:
        """Stop heartbeating (leaving the heartbeats set if nothing is held) and disconnect."""
        self.service.stop()
        self.connection.close()

    def live_transport(self, *, namespace: str | None = None, max_events: int = 1000) -> Transport:
        """The live channel in this broker's Redis, under its namespace (see ``Services``)."""
        return shared_transport(self.connection, namespace or self.namespace, max_events=max_events)

    def live_namespace(self) -> str:
        """Live records of this broker's messages are kept under its own namespace."""
        return self.namespace

    def code_store(self) -> CodeStore:
        """Notebook actors are kept in keys under this broker's namespace."""
        return once(self, "_code_store", lambda: RedisCodeStore(self))

    def start_counter(self, *, prefix: str | None = None) -> StartCounter:
        """Start counters are kept under this broker's namespace (``<ns>:__nbq__:crashes:``),
        counted through the group commit of its connection; one per prefix."""
        start = self.keys.start_counters if prefix is None else prefix
        return once(
            self, f"_start_counter:{start}", lambda: RedisStartCounter(self.connection, start)
        )

    def tick_claims(self) -> TickClaims:
        """Schedule ticks are claimed in keys under this broker's namespace
        (``<ns>:__nbq__:schedules:<name>``), on its connection."""
        return once(
            self, "_tick_claims", lambda: RedisTickClaims(self.connection, self.keys.schedules)
        )

    def worker_registry(self) -> WorkerRegistry:
        """Live workers are registered in keys under this broker's namespace
        (``<ns>:__nbq__:workers``), on its connection."""
        return once(
            self, "_worker_registry", lambda: RedisWorkerRegistry(self.connection, self.keys)
        )

    def check_server(self) -> None:
        """Check the server once: its version, and whether it keeps what it is sent.

        Called by the first operation that talks to Redis; logs a warning once per server and
        process when Redis has no persistence or an evicting ``maxmemory-policy``.

        Raises:
          BrokerError: the server is older than Redis 6.2.
          ConnectionFailed, ConnectionClosed: the server cannot be reached.
        """
        self.connection.check_server(self.logger)

    # -- queues and enqueueing ---------------------------------------------------------------

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue and its delay queue; Redis needs nothing created, so this is local."""
        if queue_name in self.queues:
            return
        self.emit_before("declare_queue", queue_name)
        self.queues[queue_name] = None
        self.emit_after("declare_queue", queue_name)
        delay_name = dq_name(queue_name)
        self.delay_queues.add(delay_name)
        self.emit_after("declare_delay_queue", delay_name)

    def _prepare(
        self, message: Message[Any], delay: int | None, *, hooks: bool = True
    ) -> tuple[Message[Any], str, bytes, int]:
        # Every enqueue stores the message under a fresh id, as Dramatiq's broker does.
        options = {"redis_message_id": generate_unique_id()}
        message, data, target = self.prepare_enqueue(message, delay, options=options, hooks=hooks)
        priority = 0
        if delay is None and self.priorities:
            priority = max(-MAX_PRIORITY, min(MAX_PRIORITY, self.message_priority(message)))
        return message, target, data, priority

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Enqueue a message, to ``<queue>.DQ`` with an ``eta`` when ``delay`` (ms) is given.

        Returns:
          The message as stored, with its new ``redis_message_id`` option.

        Raises:
          EncodeError: the message cannot be encoded (the error names the argument).
          MessageTooLarge: the encoded message is above ``max_message_size``; nothing was sent.
          ConnectionFailed, ConnectionClosed: Redis cannot be reached or did not answer.
        """
        message, target, data, priority = self._prepare(message, delay)
        self.check_server()
        frame = _frame(message.options["redis_message_id"], priority, data)
        self._send(self.keys.enqueue(target), frame, [message])
        self.emit_after("enqueue", message, delay)
        return message

    def _send(self, keys: list[str], frames: bytes, messages: list[Message[Any]]) -> None:
        """Run enqueue.lua once, then, with ``min_replicas``, WAIT on the same connection (WAIT
        counts the replicas that have every write of its connection)."""
        script = self.scripts["enqueue"]
        args: list[bytes | int] = [WAKE_CAP, WAKE_TTL, frames]
        if not self.min_replicas:
            with self.connection.errors():
                script(keys=keys, args=args)
            return
        with self.connection.errors():
            for attempt in (1, 2):
                pipe = self.client.pipeline(transaction=False)
                script(keys=keys, args=args, client=pipe)
                pipe.wait(self.min_replicas, self.wait_timeout)
                try:
                    _, confirmed = pipe.execute()
                    break
                except NoScriptError:
                    # A failover between the pipeline's script check and its send: the new
                    # master lacks the script and ran nothing; the next execute loads it.
                    if attempt == 2:
                        raise
        if int(confirmed) < self.min_replicas:
            raise PublishOutcomeUnknown(
                f"Redis at {self.connection.where} confirmed {len(messages)} message(s) on "
                f"{int(confirmed)} of the {self.min_replicas} replicas asked for within "
                f"{self.wait_timeout} ms; the master holds them, so they most likely run, but "
                f"they are lost if it fails before replicating them: check the replicas (INFO "
                f"replication) and send again if you must (a resend may run them twice).",
                messages,
            )

    def enqueue_many(
        self, messages: Iterable[Message[Any]], *, delay: int | None = None
    ) -> list[Message[Any]]:
        """Enqueue several messages in a few round trips (one per thousand messages or MiB).

        Returns:
          The messages as stored, in order.

        Raises:
          EncodeError: a message cannot be encoded; nothing was sent.
          MessageTooLarge: a message is above ``max_message_size``; nothing was sent.
          ConnectionFailed, ConnectionClosed: Redis failed; the error says how many were sent.
        """
        # Asked once per batch: with no enqueue hooks (the default middleware has none), a batch
        # of thousands skips two calls per message.
        hooks = bool(self._hooks_for("before_enqueue"))
        prepare = self._prepare
        prepared = [prepare(message, delay, hooks=hooks) for message in messages]
        self.check_server()
        by_queue: dict[str, list[tuple[Message[Any], bytes, int]]] = {}
        for message, target, data, priority in prepared:
            by_queue.setdefault(target, []).append((message, data, priority))
        sent = 0
        try:
            for target, entries in by_queue.items():
                keys = self.keys.enqueue(target)
                frames: list[bytes] = []
                size = 0
                batch: list[Message[Any]] = []
                for i, (message, data, priority) in enumerate(entries):
                    frames.append(_frame(message.options["redis_message_id"], priority, data))
                    batch.append(message)
                    size += len(data)
                    if (
                        len(frames) >= BATCH_MESSAGES
                        or size >= BATCH_BYTES
                        or i == len(entries) - 1
                    ):
                        self._send(keys, b"".join(frames), batch)
                        sent += len(frames)
                        frames, size, batch = [], 0, []
        except PublishOutcomeUnknown as e:
            raise PublishOutcomeUnknown(
                f"{e} The {sent} messages before them were confirmed, and none after them "
                f"was sent.",
                e.messages,
            ) from e
        except BrokerError as e:
            raise type(e)(f"{e} {sent} of {len(prepared)} messages were enqueued.") from e
        if self._hooks_for("after_enqueue"):
            for message, _, _, _ in prepared:
                self.emit_after("enqueue", message, delay)
        return [message for message, _, _, _ in prepared]

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Consumer:
        """Return a consumer of ``queue_name``.

        The consumer blocks on a wake-up list while idle, and this broker's background thread
        starts heartbeating and running maintenance on the queue.

        Parameters:
          prefetch: how many messages may be fetched and not yet acknowledged.
          timeout: how long ``next()`` blocks, in milliseconds, before returning ``None``.

        Raises:
          ConnectionFailed, ConnectionClosed: Redis cannot be reached.
        """
        self.check_server()
        return RedisConsumer(self, queue_name, prefetch, timeout)

    # -- queue state -------------------------------------------------------------------------

    def flush(self, queue_name: str) -> None:
        """Drop the messages waiting in a queue and its delay queue, and its dead letters."""
        keys = self.keys
        names = [*keys.stored(queue_name), *keys.stored(dq_name(queue_name))]
        names += keys.dead_letters(queue_name)
        with self.connection.errors():
            self.client.delete(*names)
            self.client.lpush(keys.drained(queue_name), "1")
            self.client.pexpire(keys.drained(queue_name), WAKE_TTL)

    def flush_all(self) -> None:
        """Drop every waiting message and dead letter in every declared queue."""
        for queue_name in self.get_declared_queues():
            self.flush(queue_name)

    def _pending(self, queue_name: str) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(self.keys.messages(queue_name))
        pipe.hlen(self.keys.messages(dq_name(queue_name)))
        return sum(int(n) for n in pipe.execute())

    def join(
        self,
        queue_name: str,
        *,
        timeout: int | None = None,
        fail_fast: bool | None = None,
        interval: int = 100,
    ) -> None:
        """Wait until a queue and its delay queue hold no unacknowledged message.

        The wait wakes as soon as an nbqueue worker acknowledges the last message; acks from
        Dramatiq workers are seen within ``interval``.

        Parameters:
          timeout: in milliseconds; ``None`` waits forever.
          fail_fast: raise when the queue has dead letters once it drained (default False, as
            Dramatiq's RedisBroker, which has no such option).
          interval: the longest wait between two checks, in milliseconds.

        Raises:
          QueueJoinTimeout: the queue did not drain in time.
          NbqueueError: ``fail_fast`` is set and the queue has dead letters.
        """
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        drained = self.keys.drained(queue_name)
        while True:
            with self.connection.errors():
                pending = self._pending(queue_name)
            if not pending:
                break
            wait = min(interval / 1000, self.connection.block_limit)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueJoinTimeout(
                        f"Queue {queue_name!r} still had {pending} unprocessed messages after "
                        f"{timeout} ms; is a worker running on it?"
                    )
                wait = min(wait, remaining)
            if wait >= 0.001:
                with self.connection.errors():
                    self.client.blpop([drained], timeout=round(wait, 3))
        if fail_fast:
            dead = self.get_dead_letters(queue_name, limit=1)
            if dead:
                first = dead[0]
                raise NbqueueError(
                    f"Queue {queue_name!r} has dead letters; the first was dead-lettered as "
                    f"{first.reason}: {first.error}. Pass fail_fast=False to wait without raising."
                )

    def queue_stats(self) -> dict[str, QueueStats]:
        """Return ready, delayed, in-flight and dead counts for each declared queue.

        ``ready`` includes prioritized messages, ``delayed`` counts delayed messages whether
        waiting or held by a worker until their eta, and ``in_flight`` sums the ack sets of
        every worker in the heartbeats set. A few round trips in all, cheap enough for 2 Hz.
        """
        names = sorted(self.queues)
        keys = self.keys
        with self.connection.errors():
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.llen(keys.queue(name))
                pipe.zcard(keys.prioritized(name))
                pipe.hlen(keys.messages(dq_name(name)))
                pipe.zcard(keys.dead(name))
            pipe.zrange(keys.heartbeats, 0, -1)
            *counts, workers = pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            for worker in workers:
                for name in names:
                    pipe.scard(keys.ack_set(as_text(worker), name))
            in_flight = [int(n) for n in pipe.execute()] if workers and names else []
        stats = {}
        for i, name in enumerate(names):
            ready, prioritized, delayed, dead = (int(n) for n in counts[4 * i : 4 * i + 4])
            flying = sum(in_flight[i :: len(names)]) if in_flight else 0
            stats[name] = QueueStats(
                ready=ready + prioritized, delayed=delayed, in_flight=flying, dead=dead
            )
        return stats

    def get_dead_letters(self, queue_name: str, *, limit: int | None = None) -> list[DeadLetter]:
        """Return the dead letters of a queue, oldest first, each with its reason.

        Letters a Dramatiq worker dead-lettered have the reason ``"failed"`` and no error text.

        Parameters:
          limit: return at most this many.
        """
        stop = -1 if limit is None else limit - 1
        if stop < -1:
            return []
        with self.connection.errors():
            reply = self.scripts["dead_letters"](
                keys=self.keys.dead_letters(queue_name), args=[stop]
            )
        letters = []
        for i in range(0, len(reply), 3):
            data, why = reply[i + 1], reply[i + 2]
            if not data:
                continue
            body = data if isinstance(data, bytes) else str(data).encode()
            reason, error = "failed", None
            if why:
                try:
                    details = json.loads(why)
                    reason, error = str(details.get("reason") or reason), details.get("error")
                except (ValueError, AttributeError):
                    pass
            try:
                message: Message[Any] | None = Message.decode(body)
            except DecodeError:
                message = None
            letters.append(DeadLetter(q_name(queue_name), body, reason, message, error))
        return letters

    def requeue_dead_letter(self, queue_name: str, message_id: str) -> Message[Any] | None:
        """Move a dead letter back to its queue (see ``Broker.requeue_dead_letter``).

        The letter is taken out first, atomically (one of two callers gets it), then enqueued
        under a fresh ``redis_message_id``; if the enqueue fails it is put back.
        """
        canonical = q_name(queue_name)
        letter = next(
            (
                d
                for d in self.get_dead_letters(canonical)
                if d.message is not None and d.message.message_id == message_id
            ),
            None,
        )
        if letter is None or letter.message is None:
            return None
        rid = str(letter.message.options.get("redis_message_id") or "")
        keys = self.keys.dead_letters(canonical)
        with self.connection.errors():
            body = self.scripts["requeue_dead"](keys=keys, args=[rid])
        if not body:
            return None
        message = Message.decode(body if isinstance(body, bytes) else str(body).encode())
        try:
            return self.enqueue(message)
        except Exception:
            with self.connection.errors():
                pipe = self.client.pipeline(transaction=True)
                pipe.zadd(keys[0], {rid: time.time() * 1000})
                pipe.hset(keys[1], rid, body)
                pipe.execute()
            raise


def _frame(rid: str, priority: int, data: bytes) -> bytes:
    """Frame one message for enqueue.lua: id (36 bytes), priority, body length, body."""
    if len(rid) != 36:
        raise ValueError(f"redis_message_id must be a 36-character uuid, got {rid!r}.")
    return b"%s%+05d%010d%s" % (rid.encode(), priority, len(data), data)


# Dramatiq's import path is the public one (reprs, docs and pickled references name it).
RedisBroker.__module__ = "nbqueue.brokers.redis"
