"""Dead-letter a message that keeps killing the worker process running it (a poison pill)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from .base import Middleware, SkipMessage

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy

__all__ = ["CrashLimit"]

#: How long a start counter lives without being finished, in milliseconds (a day): long enough
#: for a crash-looping worker to come back, short enough that forgotten counters go away.
DEFAULT_TTL = 86_400_000

#: The deadline of every Redis call this middleware makes when it makes its own client, in s.
DEFAULT_TIMEOUT = 2.0


#: KEYS: the counters to increment (ARGV[2] of them), then the counters to delete; ARGV[1]: TTL.
_COUNT_STARTS = """
local n = tonumber(ARGV[2])
local counts = {}
for i = 1, n do
  counts[i] = redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
for i = n + 1, #KEYS do
  redis.call('DEL', KEYS[i])
end
return counts
"""


class _Request:
    """One worker thread's wish to count a start, answered by whichever thread sends it."""

    __slots__ = ("count", "done", "error", "key", "promoted")

    def __init__(self, key: str) -> None:
        self.key = key
        self.done = threading.Event()
        self.count: int | None = None
        self.error: BaseException | None = None
        self.promoted = False

    def result(self) -> int:
        if self.error is not None:
            raise self.error
        if self.count is None:
            raise TimeoutError("the start was not counted")
        return self.count


