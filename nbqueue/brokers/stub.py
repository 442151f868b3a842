"""The in-memory broker: the embedded default in notebooks, and the broker tests use.

Thread-safe, with delays (``<queue>.DQ`` and ``eta``, as on the real brokers), priorities (a
larger number is fetched first; FIFO among equals), dead letters with reasons, and ``join()``
that wakes the moment a queue drains. Messages are stored encoded, so anything that would not
survive a real broker fails here too, the ``max_message_size`` limit included. Nothing
survives the process: use Redis or RabbitMQ for durability.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from queue import Empty
from typing import Any

from ..broker import Broker, Consumer, DeadLetter, MessageProxy, QueueStats
from ..common import dq_name, q_name
from ..errors import DecodeError, QueueJoinTimeout, QueueNotFound, SkipMessage
from ..message import FROM_ENVIRONMENT, Message, resolve_max_message_size, too_large_text
from ..middleware.base import Middleware
from ..services import (
    CodeStore,
    MemoryCodeStore,
    MemoryTickClaims,
    MemoryWorkerRegistry,
    TickClaims,
    WorkerRegistry,
    once,
)

__all__ = ["StubBroker", "StubQueue"]

# (negated priority, sequence number, encoded body): heapq pops the largest priority, then the
# oldest message.
_Entry = tuple[int, int, bytes]


class StubQueue:
    """One queue of a ``StubBroker``, readable as a ``queue.Queue`` of encoded messages.

    ``broker.queues[name]`` gives it for a queue and for its delay queue, as in Dramatiq:
    ``qsize()`` counts the messages waiting to be fetched, ``unfinished_tasks`` those not yet
    acknowledged or rejected (fetched ones included), and ``get()`` takes the next message's
    body off the queue for a test to inspect; it stays unfinished until ``task_done()``.
    """

    __slots__ = (
        "name",
        "entries",
        "in_flight",
        "unfinished",
        "taken",
        "not_empty",
        "waiting",
        "_drained",
    )

    def __init__(self, name: str, lock: threading.Lock, drained: threading.Condition) -> None:
        self.name = name
        self.entries: list[_Entry] = []
        self.in_flight = 0
        # enqueued and not yet acknowledged or rejected; join() waits for zero
        self.unfinished = 0
        self.taken = 0  # taken by get() and not yet marked done by task_done()
        self.not_empty = threading.Condition(lock)
        self.waiting = 0  # consumers blocked on not_empty
        self._drained = drained

    def __repr__(self) -> str:
        return f"<StubQueue {self.name!r} qsize={len(self.entries)}>"

    def qsize(self) -> int:
        """How many messages wait to be fetched."""
        return len(self.entries)

    def empty(self) -> bool:
        """Whether no message waits to be fetched."""
        return not self.entries

    @property
    def unfinished_tasks(self) -> int:
        """How many messages were enqueued and not yet acknowledged or rejected."""
        return self.unfinished

    def get(self, block: bool = True, timeout: float | None = None) -> bytes:
        """Take the next message off the queue and return its encoded body.

        It counts as unfinished, so ``join()`` waits, until ``task_done()`` is called.

        Parameters:
          block: wait for a message when the queue is empty.
          timeout: how long to wait, in **seconds** (as ``queue.Queue.get``); ``None`` waits
            forever.

        Raises:
          queue.Empty: no message arrived in time (or at once, without ``block``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.not_empty:
            while not self.entries:
                remaining = None if deadline is None else deadline - time.monotonic()
                if not block or (remaining is not None and remaining <= 0):
                    raise Empty
                self.waiting += 1
                try:
                    self.not_empty.wait(remaining)
                finally:
                    self.waiting -= 1
            entry = heapq.heappop(self.entries)
            self.in_flight += 1
            self.taken += 1
            return entry[2]

    def get_nowait(self) -> bytes:
        """``get(block=False)``."""
        return self.get(block=False)

    def task_done(self) -> None:
        """Mark a message taken with ``get()`` as processed.

        Raises:
          ValueError: more calls than messages taken with ``get()``.
        """
        with self.not_empty:
            if self.taken <= 0:
                raise ValueError(
                    f"task_done() was called more times than get() on queue {self.name!r}."
                )
            self.taken -= 1
            self.in_flight -= 1
            self.unfinished -= 1
            if not self.unfinished:
                self._drained.notify_all()


class StubBroker(Broker):
    """A broker that keeps messages in memory.

    Parameters:
      middleware: see ``Broker``.
      fail_fast_default: whether ``join()`` re-raises the error of a dead-lettered message by
        default (Dramatiq's default since 2.0).
      max_message_size: the largest encoded message, in bytes, this broker sends or runs:
        ``enqueue`` raises ``MessageTooLarge`` above it, and a larger body found on a queue is
        dead-lettered ``too_large`` without being decoded. The default is
        ``$NBQUEUE_MAX_MESSAGE_SIZE``, else 16 MiB; ``None`` or 0 disables it (Dramatiq has no
        limit).

    Raises:
      ValueError: ``max_message_size`` (or ``NBQUEUE_MAX_MESSAGE_SIZE``) is not a size.
    """

    #: ``enqueue_many`` prepares the whole batch before queueing any of it (see ``Broker``).
    validates_batches = True

    def __init__(
        self,
        middleware: list[Middleware] | None = None,
        *,
        fail_fast_default: bool = True,
        max_message_size: int | None = FROM_ENVIRONMENT,
    ) -> None:
        #: the size limit in bytes (``None``: no limit); see the class docstring
        self.max_message_size = resolve_max_message_size(max_message_size)
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._store: dict[str, StubQueue] = {}
        self._declared: set[str] = set()  # the queues declared, without their delay queues
        self._sequence = itertools.count()
        self._dead: defaultdict[str, list[DeadLetter]] = defaultdict(list)
        self._dead_exceptions: dict[int, BaseException] = {}
        self.dead_letters_by_queue: defaultdict[str, list[MessageProxy]] = defaultdict(list)
        self.fail_fast_default = fail_fast_default
        super().__init__(middleware=middleware)
        #: each declared queue and delay queue by name, as ``queue.Queue``-like objects
        #: (``broker.queues[name].qsize()``), as in Dramatiq
        self.queues: dict[str, StubQueue] = self._store

    @property
    def dead_letters(self) -> list[MessageProxy]:
        """Every dead-lettered message that could be decoded, across all queues."""
        return [proxy for proxies in self.dead_letters_by_queue.values() for proxy in proxies]

    def get_declared_queues(self) -> set[str]:
        """Return the names of the declared queues (not their delay queues, which
        ``broker.queues`` also holds)."""
        return set(self._declared)

    def _queue(self, queue_name: str) -> StubQueue:
        try:
            return self._store[queue_name]
        except KeyError:
            raise QueueNotFound(
                f"Queue {queue_name!r} is not declared on this broker; declare an actor on it "
                f"(or call broker.declare_queue({queue_name!r})) first."
            ) from None

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue and its delay queue; declaring twice does nothing."""
        if queue_name in self._store:
            return
        self.emit_before("declare_queue", queue_name)
        delay_name = dq_name(queue_name)
        with self._lock:
            self._store[queue_name] = StubQueue(queue_name, self._lock, self._drained)
            self._store[delay_name] = StubQueue(delay_name, self._lock, self._drained)
        self._declared.add(queue_name)
        self.emit_after("declare_queue", queue_name)
        self.delay_queues.add(delay_name)
        self.emit_after("declare_delay_queue", delay_name)

    def _prepare(
        self, message: Message[Any], delay: int | None
    ) -> tuple[Message[Any], StubQueue, int, bytes]:
        # Declaring a queue declares its delay queue too, so the message's own queue name (a
        # queue or its .DQ) is in the store when it can be queued. The check comes before the
        # hooks, which see only messages that can be queued.
        if message.queue_name not in self._store:
            self._queue(q_name(message.queue_name))
        message, data, queue_name = self.prepare_enqueue(message, delay)
        priority = 0 if delay is not None else self.message_priority(message)
        return message, self._store[queue_name], priority, data

    def _push(self, entries: list[tuple[Message[Any], StubQueue, int, bytes]]) -> None:
        with self._lock:
            for _, queue, priority, data in entries:
                heapq.heappush(queue.entries, (-priority, next(self._sequence), data))
                queue.unfinished += 1
                if queue.waiting:
                    queue.not_empty.notify_all()

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Enqueue a message, to ``<queue>.DQ`` with an ``eta`` when ``delay`` (ms) is given.

        Raises:
          QueueNotFound: the queue was never declared.
          EncodeError: the message cannot be encoded (the error names the argument).
          MessageTooLarge: the encoded message is above ``max_message_size``; nothing was queued.
        """
        entry = self._prepare(message, delay)
        self._push([entry])
        self.emit_after("enqueue", entry[0], delay)
        return entry[0]

    def enqueue_many(
        self, messages: Iterable[Message[Any]], *, delay: int | None = None
    ) -> list[Message[Any]]:
        """Enqueue several messages, all or none: each is encoded and checked first.

        Raises:
          QueueNotFound, EncodeError, MessageTooLarge: as ``enqueue``; nothing was queued.
        """
        entries = [self._prepare(message, delay) for message in messages]
        self._push(entries)
        for message, _, _, _ in entries:
            self.emit_after("enqueue", message, delay)
        return [message for message, _, _, _ in entries]

    def code_store(self) -> CodeStore:
        """Notebook actors published to this broker stay in this process."""
        return once(self, "_code_store", MemoryCodeStore)

    def tick_claims(self) -> TickClaims:
        """Schedule ticks are claimed in this process (its only worker fleet)."""
        return once(self, "_tick_claims", MemoryTickClaims)

    def worker_registry(self) -> WorkerRegistry:
        """The workers of this broker run in this process, and are registered here."""
        return once(self, "_worker_registry", MemoryWorkerRegistry)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 100) -> Consumer:
        """Return a consumer of a declared queue; ``timeout`` is in milliseconds.

        Raises:
          QueueNotFound: the queue was never declared.
        """
        return _StubConsumer(self, self._queue(queue_name), prefetch, timeout)

    def flush(self, queue_name: str) -> None:
        """Drop the messages waiting in a queue and its delay queue, and its dead letters."""
        with self._lock:
            for name in (queue_name, dq_name(queue_name)):
                queue = self._store.get(name)
                if queue is not None:
                    queue.entries.clear()
                    queue.unfinished = queue.in_flight
            self._dead[q_name(queue_name)].clear()
            self.dead_letters_by_queue[q_name(queue_name)].clear()
            self._drained.notify_all()

    def flush_all(self) -> None:
        """Drop every waiting message and every dead letter, in every queue."""
        for queue_name in self.get_declared_queues():
            self.flush(queue_name)
        with self._lock:
            self._dead_exceptions.clear()
            for dead in self._dead.values():
                dead.clear()
            for proxies in self.dead_letters_by_queue.values():
                proxies.clear()

    def join(
        self, queue_name: str, *, timeout: int | None = None, fail_fast: bool | None = None
    ) -> None:
        """Wait until a queue and its delay queue hold no unacknowledged message.

        Parameters:
          timeout: in milliseconds; ``None`` waits forever.
          fail_fast: re-raise the exception of the first dead-lettered message of the queue
            (default: the broker's ``fail_fast_default``, True). A message that a middleware
            skipped without running it (``AgeLimit``) does not count. Call ``flush`` to forget
            the failures.

        Raises:
          QueueJoinTimeout: the queue did not drain in time.
          QueueNotFound: the queue was never declared.
        """
        queue, delayed = self._queue(queue_name), self._queue(dq_name(queue_name))
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        with self._lock:
            while queue.unfinished or delayed.unfinished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise QueueJoinTimeout(
                        f"Queue {queue_name!r} still had {queue.unfinished + delayed.unfinished} "
                        f"unprocessed messages after {timeout} ms; is a worker running on it?"
                    )
                self._drained.wait(remaining)
            dead = list(self._dead[queue_name])
        if fail_fast is None:
            fail_fast = self.fail_fast_default
        # A message a middleware skipped (AgeLimit's expired ones) was not run, so it is no
        # failure of the code under test.
        dead = [d for d in dead if not isinstance(self._dead_exceptions.get(id(d)), SkipMessage)]
        if fail_fast and dead:
            first = dead[0]
            exception = self._dead_exceptions.get(id(first))
            if exception is not None:
                raise exception
            if first.message is None:
                raise DecodeError(
                    f"A message on {queue_name!r} was dead-lettered as {first.reason}: {first.error}",
                    first.data,
                    reason=first.reason,
                )
            raise Exception(
                f"Message {first.message} was dead-lettered ({first.reason}); pass "
                f"fail_fast=False to join() to wait without raising."
            )

    def queue_stats(self) -> dict[str, QueueStats]:
        """Return ready, delayed, in-flight and dead counts for each declared queue."""
        stats = {}
        with self._lock:
            for name in [n for n in self._store if n in self._declared]:
                queue, delayed = self._store[name], self._store[dq_name(name)]
                stats[name] = QueueStats(
                    ready=len(queue.entries),
                    delayed=len(delayed.entries) + delayed.in_flight,
                    in_flight=queue.in_flight,
                    dead=len(self._dead[name]),
                )
        return stats

    def get_dead_letters(self, queue_name: str, *, limit: int | None = None) -> list[DeadLetter]:
        """Return the dead letters of a queue, oldest first, each with its reason.

        Parameters:
          limit: return at most this many.
        """
        with self._lock:
            return list(self._dead[q_name(queue_name)][:limit])

    def requeue_dead_letter(self, queue_name: str, message_id: str) -> Message[Any] | None:
        """Move a dead letter back to its queue (see ``Broker.requeue_dead_letter``)."""
        canonical = q_name(queue_name)
        with self._lock:
            letters = self._dead[canonical]
            found = next(
                (
                    d
                    for d in letters
                    if d.message is not None and d.message.message_id == message_id
                ),
                None,
            )
            if found is None or found.message is None:
                return None
            letters.remove(found)
            self._dead_exceptions.pop(id(found), None)
            proxies = self.dead_letters_by_queue[canonical]
            proxies[:] = [p for p in proxies if p.message_id != message_id]
        return self.enqueue(found.message)

    # called by consumers, with data the consumer fetched
    def _settle(self, queue: StubQueue) -> None:
        queue.in_flight -= 1
        queue.unfinished -= 1
        if queue.waiting and queue.entries:
            queue.not_empty.notify_all()  # a consumer at its prefetch limit may take one now
        if not queue.unfinished:
            self._drained.notify_all()

    def _kill(self, queue: StubQueue, dead: DeadLetter, proxy: MessageProxy | None) -> None:
        exception = proxy.exception if proxy is not None else None
        with self._lock:
            canonical = q_name(queue.name)
            self._dead[canonical].append(dead)
            if exception is not None:
                self._dead_exceptions[id(dead)] = exception
            if proxy is not None:
                self.dead_letters_by_queue[canonical].append(proxy)
            self._settle(queue)


