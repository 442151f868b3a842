"""Dead-letter a message that keeps killing the worker process running it (a poison pill)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..logging import get_logger
from ..services import StartCounter
from .base import Middleware, SkipMessage

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy

__all__ = ["CrashLimit"]

#: How long a start counter lives without being finished, in milliseconds (a day): long enough
#: for a crash-looping worker to come back, short enough that forgotten counters go away.
DEFAULT_TTL = 86_400_000

#: The deadline of every Redis call this middleware makes when it makes its own client, in s.
DEFAULT_TIMEOUT = 2.0

#: Makes the counters of ``CrashLimit(redis=...)`` from the URL or client, the key prefix
#: (``None``: the default) and the deadline of each call in seconds. ``nbqueue/__init__.py``
#: installs ``nbqueue.connection.start_counter_for`` here: the face knows the servers, the core
#: does not.
redis_counter_factory: Callable[[Any, str | None, float], StartCounter] | None = None


class CrashLimit(Middleware):
    """Dead-letter a message whose actor killed its worker process ``max_crashes`` times.

    Retries cannot help with an actor that segfaults, runs out of memory or calls ``os._exit``:
    the process dies before any hook runs, the broker redelivers the message to the next
    process, and that one dies too. This middleware counts starts that never finished. Before
    an actor runs it increments a counter in Redis keyed by the message id and its retry number
    (one round trip, which also carries the deletes of counters whose attempts finished since
    the last one, shared by every worker thread asking at the same moment: a ``StartCounter``);
    after the attempt, raising or not, the counter is queued for deletion. A message that
    arrives with ``max_crashes`` unfinished starts already recorded is not run: it is
    dead-lettered with the reason ``"crash_limit"``. So the process dies exactly
    ``max_crashes`` times on a poison message.

    Opt-in, and not in ``default_middleware``: it costs one Redis round trip per message. On a
    broker whose server keeps start counters (``broker.start_counter()``: a ``RedisBroker``) it
    uses the broker's connection and namespace; on any other broker pass ``redis=`` (a URL or a
    ``redis.Redis``) or ``counter=``. If the counters cannot be reached the message runs anyway
    and a warning is logged: the limit is a safety net, not a gate that stops all work. A
    start that could not be counted in time is never counted later.

    The other messages a worker process was running when a poison message killed it die with
    it, and come back with it. So that they are not blamed, a message with an unfinished start
    recorded (a suspect) runs only while no other suspect runs in the same process, and its
    counter is deleted as soon as it finishes (one more round trip, for suspects only). A
    suspect's start is counted only once it has its turn (a second round trip, for suspects
    only): the first one counts a start only where none is recorded.

    A counter whose deletion was still queued when the process died (at most one per worker
    thread that had just finished) counts one start too many if that message is delivered again
    (its acknowledgement was lost too); ``max_crashes`` of 2 or more absorbs that.

    The limit comes from the message's ``max_crashes`` option, then the actor's, then this
    default; ``0`` or ``None`` turns the check off for that message.

    Parameters:
      max_crashes: how many process deaths one attempt of a message may cause.
      redis: a ``redis://`` URL or a ``redis.Redis`` client for the counters; required unless
        the broker offers start counters (a ``RedisBroker``) or ``counter`` is given.
      ttl: how long a counter lives, in milliseconds.
      timeout: the deadline of each Redis call, in seconds, for a client made from a URL (a
        given client and the broker's client keep their own).
      key_prefix: the start of every counter's key; by default ``<namespace>:__nbq__:crashes:``
        on a ``RedisBroker`` and ``nbqueue:__nbq__:crashes:`` otherwise (a given ``counter``
        names its own keys).
      counter: the ``StartCounter`` to use instead of the broker's or one on ``redis``; it is
        flushed, not closed, when the worker stops.

    Raises:
      ValueError: ``max_crashes`` or ``ttl`` is not positive, or both ``redis`` and
        ``counter`` are given.
    """

    def __init__(
        self,
        *,
        max_crashes: int = 3,
        redis: Any = None,
        ttl: int = DEFAULT_TTL,
        timeout: float = DEFAULT_TIMEOUT,
        key_prefix: str | None = None,
        counter: StartCounter | None = None,
    ) -> None:
        if max_crashes < 1:
            raise ValueError(f"max_crashes must be at least 1, got {max_crashes!r}.")
        if ttl < 1:
            raise ValueError(f"ttl is in milliseconds and must be positive, got {ttl!r}.")
        if redis is not None and counter is not None:
            raise ValueError(
                "CrashLimit takes redis= or counter=, not both; pass the one that keeps the "
                "counters."
            )
        self.logger = get_logger(__name__, type(self))
        self.max_crashes = max_crashes
        self.ttl = ttl
        self.timeout = timeout
        self.key_prefix = key_prefix
        self._redis = redis
        self._given = counter
        self._counter: StartCounter | None = None
        self._owns_counter = False
        self._lock = threading.Lock()
        self._local = threading.local()
        self._suspects = threading.Lock()
        self._warned = False

    @property
    def actor_options(self) -> set[str]:
        return {"max_crashes"}

    def _connect(self, broker: Broker) -> StartCounter:
        with self._lock:
            if self._counter is None:
                self._counter, self._owns_counter = self._find_counter(broker)
            return self._counter

    def _find_counter(self, broker: Broker) -> tuple[StartCounter, bool]:
        """Return the counter to use, and whether this middleware made it (and closes it)."""
        if self._given is not None:
            return self._given, False
        if self._redis is None:
            counter = broker.start_counter(prefix=self.key_prefix)
            if counter is None:
                raise ValueError(
                    f"CrashLimit needs Redis for its counters and {type(broker).__name__} "
                    f"has none; pass CrashLimit(redis='redis://...')."
                )
            return counter, False
        if redis_counter_factory is None:
            raise ValueError(
                "CrashLimit(redis=...) is resolved by the nbqueue package; import nbqueue "
                "first, or pass counter=."
            )
        try:
            return redis_counter_factory(self._redis, self.key_prefix, self.timeout), True
        except ImportError:
            raise ValueError(
                "CrashLimit(redis=URL) needs the redis package: pip install 'nbqueue[redis]'."
            ) from None

    def _limit(self, broker: Broker, message: MessageProxy) -> int:
        limit = message.options.get("max_crashes")
        if limit is None:
            try:
                actor = broker.get_actor(message.actor_name)
            except Exception:
                return self.max_crashes
            limit = actor.options.get("max_crashes", self.max_crashes)
        return int(limit or 0)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        self._local.name = None
        self._local.suspect = False
        limit = self._limit(broker, message)
        if not limit:
            return
        try:
            counter = self._connect(broker)
            name = f"{message.message_id}.{message.options.get('retries', 0)}"
            # Counted here only if no unfinished start is recorded: a suspect is counted below,
            # once it is its turn.
            starts = counter.count(name, self.ttl, first=True)
        except Exception as e:
            self._could_not_count(message, e)
            return
        self._warned = False
        self._local.counter = counter
        if starts > limit:
            self._dead_letter(message, counter, name, starts)
        if starts > 1:
            # A suspect (it was running when a process died) runs only while no other suspect
            # runs in this process, so that the neighbours of a poison message, which die with
            # it and come back with it, are not blamed for its crashes. It is counted only once
            # it holds the turn: counted while waiting, it would be blamed if the suspect
            # running then killed the process.
            self._suspects.acquire()
            try:
                starts = counter.count(name, self.ttl)
            except Exception as e:
                self._suspects.release()
                self._could_not_count(message, e)
                return
            if starts > limit or starts < 2:  # < 2: its counter expired meanwhile
                self._suspects.release()
            if starts > limit:
                self._dead_letter(message, counter, name, starts)
        self._local.suspect = starts > 1
        self._local.name = name

    def _could_not_count(self, message: MessageProxy, e: Exception) -> None:
        """Warn (once until a count succeeds again) that ``message`` runs without the limit."""
        if self._warned:
            return
        self._warned = True
        self.logger.warning(
            "CrashLimit could not count the starts of message %s (%s); running it without the "
            "limit. Check that its Redis is reachable.",
            message.message_id,
            e if isinstance(e, ValueError) else type(e).__name__,
        )

    def _dead_letter(
        self, message: MessageProxy, counter: StartCounter, name: str, starts: int
    ) -> None:
        self.logger.error(
            "Message %s (%s) killed its worker process %d times; it was dead-lettered "
            "with reason 'crash_limit' instead of running again.",
            message.message_id,
            message.actor_name,
            starts - 1,
        )
        counter.finish(name)
        message.fail(reason="crash_limit")
        raise SkipMessage(
            f"Message {message.message_id!r} killed its worker process {starts - 1} times; "
            f"fix the actor {message.actor_name!r}, then send it again."
        )

    def _finished_attempt(self) -> None:
        name, self._local.name = getattr(self._local, "name", None), None
        if name is not None:
            counter: StartCounter = self._local.counter
            if getattr(self._local, "suspect", False):
                # A suspect's counter goes at once, before the next suspect may start: queued,
                # it would survive a poison message that kills the process next, and blame
                # this one.
                try:
                    counter.delete(name)
                    name = None
                except Exception:
                    pass  # queued below, like any other
            if name is not None:
                counter.finish(name)
        self._release_suspect()

    def _release_suspect(self) -> None:
        if getattr(self._local, "suspect", False):
            self._local.suspect = False
            self._suspects.release()

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._finished_attempt()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._finished_attempt()

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        """Delete the counters of finished attempts still queued, then close a counter this
        middleware made (the next worker makes a new one)."""
        with self._lock:
            counter, self._counter = self._counter, None
        if counter is None:
            return
        try:
            if self._owns_counter:
                counter.close()
            else:
                counter.flush()
        except Exception as e:
            self.logger.warning(
                "CrashLimit could not delete the finished start counters still queued (%s); "
                "they expire after %d ms.",
                type(e).__name__,
                self.ttl,
            )