class CrashLimit(Middleware):
    """Dead-letter a message whose actor killed its worker process ``max_crashes`` times.

    Retries cannot help with an actor that segfaults, runs out of memory or calls ``os._exit``:
    the process dies before any hook runs, the broker redelivers the message to the next
    process, and that one dies too. This middleware counts starts that never finished. Before
    an actor runs it increments a counter in Redis keyed by the message id and its retry number
    (one script call, which also carries the deletes of counters whose attempts finished since
    the last call, and counts the starts of every worker thread asking at the same moment);
    after the attempt, raising or not, the counter is queued for deletion. A message that arrives with ``max_crashes`` unfinished starts already recorded
    is not run: it is dead-lettered with the reason ``"crash_limit"``. So the process dies
    exactly ``max_crashes`` times on a poison message.

    Opt-in, and not in ``default_middleware``: it costs one Redis round trip per message. On a
    ``RedisBroker`` it uses the broker's own client and namespace; on any other broker pass
    ``redis=`` (a URL or a ``redis.Redis``). If Redis cannot be reached the message runs
    anyway and a warning is logged: the limit is a safety net, not a gate that stops all work.

    The other messages a worker process was running when a poison message killed it die with
    it, and come back with it. So that they are not blamed, a message with an unfinished start
    recorded (a suspect) runs only while no other suspect runs in the same process, and its
    counter is deleted as soon as it finishes (one more round trip, for suspects only); one
    that has to wait for its turn does not count as started while it waits.

    A counter whose deletion was still queued when the process died (at most one per worker
    thread that had just finished) counts one start too many if that message is delivered again
    (its acknowledgement was lost too); ``max_crashes`` of 2 or more absorbs that.

    The limit comes from the message's ``max_crashes`` option, then the actor's, then this
    default; ``0`` or ``None`` turns the check off for that message.

    Parameters:
      max_crashes: how many process deaths one attempt of a message may cause.
      redis: a ``redis://`` URL or a ``redis.Redis`` client for the counters; required unless
        the broker is a ``RedisBroker``.
      ttl: how long a counter lives, in milliseconds.
      timeout: the deadline of each Redis call, in seconds, for a client made from a URL (a
        given client and the broker's client keep their own).
      key_prefix: the start of every counter's key; by default ``<namespace>:__nbq__:crashes:``
        on a ``RedisBroker`` and ``nbqueue:__nbq__:crashes:`` otherwise.

    Raises:
      ValueError: ``max_crashes`` or ``ttl`` is not positive.
    """

    def __init__(
        self,
        *,
        max_crashes: int = 3,
        redis: Any = None,
        ttl: int = DEFAULT_TTL,
        timeout: float = DEFAULT_TIMEOUT,
        key_prefix: str | None = None,
    ) -> None:
        if max_crashes < 1:
            raise ValueError(f"max_crashes must be at least 1, got {max_crashes!r}.")
        if ttl < 1:
            raise ValueError(f"ttl is in milliseconds and must be positive, got {ttl!r}.")
        self.logger = logging.getLogger(__name__)
        self.max_crashes = max_crashes
        self.ttl = ttl
        self.timeout = timeout
        self.key_prefix = key_prefix
        self._redis = redis
        self._client: Any = None
        self._owns_client = False
        self._lock = threading.Lock()
        self._finished: list[str] = []
        self._waiting: list[_Request] = []
        self._leading = False
        self._script: Any = None
        self._local = threading.local()
        self._suspects = threading.Lock()
        self._warned = False

    @property
    def actor_options(self) -> set[str]:
        return {"max_crashes"}

    def _connect(self, broker: Broker) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            namespace = "nbqueue"
            if self._redis is None:
                client = getattr(broker, "client", None)
                if client is None or not hasattr(broker, "keys"):
                    raise ValueError(
                        f"CrashLimit needs Redis for its counters and {type(broker).__name__} "
                        f"has none; pass CrashLimit(redis='redis://...')."
                    )
                namespace = str(getattr(broker, "namespace", namespace))
            elif isinstance(self._redis, str):
                try:
                    import redis
                except ImportError:
                    raise ValueError(
                        "CrashLimit(redis=URL) needs the redis package: "
                        "pip install 'nbqueue[redis]'."
                    ) from None
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                client = redis.Redis.from_url(
                    self._redis,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    retry_on_timeout=False,
                    retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                )
                self._owns_client = True
            else:
                client = self._redis
            if self.key_prefix is None:
                self.key_prefix = f"{namespace}:__nbq__:crashes:"
            self._client = client
            return client

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
        self._local.key = None
        self._local.suspect = False
        limit = self._limit(broker, message)
        if not limit:
            return
        try:
            client = self._connect(broker)
            key = f"{self.key_prefix}{message.message_id}.{message.options.get('retries', 0)}"
            starts = self._count_start(client, key)
        except Exception as e:
            if not self._warned:
                self._warned = True
                self.logger.warning(
                    "CrashLimit could not count the starts of message %s (%s); running it "
                    "without the limit. Check that its Redis is reachable.",
                    message.message_id,
                    e if isinstance(e, ValueError) else type(e).__name__,
                )
            return
        self._warned = False
        if starts > limit:
            self._dead_letter(message, key, starts)
        if starts > 1 and not self._suspects.acquire(blocking=False):
            # A suspect (it was running when a process died) runs only while no other suspect
            # runs in this process, so that the neighbours of a poison message, which die with
            # it and come back with it, are not blamed for its crashes. Waiting does not count
            # as a start: undo it, wait, and count again.
            acquired = False
            try:
                self._uncount(client, key)
                acquired = self._suspects.acquire()
                starts = self._count_start(client, key)
            except Exception as e:
                if acquired:
                    self._suspects.release()
                self.logger.warning(
                    "CrashLimit could not count the starts of message %s again (%s); running "
                    "it without the limit.",
                    message.message_id,
                    type(e).__name__,
                )
                return
            if starts > limit:
                self._suspects.release()
                self._dead_letter(message, key, starts)
        self._local.suspect = starts > 1
        self._local.key = key

    def _dead_letter(self, message: MessageProxy, key: str, starts: int) -> None:
        self.logger.error(
            "Message %s (%s) killed its worker process %d times; it was dead-lettered "
            "with reason 'crash_limit' instead of running again.",
            message.message_id,
            message.actor_name,
            starts - 1,
        )
        self._finish(key)
        message.fail(reason="crash_limit")
        raise SkipMessage(
            f"Message {message.message_id!r} killed its worker process {starts - 1} times; "
            f"fix the actor {message.actor_name!r}, then send it again."
        )

    def _uncount(self, client: Any, key: str) -> None:
        client.decr(key)  # a rare extra round trip: only for a suspect that has to wait

    def _finished_attempt(self) -> None:
        key, self._local.key = getattr(self._local, "key", None), None
        if key is not None and getattr(self._local, "suspect", False):
            # A suspect's counter goes at once, before the next suspect may start: queued, it
            # would survive a poison message that kills the process next, and blame this one.
            try:
                self._client.delete(key)
                key = None
            except Exception:
                pass  # queued below, like any other
        self._finish(key)
        self._release_suspect()

    def _release_suspect(self) -> None:
        if getattr(self._local, "suspect", False):
            self._local.suspect = False
            self._suspects.release()

    def _count_start(self, client: Any, key: str) -> int:
        """Count one start of ``key`` and return the count, in one round trip shared with the
        worker threads asking at the same moment (a group commit: the first thread in sends
        every waiting request and the queued deletes in one script call; a thread that
        arrives meanwhile waits for the next call, which the first one waiting makes)."""
        request = _Request(key)
        with self._lock:
            self._waiting.append(request)
            leader = not self._leading
            self._leading = True
        if not leader:
            if not request.done.wait(self.timeout * 2 + 1):
                raise TimeoutError("no answer from the thread counting starts")
            if not request.promoted:
                return request.result()
        with self._lock:
            batch, self._waiting = self._waiting, []
            finished, self._finished = self._finished, []
        try:
            if self._script is None:
                self._script = client.register_script(_COUNT_STARTS)
            counts = self._script(
                keys=[r.key for r in batch] + finished, args=[self.ttl, len(batch)], client=client
            )
            for r, count in zip(batch, counts, strict=True):
                r.count = int(count)
        except Exception as e:
            with self._lock:  # try those deletes again with the next call
                self._finished[:0] = finished
            for r in batch:
                r.error = e
        finally:
            with self._lock:
                if self._waiting:
                    self._waiting[0].promoted = True
                    self._waiting[0].done.set()
                else:
                    self._leading = False
            for r in batch:
                r.done.set()
        return request.result()

    def _finish(self, key: str | None) -> None:
        if key is not None:
            with self._lock:
                self._finished.append(key)

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
        """Delete the counters of finished attempts still queued, then close an own client."""
        with self._lock:
            finished, self._finished = self._finished, []
            client, self._client = self._client, None
        if client is None:
            return
        try:
            if finished:
                client.delete(*finished)
        except Exception as e:
            self.logger.warning(
                "CrashLimit could not delete %d finished start counters (%s); they expire "
                "after %d ms.",
                len(finished),
                type(e).__name__,
                self.ttl,
            )
        if self._owns_client:
            client.close()