class _StubMessageProxy(MessageProxy):
    """A proxy that keeps its exception after processing, as Dramatiq's stub does.

    Other brokers' proxies drop it once the message is settled, breaking the reference cycle
    through the traceback; here tests read ``broker.dead_letters[0].exception`` and ``join()``
    re-raises it, and the garbage collector breaks the cycle.
    """

    def clear_exception(self) -> None:
        """Keep the exception (see the class docstring)."""


class _StubConsumer(Consumer):
    def __init__(self, broker: StubBroker, queue: StubQueue, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self.timeout = timeout
        # delivery tag -> entry, for messages handed out and not yet settled
        self._outstanding: dict[int, _Entry] = {}
        self._tags = itertools.count()
        self._lock = broker._lock
        self._interrupted = False

    def __next__(self) -> MessageProxy | None:
        deadline = time.monotonic() + self.timeout / 1000
        queue = self.queue
        while True:
            with self._lock:
                while not queue.entries or len(self._outstanding) >= self.prefetch:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._interrupted:
                        return None
                    queue.waiting += 1
                    try:
                        queue.not_empty.wait(remaining)
                    finally:
                        queue.waiting -= 1
                entry = heapq.heappop(queue.entries)
                tag = next(self._tags)
                self._outstanding[tag] = entry
                queue.in_flight += 1
            limit = self.broker.max_message_size
            if limit is not None and len(entry[2]) > limit:
                # checked before decoding: a huge body is never parsed
                text = too_large_text(self.queue.name, len(entry[2]), limit)
                self._reject(tag, entry, "too_large", text)
                continue
            try:
                message = Message.decode(entry[2])
            except DecodeError as e:
                self._reject(tag, entry, e.reason, str(e))
                continue
            proxy = _StubMessageProxy(message)
            proxy._delivery_tag = tag  # type: ignore[attr-defined]
            return proxy

    def _reject(self, tag: int, entry: _Entry, reason: str, error: str) -> None:
        """Dead-letter a body that is not run (undecodable, invalid, too large)."""
        with self._lock:
            if self._outstanding.pop(tag, None) is None:
                return
        self.broker.logger.error(
            "Dead-lettered a message on %r that could not be run (%s): %.500s",
            self.queue.name,
            reason,
            error,
        )
        dead = DeadLetter(q_name(self.queue.name), entry[2], reason, None, error)
        self.broker._kill(self.queue, dead, None)

    def _take(self, message: MessageProxy) -> _Entry | None:
        tag = getattr(message, "_delivery_tag", None)
        with self._lock:
            return self._outstanding.pop(tag, None) if tag is not None else None

    def ack(self, message: MessageProxy) -> None:
        tag = getattr(message, "_delivery_tag", None)
        with self._lock:
            if tag is None or self._outstanding.pop(tag, None) is None:
                return  # already settled, or handed back when the consumer closed
            self.broker._settle(self.queue)

    def nack(self, message: MessageProxy) -> None:
        entry = self._take(message)
        if entry is None:
            return
        reason = message.dead_reason or "failed"
        exception = message.exception
        dead = DeadLetter(
            q_name(self.queue.name),
            entry[2],
            reason,
            message.message,
            None if exception is None else f"{type(exception).__name__}: {exception}",
        )
        self.broker._kill(self.queue, dead, message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        entries = [e for e in (self._take(m) for m in messages) if e is not None]
        self._put_back(entries)

    def _put_back(self, entries: list[_Entry]) -> None:
        # Entries keep their original sequence numbers, so they return to their old place.
        if not entries:
            return
        with self._lock:
            for entry in entries:
                heapq.heappush(self.queue.entries, entry)
                self.queue.in_flight -= 1
            self.queue.not_empty.notify_all()

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            self.queue.not_empty.notify_all()

    def close(self) -> None:
        with self._lock:
            entries = list(self._outstanding.values())
            self._outstanding.clear()
        self._put_back(entries)
