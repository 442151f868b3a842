"""The Redis consumer: fetches in batches, blocks on a wake-up list while idle.

An idle consumer blocks on its queue's wake-up list, which nbqueue producers push to, on a
connection of its own (so blocked consumers never starve the connection pool), and looks for
messages sent without a wake-up (Dramatiq producers, recoveries by Dramatiq) every
``poll_interval``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..broker import Consumer, MessageProxy
from ..errors import BrokerConnectionError, BrokerError, DecodeError
from ..message import Message, too_large_text
from .service import Entry, dead_letter_details, message_redis_id

if TYPE_CHECKING:
    import redis

    from .broker import RedisBroker

__all__ = ["RedisConsumer"]

#: How many messages one fetch takes at most (Lua's unpack() has a limit).
FETCH_LIMIT = 500
#: How long a consumer with part of its window free waits for acks to refill in a batch before
#: it fetches into the free part anyway (seconds).
REFILL_WAIT = 0.05


class RedisConsumer(Consumer):
    """Consumes one queue: fetches in batches, blocks on a wake-up list while idle.

    ``close()`` gives back every message fetched and not settled, at once: messages still
    being processed too, since a worker that closes a consumer no longer settles through it
    (their actors outlived its stop timeout; should one finish first, its ack deletes the
    requeued copy). After a lost connection, when the worker restarts the consumer, close()
    does not wait for Redis: what was not handed out goes back from the broker's thread once
    Redis answers, and what is being processed stays this worker's, settled by id when the
    worker announces its ack or nack, so a reconnect runs nothing twice. A call that failed
    that way may have taken messages on the server whose reply never came (a fetch, or a pop
    from the inbox): the next consumer of the queue reclaims them with its first fetch.
    """

    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(1, prefetch)
        self.timeout = timeout
        self.service = broker.service
        self._fetch_keys = broker.keys.fetch(queue_name, broker.broker_id)
        self._handed: set[str] = set()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._closed = False
        self._interrupted = False
        self._broken = False
        self._waiting_for_room = False
        self._idle_since: float | None = None
        self._woken = False
        self._blocking = False
        self._blocker: redis.Redis | None = None
        self._inbox = broker.keys.inbox(broker.broker_id, queue_name)
        self._block_keys = [self._inbox, broker.keys.wake(queue_name)]
        # An idle registration outlives the wait between two fetches of an idle consumer.
        self._idle_for = broker.poll_interval + int(broker.connection.block_limit * 1000) + 500
        self._cache: collections.deque[Entry] = collections.deque()
        self.service.attach(queue_name)

    def __next__(self) -> MessageProxy | None:
        try:
            return self._next()
        except BrokerConnectionError:
            self._broken = True  # the worker restarts this consumer: see close()
            raise

    def _next(self) -> MessageProxy | None:
        deadline = time.monotonic() + self.timeout / 1000
        service, queue = self.service, self.queue_name
        poll = self.broker.poll_interval / 1000
        refill_due = False
        while True:
            if self._interrupted:
                return None
            if self._cache:
                proxy = self._deliver(*self._cache.popleft())
                if proxy is not None:
                    return proxy
                continue
            with self._lock:
                room = self.prefetch - len(self._handed)
                # Refill in batches: with more than half the window still out, wait a moment for
                # acks rather than fetching one message per round trip. Only a moment: when the
                # held messages are long jobs, the free part of the window (idle threads, when
                # the prefetch is near the thread count) must not wait for them to finish.
                batching = room < self.prefetch // 2 and self._idle_since is None
                if room <= 0 or (batching and not refill_due):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._waiting_for_room = True
                    acked = self._room.wait(remaining if room <= 0 else min(remaining, REFILL_WAIT))
                    self._waiting_for_room = False
                    refill_due = not acked and room > 0
                    continue
                refill_due = False
            since = self._idle_since
            if since is None or self._woken or time.monotonic() - since >= poll:
                self._woken = False
                entries = service.fetch(
                    queue, min(room, FETCH_LIMIT), self._fetch_keys, idle_for=self._idle_for
                )
                if entries:
                    self._idle_since = None
                    self._cache.extend(entries)
                    continue
                self._idle_since = since = time.monotonic()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            pause = min(remaining, poll - (time.monotonic() - since))
            if pause > 0:
                self._woken = self._block(pause)

    def _block(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a message handed to the inbox (it goes to the
        cache) or a wake-up token; return whether either came."""
        connection = self.broker.connection
        timeout = min(timeout, connection.block_limit)
        if timeout < 0.002:  # Redis reads a timeout below a millisecond as "forever"
            return False
        if self._blocker is None:
            self._blocker = connection.dedicated()
        if self.interrupted():
            return False
        self._blocking = True
        try:
            with connection.errors():
                popped = self._blocker.blpop(self._block_keys, timeout=round(timeout, 3))
        except Exception:
            # interrupt() shut the socket down under us: redis-py then raises all sorts
            if self.interrupted():
                return False
            raise
        finally:
            self._blocking = False
        if popped is None:
            return False
        key, frame = popped
        if key == self._inbox.encode() or key == self._inbox:
            raw = frame if isinstance(frame, bytes) else str(frame).encode()
            self._cache.append((raw[:36].decode(), raw[36:]))
            self._idle_since = None
        return True

    def _deliver(self, rid: str, data: bytes | int) -> MessageProxy | None:
        # ``data`` is the size alone when fetch.lua found the body above the limit; the length
        # is checked before decoding either way, so a huge body is never parsed.
        size = data if isinstance(data, int) else len(data)
        limit = self.broker.max_message_size
        if isinstance(data, int) or (limit is not None and size > limit):
            reason, error = "too_large", too_large_text(self.queue_name, size, limit or 0)
        else:
            try:
                message = Message.decode(data)
            except DecodeError as e:
                reason, error = e.reason, str(e)
            else:
                reason = error = ""
        if reason:
            self.broker.logger.error(
                "Dead-lettered a message on %r that could not be run (%s): %.500s",
                self.queue_name,
                reason,
                error,
            )
            try:
                self.service.nack(self.queue_name, rid, reason, error)
            except BrokerError:
                self._cache.appendleft((rid, data))
                raise
            return None
        proxy = MessageProxy(message)
        proxy._redis_id = rid  # type: ignore[attr-defined]
        with self._lock:
            self._handed.add(rid)
        self.service.hold(self.queue_name, rid)
        return proxy

    def _settled(self, rids: Iterable[str]) -> None:
        with self._lock:
            self._handed.difference_update(rids)
            if self._waiting_for_room and len(self._handed) <= self.prefetch // 2:
                self._room.notify()

    def ack(self, message: MessageProxy) -> None:
        rid = message_redis_id(message)
        if rid is None:
            self.broker.logger.warning(
                "Cannot acknowledge %s: it has no redis_message_id.", message.message_id
            )
            return
        self.service.ack(self.queue_name, rid)
        self._settled((rid,))

    def nack(self, message: MessageProxy) -> None:
        rid = message_redis_id(message)
        if rid is None:
            self.broker.logger.warning(
                "Cannot dead-letter %s: it has no redis_message_id.", message.message_id
            )
            return
        self.service.nack(self.queue_name, rid, *dead_letter_details(message))
        self._settled((rid,))

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        rids = [rid for rid in (message_redis_id(m) for m in messages) if rid is not None]
        if not rids:
            return
        self.broker.logger.debug("Requeueing %d messages on %r.", len(rids), self.queue_name)
        self.service.requeue(self.queue_name, rids)
        self._settled(rids)

    def interrupted(self) -> bool:
        """Whether ``interrupt()`` was called (from another thread)."""
        return self._interrupted

    def interrupt(self) -> None:
        self._interrupted = True
        with self._lock:
            self._room.notify()
        blocker = self._blocker
        if blocker is not None and self._blocking:
            # Shutting the socket down ends a blocked BLPOP at once, with no round trip.
            blocker.connection_pool.disconnect()

    def close(self) -> None:
        """Give back what was fetched and not settled; see the class docstring."""
        if self._closed:
            return
        self._closed = True
        restarting = self._broken
        if restarting:
            # A fetch or inbox pop whose reply was lost may have taken messages for us.
            self.service.suspect(self.queue_name)
        else:
            # Acks still being written land first, so the counts are right when close returns.
            self.service.acker.flush((self.broker.connection.socket_timeout or 5) + 1)
        rids = [rid for rid, _ in self._cache]
        self._cache.clear()
        with self._lock:
            running = list(self._handed)
            self._handed.clear()
        # The worker does not settle through a consumer it closed; the broker settles these by
        # id when the worker announces their ack or nack (RedisBroker.emit_after).
        self.service.add_strays(self.queue_name, running)
        if running and not restarting:
            # A worker stopping: these actors outlived its stop timeout. They go back to run
            # again, unless they finish first and their ack deletes the requeued copy.
            rids += running
            self.broker.logger.warning(
                "Requeued %d messages on %r whose actors were still running when the consumer "
                "closed; they run again unless they finish before another worker takes them.",
                len(running),
                self.queue_name,
            )
        # A consumer restarting after a lost connection does not wait for Redis: the broker's
        # thread gives these back once it answers.
        self.service.give_back(self.queue_name, rids, leave=True, now=not restarting)
        self.service.detach(self.queue_name)
        if self._blocker is not None:
            self._blocker.close()
            self._blocker.connection_pool.disconnect()
            self._blocker = None
