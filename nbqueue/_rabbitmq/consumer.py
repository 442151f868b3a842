"""The RabbitMQ consumer: one connection and one I/O thread per consumed queue.

The I/O thread receives deliveries and sends acknowledgements; the worker's consumer thread
decodes messages in ``__next__``; worker threads settle messages through ``ack``/``nack``, which
only hand the delivery tag to the I/O thread. Acknowledgements that arrive in delivery order go
out as one ``Basic.Ack`` with ``multiple`` set.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..broker import Consumer, MessageProxy
from ..common import current_millis, dq_name, q_name, xq_name
from ..errors import BrokerConnectionError, BrokerError, ConnectionClosed, DecodeError
from ..message import Message, too_large_text
from .io import Link, describe_error

if TYPE_CHECKING:
    from .broker import RabbitmqBroker

__all__ = ["RabbitmqConsumer", "RabbitmqMessage"]

logger = logging.getLogger("nbqueue.broker.RabbitmqBroker.consumer")

#: A delivery unacknowledged for this fraction of the consumer_timeout is leased (main queues)
#: or re-published (delayed messages held by a delay-queue consumer).
LEASE_FRACTION = 0.4

_ACK, _NACK, _REQUEUE = 1, 2, 3


class _Lease:
    __slots__ = ("proxy", "queue", "renew_at", "busy", "final")

    def __init__(self, proxy: RabbitmqMessage) -> None:
        self.proxy = proxy
        self.queue: str | None = None
        self.renew_at = 0.0
        self.busy = True
        # how the worker settled the message while the lease was being taken or renewed
        self.final: tuple[int, str | None, str | None] | None = None


class _Held:
    """Delayed messages a delay-queue consumer keeps (unacknowledged) until they are near due.

    Indexed twice, by due time and by delivery time, so finding the next message to hand over
    and the next one to re-publish costs a heap peek, not a scan.
    """

    def __init__(self) -> None:
        self.live: dict[int, RabbitmqMessage] = {}
        self.by_eta: list[tuple[float, int]] = []
        self.by_age: list[tuple[float, int]] = []
        self.seq = itertools.count()

    def __bool__(self) -> bool:
        return bool(self.live)

    def add(self, eta_ms: float, delivered: float, proxy: RabbitmqMessage) -> None:
        seq = next(self.seq)
        self.live[seq] = proxy
        heapq.heappush(self.by_eta, (eta_ms, seq))
        heapq.heappush(self.by_age, (delivered, seq))

    def _pop(self, heap: list[tuple[float, int]], limit: float) -> RabbitmqMessage | None:
        while heap:
            key, seq = heap[0]
            if seq not in self.live:
                heapq.heappop(heap)
                continue
            if key > limit:
                return None
            heapq.heappop(heap)
            return self.live.pop(seq)
        return None

    def pop_due(self, until_ms: float) -> RabbitmqMessage | None:
        """Remove and return a message due by ``until_ms`` (epoch milliseconds)."""
        return self._pop(self.by_eta, until_ms)

    def pop_old(self, delivered_before: float) -> RabbitmqMessage | None:
        """Remove and return a message delivered before ``delivered_before`` (monotonic)."""
        return self._pop(self.by_age, delivered_before)

    def next_change(self, window_ms: float) -> float:
        """Seconds until a message becomes due for hand-over or re-publication."""
        waits = [60.0]
        while self.by_eta and self.by_eta[0][1] not in self.live:
            heapq.heappop(self.by_eta)
        while self.by_age and self.by_age[0][1] not in self.live:
            heapq.heappop(self.by_age)
        if self.by_eta:
            waits.append((self.by_eta[0][0] - window_ms - current_millis()) / 1000)
        if self.by_age:
            waits.append(self.by_age[0][0] + window_ms / 1000 - time.monotonic())
        return max(0.001, min(waits))

    def drain(self) -> list[RabbitmqMessage]:
        proxies = list(self.live.values())
        self.live.clear()
        self.by_eta.clear()
        self.by_age.clear()
        return proxies


class RabbitmqMessage(MessageProxy):
    """A message delivered by RabbitMQ, with its delivery tag (valid on its consumer only)."""

    def __init__(
        self,
        message: Message[Any],
        consumer: RabbitmqConsumer,
        tag: int,
        redelivered: bool,
        properties: Any,
        body: bytes,
    ) -> None:
        super().__init__(message)
        self.redelivered = redelivered
        self._consumer = consumer
        self._tag = tag
        self._properties = properties
        self._body = body


class _ConsumerLink(Link):
    def __init__(self, consumer: RabbitmqConsumer, broker: RabbitmqBroker) -> None:
        super().__init__(
            broker._params,
            f"nbqueue-rabbitmq-io-{consumer.queue_name}",
            broker._where,
            broker._secrets,
        )
        self.consumer = consumer
        self.channel: Any = None

    def on_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: Any) -> None:
        consumer = self.consumer
        self.channel = channel
        channel.add_on_close_callback(self._on_channel_closed)

        def start(_frame: Any) -> None:
            channel.basic_consume(
                consumer.queue_name, consumer._on_delivery, callback=consumer._on_consuming
            )

        channel.basic_qos(prefetch_count=consumer.prefetch, callback=start)

    def _on_channel_closed(self, channel: Any, reason: Any) -> None:
        if channel is not self.channel:
            return
        self.channel = None
        code = getattr(reason, "reply_code", None)
        if code == 404:
            self.consumer.broker._forget_queue(self.consumer.queue_name)
        text = describe_error(reason, self.secrets)
        self.consumer._on_ready(
            ConnectionClosed(
                f"RabbitMQ closed the channel consuming {self.consumer.queue_name!r}: {text}."
            )
        )
        connection = self.connection
        if connection is not None and connection.is_open:
            connection.close()

    def on_connect_failed(self, error: BrokerConnectionError) -> None:
        self.consumer._on_ready(error)

    def on_lost(self, error: BrokerConnectionError) -> None:
        self.channel = None
        self.consumer._on_ready(error)


class RabbitmqConsumer(Consumer):
    """Consumes one queue on a connection of its own. Use ``broker.consume()`` to make one.

    Raises:
      ConnectionFailed: could not connect (within the broker's ``confirm_timeout``).
      ConnectionClosed: RabbitMQ refused to consume the queue.
    """

    def __init__(
        self, broker: RabbitmqBroker, queue_name: str, prefetch: int, timeout: int
    ) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(1, min(prefetch, 65535))
        self.timeout = timeout
        self.is_delay_queue = queue_name.endswith(".DQ")
        self._inbox: collections.deque[tuple[int, bool, Any, bytes]] = collections.deque()
        self._cond = threading.Condition()
        self._waiting = False
        self._error: BrokerError | None = None
        self._ready = threading.Event()
        self._closed = False
        self._interrupted = False
        self._lock = threading.Lock()
        # delivery tag -> when it was delivered (monotonic seconds), until settled
        self._unsettled: dict[int, float] = {}
        self._proxies: dict[int, RabbitmqMessage] = {}
        self._leases: dict[int, _Lease] = {}
        # delayed messages held here until they are near due: (eta, seq, proxy)
        self._held = _Held()
        # loop-thread state for coalescing acknowledgements
        self._settles: collections.deque[tuple[int, int]] = collections.deque()
        self._flush_pending = False
        self._open: set[int] = set()  # delivered and not yet settled on the channel
        self._link = _ConsumerLink(self, broker)
        # Known to the broker before consuming starts: join() waits for the deliveries of its
        # consumers to arrive (barrier), and RabbitMQ counts delivered messages as not waiting.
        broker._consumers.add(self)
        try:
            self._link.io.call(self._link.connect)
        except BrokerError:
            broker._consumers.discard(self)
            raise
        if not self._ready.wait(broker.confirm_timeout / 1000):
            self._error = self._error or BrokerConnectionError(
                f"Could not start consuming {queue_name!r} on RabbitMQ at {broker._where} within "
                f"{broker.confirm_timeout} ms; check that the server runs."
            )
        if self._error is not None:
            error = self._error
            broker._consumers.discard(self)
            self._shutdown()
            raise error

    # -- loop thread ------------------------------------------------------------------------

    def _on_ready(self, error: BrokerError | None) -> None:
        if error is not None and self._error is None:
            self._error = error
        self._ready.set()
        if error is not None:
            dropped = len(self._inbox)
            self._inbox.clear()
            with self._lock:
                lost = len(self._unsettled)
                self._unsettled.clear()
                self._proxies.clear()
            self.broker._local_delta(self.queue_name, -(dropped + lost))
            with self._cond:
                self._cond.notify_all()

    def _on_consuming(self, _frame: Any) -> None:
        self._on_ready(None)
        self._tick()

    def _on_delivery(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        tag = method.delivery_tag
        self._open.add(tag)
        self.broker._local_delta(self.queue_name, 1)
        self._inbox.append((tag, method.redelivered, properties, body))
        if self._waiting:
            with self._cond:
                self._cond.notify()

    def _flush(self) -> None:
        self._flush_pending = False
        channel = self._link.channel
        settles = self._settles
        if channel is None or not channel.is_open:
            settles.clear()
            return
        open_tags = self._open
        acks = []
        while settles:
            kind, tag = settles.popleft()
            open_tags.discard(tag)
            if kind == _ACK:
                acks.append(tag)
            else:
                channel.basic_nack(tag, multiple=False, requeue=kind == _REQUEUE)
        if not acks:
            return
        # Every ack below the oldest delivery still open goes out as one multiple ack: nothing
        # else below it is outstanding (earlier settles, and the nacks above, went out first).
        acks.sort()
        below = bisect.bisect_left(acks, min(open_tags)) if open_tags else len(acks)
        if below:
            channel.basic_ack(acks[below - 1], multiple=True)
        for tag in acks[below:]:
            channel.basic_ack(tag)

    def _barrier(self, event: threading.Event) -> None:
        channel = self._link.channel
        if channel is None or not channel.is_open:
            event.set()
            return
        # Frames arrive in order: once Qos-Ok is in, every delivery sent before it is counted.
        channel.basic_qos(prefetch_count=self.prefetch, callback=lambda _f: event.set())

    # -- consumer thread ----------------------------------------------------------------------

    def __next__(self) -> MessageProxy | None:
        deadline = time.monotonic() + self.timeout / 1000
        while True:
            if self._held:
                proxy = self._tend_held()
                if proxy is not None:
                    return proxy
            if self._inbox:
                try:
                    tag, redelivered, properties, body = self._inbox.popleft()
                except IndexError:
                    continue
                with self._lock:
                    self._unsettled[tag] = time.monotonic()
                proxy = self._decode(tag, redelivered, properties, body)
                if proxy is None:
                    continue
                if self.is_delay_queue and self._hold(proxy):
                    continue
                return proxy
            if self._error is not None:
                raise self._error
            if self._interrupted:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._held:
                remaining = min(remaining, self._held.next_change(self._hold_window() or 0))
            with self._cond:
                self._waiting = True
                if not self._inbox and self._error is None and not self._interrupted:
                    self._cond.wait(remaining)
                self._waiting = False

    def _decode(
        self, tag: int, redelivered: bool, properties: Any, body: bytes
    ) -> RabbitmqMessage | None:
        limit = self.broker.max_message_size
        if limit is not None and len(body) > limit:
            # checked before decoding: a huge body is never parsed
            error = too_large_text(self.queue_name, len(body), limit)
            logger.error("Dead-lettered a message on %r: %s", self.queue_name, error)
            self._finish(tag, _NACK, body, properties, "too_large", error)
            return None
        try:
            message = Message.decode(body)
        except DecodeError as e:
            logger.error(
                "Dead-lettered a %d-byte message on %r that could not be decoded (%s): %s",
                len(body),
                self.queue_name,
                e.reason,
                str(e)[:300],
            )
            self._finish(tag, _NACK, body, properties, e.reason, str(e))
            return None
        proxy = RabbitmqMessage(message, self, tag, redelivered, properties, body)
        if not self.is_delay_queue:
            with self._lock:
                self._proxies[tag] = proxy
        return proxy

    def _hold_window(self) -> int | None:
        timeout = self.broker.consumer_timeout
        return None if not timeout else int(timeout * LEASE_FRACTION)

    def _hold(self, proxy: RabbitmqMessage) -> bool:
        # A delayed message due later than the hold window stays here, unacknowledged, and is
        # re-published to the delay queue before RabbitMQ's consumer_timeout could fire.
        window = self._hold_window()
        eta = proxy.options.get("eta")
        if window is None or not isinstance(eta, (int, float)) or isinstance(eta, bool):
            return False
        if eta - current_millis() <= window:
            return False
        with self._lock:
            delivered = self._unsettled.get(proxy._tag, time.monotonic())
        self._held.add(eta, delivered, proxy)
        return True

    def _tend_held(self) -> RabbitmqMessage | None:
        window = self._hold_window() or 0
        due = self._held.pop_due(current_millis() + window)
        if due is not None:
            return due
        limit = time.monotonic() - window / 1000
        while True:
            proxy = self._held.pop_old(limit)
            if proxy is None:
                return None
            try:
                self.broker._republish(proxy._body, proxy._properties, dq_name(self.queue_name))
            except BrokerError:
                logger.warning(
                    "Could not re-publish delayed message %s; retrying in a second (RabbitMQ may "
                    "redeliver it).",
                    proxy.message_id,
                    exc_info=True,
                )
                self._held.add(proxy.options["eta"], limit + 1.0, proxy)
                return None
            self._finish(proxy._tag, _ACK, proxy._body, proxy._properties)

    # -- any thread ---------------------------------------------------------------------------

    def _send(self, kind: int, tag: int) -> None:
        self._settles.append((kind, tag))
        if not self._flush_pending:
            self._flush_pending = True
            try:
                self._link.io.call(self._flush)
            except BrokerError:
                pass  # closed: RabbitMQ returns the message to the queue

    def _own(self, message: MessageProxy) -> int | None:
        if getattr(message, "_consumer", None) is not self:
            return None  # delivered on another (older) channel: RabbitMQ already requeued it
        tag: int = message._tag
        return tag

    def ack(self, message: MessageProxy) -> None:
        tag = self._own(message)
        if tag is not None:
            self._finish(tag, _ACK, message._body, message._properties)

    def nack(self, message: MessageProxy) -> None:
        """Dead-letter the message to ``<queue>.XQ`` with its reason in a header."""
        tag = self._own(message)
        if tag is None:
            return
        exception = message.exception
        error = None if exception is None else f"{type(exception).__name__}: {exception}"
        reason = message.dead_reason or "failed"
        self.broker._record_dead(self.queue_name, exception, message, reason)
        self._finish(tag, _NACK, message._body, message._properties, reason, error)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        for message in messages:
            tag = self._own(message)
            if tag is not None:
                self._finish(tag, _REQUEUE, message._body, message._properties)
        for proxy in self._held.drain():
            self._finish(proxy._tag, _REQUEUE, proxy._body, proxy._properties)

    def _finish(
        self,
        tag: int,
        kind: int,
        body: bytes,
        properties: Any,
        reason: str | None = None,
        error: str | None = None,
    ) -> None:
        """Settle a delivery once: acknowledge, dead-letter (``_NACK``) or requeue it."""
        with self._lock:
            lease = self._leases.get(tag)
            if lease is not None:
                if lease.busy:
                    lease.final = (kind, reason, error)  # the lease thread finishes it
                    return
                del self._leases[tag]
            if self._unsettled.pop(tag, None) is None:
                return
            self._proxies.pop(tag, None)
        self.broker._local_delta(self.queue_name, -1)
        if lease is not None:
            self._end_lease(lease, kind, body, properties, reason, error)
        elif kind == _NACK:
            try:
                self.broker._publish_dead_letter(
                    self.queue_name, body, properties, reason or "failed", error
                )
            except BrokerError:
                logger.warning(
                    "Could not move a dead letter to %s with its reason; RabbitMQ dead-letters "
                    "it without one.",
                    xq_name(self.queue_name),
                    exc_info=True,
                )
                self._send(_NACK, tag)
                return
            self._send(_ACK, tag)
        else:
            self._send(kind, tag)

    # -- leases: deliveries held longer than RabbitMQ's consumer_timeout allows -----------------

    def _tick(self) -> None:
        # On the loop thread, every tenth of the timeout: find deliveries that must not stay
        # unacknowledged any longer, and (re)park them on a helper thread.
        timeout = self.broker.consumer_timeout
        if self._closed or not timeout or self.is_delay_queue:
            return
        now = time.monotonic()
        limit = now - timeout * LEASE_FRACTION / 1000
        work = []
        with self._lock:
            for tag, delivered in self._unsettled.items():
                if delivered <= limit and tag not in self._leases and tag in self._proxies:
                    lease = _Lease(self._proxies[tag])
                    self._leases[tag] = lease
                    work.append(lease)
            for lease in self._leases.values():
                if not lease.busy and lease.renew_at <= now:
                    lease.busy = True
                    work.append(lease)
        if work:
            threading.Thread(
                target=self._lease_all, args=(work,), name="nbqueue-rabbitmq-lease", daemon=True
            ).start()
        self._link.io.loop.call_later(max(0.05, timeout / 10000), self._tick)

    def _lease_all(self, leases: list[_Lease]) -> None:
        for lease in leases:
            self._lease(lease)

    def _lease(self, lease: _Lease) -> None:
        """Move a long-held delivery into a lease queue of its own, or renew that lease.

        The lease queue dead-letters its copy back to the queue after ``LEASE_FRACTION`` of the
        consumer_timeout: if this process dies, the message runs again, as an unacknowledged
        delivery would. While the actor runs, the lease is renewed (a fresh queue, then the old
        one deleted); when it ends, the lease queue is deleted (or the copy dead-lettered).
        """
        broker = self.broker
        proxy = lease.proxy
        ttl = int((broker.consumer_timeout or 0) * LEASE_FRACTION)
        old = lease.queue
        try:
            name = broker._lease_queue(self.queue_name, ttl)
            broker._republish(proxy._body, proxy._properties, name)
        except BrokerError:
            logger.warning(
                "Could not lease message %s held for a long time; RabbitMQ may redeliver it "
                "when its consumer_timeout passes.",
                proxy.message_id,
                exc_info=True,
            )
            if old is None:
                with self._lock:
                    self._leases.pop(proxy._tag, None)
                    final = lease.final
                if final is not None:
                    self._finish(proxy._tag, final[0], proxy._body, proxy._properties, *final[1:])
            else:
                with self._lock:
                    lease.busy = False
                    lease.renew_at = time.monotonic() + ttl / 2000
                    final = lease.final
                if final is not None:
                    self._finish(proxy._tag, final[0], proxy._body, proxy._properties, *final[1:])
            return
        if old is None:
            self._send(_ACK, proxy._tag)  # the lease queue holds the message now
            logger.info(
                "Message %s has been unacknowledged for a long time; it is leased in %r so "
                "RabbitMQ's consumer_timeout does not redeliver it.",
                proxy.message_id,
                name,
            )
        else:
            broker._delete_queue(old)
        with self._lock:
            lease.queue = name
            lease.renew_at = time.monotonic() + ttl / 2000
            lease.busy = False
            final = lease.final
        if final is not None:
            self._finish(proxy._tag, final[0], proxy._body, proxy._properties, *final[1:])

    def _end_lease(
        self,
        lease: _Lease,
        kind: int,
        body: bytes,
        properties: Any,
        reason: str | None,
        error: str | None,
    ) -> None:
        broker = self.broker
        name = lease.queue
        assert name is not None
        try:
            if kind == _NACK:
                broker._publish_dead_letter(
                    self.queue_name, body, properties, reason or "failed", error
                )
            elif kind == _REQUEUE:
                broker._republish(body, properties, q_name(self.queue_name))
            broker._delete_queue(name)
        except BrokerError:
            logger.warning(
                "Could not end the lease of a message in %r; it returns to %r when the lease "
                "expires.",
                name,
                q_name(self.queue_name),
                exc_info=True,
            )

    def interrupt(self) -> None:
        """Make a waiting ``next()`` return ``None`` now (the worker is stopping)."""
        self._interrupted = True
        with self._cond:
            self._cond.notify_all()

    def barrier(self, timeout: float) -> None:
        """Wait until every delivery RabbitMQ sent so far has reached this consumer."""
        event = threading.Event()
        try:
            self._link.io.call(lambda: self._barrier(event))
        except BrokerError:
            return
        event.wait(timeout)

    def close(self) -> None:
        """Flush acknowledgements, close the channel (RabbitMQ requeues what is unsettled)."""
        if self._closed:
            return
        self._closed = True
        self.broker._consumers.discard(self)
        self._shutdown()
        dropped = len(self._inbox)
        self._inbox.clear()
        with self._lock:
            lost = len(self._unsettled)
            self._unsettled.clear()
            self._proxies.clear()
        self._held.drain()
        self.broker._local_delta(self.queue_name, -(dropped + lost))

    def _shutdown(self) -> None:
        def close_channel() -> None:
            self._flush()
            channel = self._link.channel
            if channel is not None and channel.is_open:
                self._link.channel = None
                channel.close()

        try:
            self._link.io.call(close_channel)
        except BrokerError:
            pass
        self._link.start_close()

    @property
    def canonical_queue(self) -> str:
        """The queue's name without ``.DQ``."""
        return q_name(self.queue_name)
