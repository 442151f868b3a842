"""The RabbitMQ broker, wire-compatible with Dramatiq's.

Layout (identical to Dramatiq's, or RabbitMQ refuses the second declaration with 406): every
queue ``q`` is three durable queues on the default exchange, ``q`` and ``q.DQ`` with arguments
``x-dead-letter-exchange: ""`` and ``x-dead-letter-routing-key: q.XQ`` (plus ``x-max-priority``
when ``max_priority`` is set), and ``q.XQ`` with ``x-message-ttl: 604800000`` (seven days, or
``dramatiq_dead_message_ttl``). Messages are Dramatiq's JSON, published persistent
(``delivery_mode=2``) with the AMQP ``priority`` property, no headers.

How it differs from Dramatiq's broker:

* **Confirmed sends by default.** ``send()`` returns once RabbitMQ confirmed the message. One I/O
  thread owns the publishing connection; senders hand it their messages and wait, so concurrent
  senders share confirm round trips, and ``send_many``/``enqueue_many`` publish a whole batch
  before waiting. Errors: ``ConnectionFailed`` (nothing sent), ``ConnectionBlocked`` (resource
  alarm, nothing sent), ``PublishOutcomeUnknown`` (sent, connection lost before the confirm),
  ``PublishNacked`` and ``PublishUnroutable`` (refused; safe to send again). A returned message is
  re-declared and sent once more before ``PublishUnroutable`` is raised.
* **Without confirms** (``confirm_delivery=False``, Dramatiq's default) ``send()`` hands the
  message to the open connection and returns; ``close()`` and interpreter exit write what is
  still queued (bounded). As in Dramatiq, such messages are lost if the server dies.
* **Bounded waits.** Connecting uses short socket and handshake timeouts and retries
  (``connection_attempts``, half a second apart); every send, declaration and count waits at
  most ``confirm_timeout`` milliseconds (5 s) without progress, so a stopped or blocked server
  yields an error within that time instead of a hung notebook cell.
* **Priorities: larger runs first.** With ``max_priority=N`` a message's priority (its
  ``priority`` option, Dramatiq's ``broker_priority`` option, or its actor's ``priority``) is
  published as the AMQP priority, clamped to 0..N. Without ``max_priority`` RabbitMQ queues are
  FIFO; the first message sent with a priority logs a warning saying so (priority then only
  orders the messages a worker has prefetched).
* **Dead letters keep their reason.** A message that cannot be decoded, is invalid, names an
  unknown actor or failed is re-published to ``q.XQ`` with the headers ``x-nbqueue-reason`` and
  ``x-nbqueue-error``, then acknowledged; if that publish fails it is rejected instead, and
  RabbitMQ dead-letters it by the queue arguments (reason ``rejected`` from ``x-death``).
  ``get_dead_letters()`` reads ``q.XQ`` without consuming it: it fetches up to ``limit``
  messages and rejects them back with requeue, which returns them to their place.
* **Quorum queues, opt-in** (``queue_type="quorum"``, the URL's ``?queue_type=quorum`` or
  ``NBQUEUE_RABBITMQ_QUEUE_TYPE``; RabbitMQ 3.10 or later): ``q``, ``q.DQ`` and ``q.XQ`` are
  replicated quorum queues (see ``layout``). They have no priorities: ``max_priority`` is
  refused, and priorities are ignored with a one-time warning. A message handed out more than
  ``delivery_limit`` times (20 by default) is dead-lettered by RabbitMQ with the reason
  ``delivery_limit``. A Dramatiq worker, whose brokers declare classic queues, cannot use them.
* **A size limit** (``max_message_size``, 16 MiB by default; Dramatiq has none): a larger send
  raises ``MessageTooLarge`` before anything is sent or declared, and a larger delivery is
  dead-lettered ``too_large`` by its length, never decoded. The wire format is unchanged.
* **Heartbeats while actors run.** Each consumer has its own connection and I/O thread that
  keeps reading the socket whatever the worker does; worker threads only hand delivery tags to
  it. Acknowledgements in delivery order are sent as one ``multiple`` ack.
* **RabbitMQ's consumer_timeout.** RabbitMQ closes a channel that holds a delivery unacknowledged
  longer than ``consumer_timeout`` (30 minutes by default) and redelivers everything it held.
  RabbitMQ 3.10 has no per-queue or per-consumer setting for it (``x-consumer-timeout`` and the
  ``consumer-timeout`` policy arrived in 3.12, for quorum queues), and queue arguments must stay
  Dramatiq's, so nbqueue works within the server's timeout (tell the broker its value with
  ``consumer_timeout=`` if it is not the default):

  - a delay-queue consumer keeps to itself any delayed message due later than 40 % of
    ``consumer_timeout``, and once it has held one that long it re-publishes it to ``q.DQ`` and
    acknowledges it; only messages due within that window reach the worker, which moves them in
    time;
  - a delivery of ``q`` unacknowledged for 40 % of ``consumer_timeout`` (a long job, or one
    waiting behind long jobs) is *leased*: a copy goes to a queue of its own,
    ``nbqueue.lease.<q>.<id>`` (durable, ``x-message-ttl`` 40 % of the timeout, dead-lettering
    back to ``q``, ``x-expires``), and the delivery is acknowledged. The lease is renewed while
    the job runs and deleted when it ends (a failure publishes the copy to ``q.XQ`` first). If
    the process dies, the copy expires back to ``q`` and runs again, as an unacknowledged
    delivery would, only later (up to 40 % of the timeout).

* **join()** waits until ``q`` and ``q.DQ`` are empty on the server and nothing delivered to this
  process's consumers is unsettled. Workers in other processes are invisible to it.
* **queue_stats()** counts with passive declarations: ``ready`` (``q``), ``delayed`` (``q.DQ``
  plus the delayed messages held in this process), ``dead`` (``q.XQ``); RabbitMQ does not tell
  unacknowledged counts over AMQP 0-9-1, so ``in_flight`` is ``None``.
* Dramatiq's thread-local ``broker.connection`` and ``broker.channel`` are there for the
  caller (to check the server, or declare queues of one's own): a blocking pika connection and
  channel per thread, opened on first use, replaced once closed, and closed by ``close()``.
  nbqueue's own sends and consumers never use them. ``declare_queue(ensure=)`` and
  ``get_queue_message_counts()`` exist too.
* Passwords never appear in the repr, logs or errors (pika's exceptions are described, scrubbed,
  and never chained).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Any

import pika  # type: ignore[import-untyped]

from ..broker import Broker, Consumer, DeadLetter, QueueStats
from ..common import dq_name, getenv_int, q_name, xq_name
from ..errors import (
    BrokerError,
    ConnectionFailed,
    PublishNacked,
    PublishOutcomeUnknown,
    PublishRejected,
    PublishUnroutable,
    QueueJoinTimeout,
)
from ..message import FROM_ENVIRONMENT, Message, resolve_max_message_size
from ..middleware.base import Middleware
from ..services import WorkerRegistry, once
from .blocking import ThreadConnections
from .code_store import RabbitmqCodeStore
from .consumer import RabbitmqConsumer
from .layout import (
    DEFAULT_DELIVERY_LIMIT,
    dead_letter_queue_arguments,
    queue_arguments,
    refused_declaration,
    resolve_delivery_limit,
    resolve_queue_type,
)
from .publisher import Batch, Publisher
from .wire import (
    ERROR_HEADER,
    REASON_HEADER,
    connection_parameters,
    dead_letter,
    split_url_options,
)
from .workers import RabbitmqWorkerRegistry

__all__ = ["RabbitmqBroker"]

#: How long a dead letter stays in ``<queue>.XQ``, in milliseconds (Dramatiq's variable).
DEAD_MESSAGE_TTL = getenv_int("dramatiq_dead_message_ttl", 86400000 * 7)


def _flush_at_exit(ref: weakref.ref[RabbitmqBroker]) -> None:
    # Unconfirmed sends return before the I/O thread wrote them; write them before exiting.
    broker = ref()
    publisher = broker._publisher if broker is not None else None
    if publisher is not None:
        publisher.flush(2.0)


def _resolve(future: Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


@dataclasses.dataclass
class _Pending:
    """A send of a pipelined block, waiting for its confirm."""

    batch: Batch
    waits: bool
    items: list[tuple[str, bytes, Any]]
    messages: list[Message[Any]]
    delay: int | None


class RabbitmqBroker(Broker):
    """A broker backed by RabbitMQ, wire-compatible with Dramatiq's ``RabbitmqBroker``.

    Nothing connects until the first send, consume or count.

    Parameters:
      url: an ``amqp://`` or ``amqps://`` URL, or several (a list, or separated by ``;``) to fail
        over between; settings may go in the query (``?heartbeat=30``), ``queue_type`` and
        ``delivery_limit`` too (taken out before pika sees the URL).
      host: the server's host when no URL is given (default ``127.0.0.1``).
      port: the server's port when no URL is given (default 5672).
      confirm_delivery: wait for RabbitMQ's confirm in every send (default True; Dramatiq's
        default is False, which loses messages when the server dies).
      connection_attempts: attempts per connection, half a second apart (default 3).
      max_priority: declare queues with ``x-max-priority`` and publish priorities (1-255); must
        match every producer and worker on the same queues, Dramatiq ones included. Classic
        queues only.
      queue_type: ``"classic"`` (Dramatiq's queues) or ``"quorum"`` (replicated; RabbitMQ 3.10
        or later); default: the URL's ``queue_type``, else ``$NBQUEUE_RABBITMQ_QUEUE_TYPE``, else
        classic. Every producer and worker of a queue must agree.
      delivery_limit: quorum queues only: how many times a message may be handed back to the
        queue (a worker died or stopped while holding it) before RabbitMQ dead-letters it to
        ``q.XQ`` with the reason ``delivery_limit``; ``None`` or 0 for no limit (default 20).
      middleware: see ``Broker``.
      parameters: a list of dicts of pika connection parameters, one per server.
      confirm_timeout: the longest wait, in milliseconds, for a connection, a confirm or a
        queue operation to make progress before raising.
      consumer_timeout: the server's ``consumer_timeout`` in milliseconds (RabbitMQ's default 30
        minutes); delayed messages are re-published before it. ``None`` turns that off.
      max_message_size: the largest encoded message, in bytes, this broker sends or runs:
        ``enqueue`` raises ``MessageTooLarge`` above it before talking to RabbitMQ, and a
        consumer dead-letters a larger delivery (``too_large``) by its length, without decoding
        it. The default is ``$NBQUEUE_MAX_MESSAGE_SIZE``, else 16 MiB; ``None`` or 0 disables it
        (Dramatiq has no limit; RabbitMQ's own ``max_message_size``, 128 MiB by default, still
        applies).
      pika_kwargs: more ``pika.ConnectionParameters`` (``virtual_host``, ``credentials``,
        ``heartbeat``, ``ssl_options``...).

    Raises:
      ValueError: ``url`` together with other connection settings, a bad ``max_priority``,
        ``queue_type`` or ``delivery_limit``, ``max_priority`` with quorum queues, or a
        ``max_message_size`` (or ``NBQUEUE_MAX_MESSAGE_SIZE``) that is not a size.
    """

    #: ``enqueue_many`` prepares the whole batch before publishing any of it (see ``Broker``).
    validates_batches = True

    def __init__(
        self,
        url: str | list[str] | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        confirm_delivery: bool = True,
        connection_attempts: int | None = None,
        max_priority: int | None = None,
        queue_type: str | None = None,
        delivery_limit: int | None = DEFAULT_DELIVERY_LIMIT,
        middleware: list[Middleware] | None = None,
        parameters: list[dict[str, Any]] | None = None,
        confirm_timeout: int = 5000,
        consumer_timeout: int | None = 1_800_000,
        max_message_size: int | None = FROM_ENVIRONMENT,
        **pika_kwargs: Any,
    ) -> None:
        if max_priority is not None and not 0 < max_priority <= 255:
            raise ValueError(f"max_priority must be between 1 and 255, got {max_priority!r}.")
        url, url_options = split_url_options(url)
        #: ``"classic"`` or ``"quorum"``: the type of every queue this broker declares
        self.queue_type = resolve_queue_type(queue_type, url_options.get("queue_type"))
        #: quorum queues: deliveries of a message before RabbitMQ dead-letters it (None: no limit)
        self.delivery_limit = resolve_delivery_limit(
            delivery_limit, url_options.get("delivery_limit")
        )
        if self.queue_type == "quorum" and max_priority:
            raise ValueError(
                f"Quorum queues have no priorities on RabbitMQ 3.10, so max_priority="
                f"{max_priority} cannot be used with queue_type='quorum'; leave max_priority out "
                "(messages then run in FIFO order) or use classic queues."
            )
        #: the size limit in bytes (``None``: no limit); see the class docstring
        self.max_message_size = resolve_max_message_size(max_message_size)
        self._params, self._where = connection_parameters(
            url, host, port, parameters, connection_attempts, pika_kwargs
        )
        self._secrets = [
            p.credentials.password
            for p in self._params
            if getattr(p.credentials, "password", None) not in (None, "", "guest")
        ]
        self.confirm_delivery = confirm_delivery
        self.max_priority = max_priority
        self.confirm_timeout = confirm_timeout
        self.consumer_timeout = consumer_timeout
        self._lock = threading.Lock()
        self._publisher: Publisher | None = None
        self._ensured: set[str] = set()
        self._consumers: set[RabbitmqConsumer] = set()
        self._local: dict[str, list[int]] = {}  # queue -> [unsettled here, deliveries so far]
        self._local_cond = threading.Condition()
        self._dead_errors: dict[str, BaseException] = {}
        self._properties: dict[int, Any] = {}
        self._priority_warned = False
        self._pipelines = threading.local()  # .pending: this thread's pipelined sends
        self._blocking = ThreadConnections(
            self._params, self._where, self._secrets, confirm=confirm_delivery
        )
        super().__init__(middleware=middleware)

    def __repr__(self) -> str:
        if self.queue_type == "quorum":
            return f"RabbitmqBroker({self._where!r}, queue_type='quorum')"
        return f"RabbitmqBroker({self._where!r})"

    # -- connection -----------------------------------------------------------------------------

    @property
    def publisher(self) -> Publisher:
        """The I/O thread that owns the publishing connection (created on first use)."""
        publisher = self._publisher
        if publisher is None:
            with self._lock:
                if self._publisher is None:
                    self._publisher = Publisher(
                        self._params, self._where, self._secrets, confirm=self.confirm_delivery
                    )
                    if not self.confirm_delivery:
                        atexit.register(_flush_at_exit, weakref.ref(self))
                publisher = self._publisher
        return publisher

    @property
    def connection(self) -> Any:
        """The calling thread's own ``pika.BlockingConnection``, opened on first use.

        For the caller's use, as in Dramatiq: ``broker.connection`` checks that RabbitMQ is
        reachable. Each thread has its own (pika is not thread-safe); a closed one is replaced
        on the next access; ``del broker.connection`` closes this thread's, ``close()`` every
        thread's. Opening is bounded by the connection settings (``socket_timeout``,
        ``connection_attempts``...).

        Raises:
          ConnectionFailed: RabbitMQ could not be reached or refused the credentials (the text
            never holds the password).
        """
        return self._blocking.connection()

    @connection.deleter
    def connection(self) -> None:
        self._blocking.discard_connection()

    @property
    def channel(self) -> Any:
        """The calling thread's own ``pika`` channel on ``broker.connection``.

        For the caller's use, as in Dramatiq: ``broker.channel.queue_declare(...)`` declares a
        queue of one's own. It is in publisher-confirm mode when the broker confirms
        deliveries (the default). A channel the server closed, after a refused declaration
        say, is replaced on the next access; ``del broker.channel`` closes this thread's.

        Raises:
          ConnectionFailed: RabbitMQ could not be reached.
          ConnectionClosed: the connection dropped while the channel was opened.
        """
        return self._blocking.channel()

    @channel.deleter
    def channel(self) -> None:
        self._blocking.discard_channel()

    def code_store(self) -> RabbitmqCodeStore:
        """Notebook actors are kept in queues of their own (RabbitMQ has no key-value store)."""
        return once(self, "_code_store", lambda: RabbitmqCodeStore(self))

    def worker_registry(self) -> WorkerRegistry:
        """Live workers are registered in a queue of their own, ``nbqueue.workers``, through
        the notebook-actor store's connection (``nbqueue._rabbitmq.workers``)."""
        store = self.code_store()  # outside once(): its lock is not reentrant
        return once(self, "_worker_registry", lambda: RabbitmqWorkerRegistry(store))

    def close(self) -> None:
        """Close every connection this broker opened, ``broker.connection`` of every thread
        included; sends after this reconnect."""
        for consumer in list(self._consumers):
            consumer.close()
        store = self.__dict__.get("_code_store")
        if store is not None:
            store.close()  # its connection and thread; the next call reconnects
        self._blocking.close()
        with self._lock:
            publisher, self._publisher = self._publisher, None
            self._ensured.clear()
        if publisher is not None:
            publisher.flush(self.confirm_timeout / 1000)
            publisher.start_close()

    def _run(self, fn: Any) -> Any:
        return self.publisher.run(fn, self.confirm_timeout / 1000)

    # -- queues ---------------------------------------------------------------------------------

    def _queue_arguments(self, queue_name: str) -> dict[str, Any]:
        return queue_arguments(
            self.queue_type, xq_name(queue_name), self.max_priority, self.delivery_limit
        )

    def check_server(self) -> None:
        """Connect once and declare every queue declared so far, so that a wrong address,
        password or queue argument fails now rather than in a consumer thread.

        Raises:
          ConnectionFailed: RabbitMQ could not be reached or refused the credentials.
          BrokerError: a queue exists on RabbitMQ with other arguments.
        """
        for canonical in [name for name in self.queues if name == q_name(name)]:
            self._ensure(canonical)

    def declare_queue(self, queue_name: str, *, ensure: bool = False) -> None:
        """Declare a queue and its delay queue; RabbitMQ sees them on first use (as Dramatiq).

        Parameters:
          ensure: declare them on RabbitMQ now.

        Raises:
          BrokerError: with ``ensure``, the queues exist with other arguments.
          ConnectionFailed: with ``ensure``, RabbitMQ could not be reached.
        """
        canonical = q_name(queue_name)
        if canonical in self.queues:
            if ensure:
                self._ensure(canonical)
            return
        self.emit_before("declare_queue", canonical)
        self.queues[canonical] = None
        self.emit_after("declare_queue", canonical)
        delay_name = dq_name(canonical)
        self.delay_queues.add(delay_name)
        self.emit_after("declare_delay_queue", delay_name)
        if ensure:
            self._ensure(canonical)

    def _ensure(self, canonical: str) -> None:
        if canonical in self._ensured:
            return
        for name, arguments in (
            (canonical, self._queue_arguments(canonical)),
            (dq_name(canonical), self._queue_arguments(canonical)),
            (xq_name(canonical), dead_letter_queue_arguments(self.queue_type, DEAD_MESSAGE_TTL)),
        ):
            try:
                self._declare(name, arguments)
            except BrokerError as e:
                if getattr(e, "reply_code", None) == 406:
                    raise refused_declaration(
                        name,
                        canonical,
                        e,
                        self.queue_type,
                        self.max_priority,
                        self.delivery_limit,
                    ) from None
                raise
        self._ensured.add(canonical)

    def _declare(self, name: str, arguments: dict[str, Any], *, passive: bool = False) -> int:
        def declare(channel: Any, future: Future[Any]) -> None:
            channel.queue_declare(
                name,
                passive=passive,
                durable=True,
                arguments=None if passive else arguments,
                callback=lambda frame: _resolve(future, frame.method.message_count),
            )

        count: int = self._run(declare)
        return count

    def _forget_queue(self, queue_name: str) -> None:
        self._ensured.discard(q_name(queue_name))

    # -- publishing -----------------------------------------------------------------------------

    def _amqp_priority(self, message: Message[Any]) -> int:
        priority = self.message_priority(message)
        if not self.max_priority:
            if priority and not self._priority_warned and self.queue_type == "quorum":
                self._priority_warned = True
                self.logger.warning(
                    "Message %s has priority %d, but quorum queues have no priorities on "
                    "RabbitMQ 3.10, so RabbitMQ delivers in FIFO order and priority only "
                    "reorders messages a worker has prefetched; use classic queues with "
                    "max_priority=N for queue priorities.",
                    message.message_id,
                    priority,
                )
            elif priority and not self._priority_warned:
                self._priority_warned = True
                self.logger.warning(
                    "Message %s has priority %d, but RabbitmqBroker was created without "
                    "max_priority, so RabbitMQ delivers in FIFO order and priority only reorders "
                    "messages a worker has prefetched; pass max_priority=N (the same everywhere) "
                    "for queue priorities.",
                    message.message_id,
                    priority,
                )
            return 0
        return max(0, min(priority, self.max_priority))

    def _props(self, priority: int) -> Any:
        props = self._properties.get(priority)
        if props is None:
            props = pika.BasicProperties(delivery_mode=2, priority=priority or None)
            self._properties[priority] = props
        return props

    def _prepare(
        self, message: Message[Any], delay: int | None
    ) -> tuple[Message[Any], tuple[str, bytes, Any]]:
        self.declare_queue(q_name(message.queue_name))  # declared on first use, before the hooks
        message, body, target = self.prepare_enqueue(message, delay)
        # A delayed message keeps its priority: it is published with it to the delay queue.
        return message, (target, body, self._props(self._amqp_priority(message)))

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Publish a message (to ``<queue>.DQ`` with an ``eta`` when ``delay``, in ms, is given).

        Blocks until RabbitMQ confirms it (with ``confirm_delivery``). An undeclared queue is
        declared, as Dramatiq does.

        Raises:
          EncodeError: the message cannot be encoded; nothing was sent.
          MessageTooLarge: the encoded message is above ``max_message_size``; nothing was sent.
          ConnectionFailed: nothing was sent (the server is down or unreachable).
          ConnectionBlocked: nothing was sent (the server raised a resource alarm).
          PublishOutcomeUnknown: the connection dropped before the confirm.
          PublishRejected: RabbitMQ refused the message (``PublishNacked``, ``PublishUnroutable``).
        """
        message, item = self._prepare(message, delay)
        self._ensure(q_name(item[0]))  # the first I/O: after the size and encoding checks
        self._send([item], [message], delay)
        return message

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[None]:
        """Within the block, this thread's sends return once handed to the I/O thread; leaving
        it waits for their confirms; see ``Broker.pipelined``.

        The ``after_enqueue`` hooks of a message (its live ``enqueued`` status) run once it is
        confirmed, when the block ends. Nested blocks end with the outermost.

        Raises:
          BrokerError: as ``enqueue_many``, for every send of the block: ``messages`` lists
            every message not confirmed (the others were enqueued). An exception raised in the
            block wins; the confirms are waited for all the same.
        """
        if getattr(self._pipelines, "pending", None) is not None:
            yield  # nested: the outer block waits
            return
        pending: list[_Pending] = []
        self._pipelines.pending = pending
        try:
            yield
        except BaseException:
            self._pipelines.pending = None
            try:
                self._settle_pending(pending)
            except BrokerError as e:
                self.logger.error("%s", e)
            raise
        self._pipelines.pending = None
        self._settle_pending(pending)

    def _settle_pending(self, pending: list[_Pending]) -> None:
        """Wait for the confirms of a pipelined block's sends; run the hooks of the confirmed
        ones; raise for the others."""
        timeout = self.confirm_timeout / 1000
        combined = Batch([])
        everyone: list[Message[Any]] = []
        for entry in pending:
            try:
                batch = self.publisher.wait(entry.batch, timeout) if entry.waits else entry.batch
                batch = self._resend_unroutable(batch, entry.items)
                failed = dict(batch.errors)
            except BrokerError as e:  # nothing more will be known of this batch
                failed = dict.fromkeys(range(len(entry.items)), e)
            for i, message in enumerate(entry.messages):
                if i in failed:
                    combined.errors.append((len(everyone), failed[i]))
                else:
                    self.emit_after("enqueue", message, entry.delay)
                everyone.append(message)
        if combined.errors:
            self._raise(combined, everyone)

    def enqueue_many(
        self, messages: Iterable[Message[Any]], *, delay: int | None = None
    ) -> list[Message[Any]]:
        """Publish several messages in one batch, then wait for all their confirms.

        Raises:
          EncodeError: a message cannot be encoded; nothing was sent.
          MessageTooLarge: a message is above ``max_message_size``; nothing was sent.
          BrokerError: as ``enqueue``; the error's ``messages`` attribute lists every message
            that was not confirmed (the others were enqueued).
        """
        sent: list[Message[Any]] = []
        items = []
        for message in messages:
            message, item = self._prepare(message, delay)
            sent.append(message)
            items.append(item)
        for canonical in dict.fromkeys(q_name(target) for target, _, _ in items):
            self._ensure(canonical)
        self._send(items, sent, delay)
        return sent

    def _send(
        self, items: list[tuple[str, bytes, Any]], messages: list[Message[Any]], delay: int | None
    ) -> None:
        """Publish and wait for the confirms, then run the ``after_enqueue`` hooks; inside a
        pipelined block, publish and leave both to the block's end."""
        pending: list[_Pending] | None = getattr(self._pipelines, "pending", None)
        if pending is not None:
            batch, waits = self.publisher.submit(items)
            pending.append(_Pending(batch, waits, items, messages, delay))
            return
        self._publish(items, messages)
        for message in messages:
            self.emit_after("enqueue", message, delay)

    def _publish(self, items: list[tuple[str, bytes, Any]], messages: list[Message[Any]]) -> None:
        batch = self.publisher.publish(items, self.confirm_timeout / 1000)
        batch = self._resend_unroutable(batch, items)
        if batch.errors:
            self._raise(batch, messages)

    def _resend_unroutable(self, batch: Batch, items: list[tuple[str, bytes, Any]]) -> Batch:
        """Return ``batch``, or after declaring again the queues of its returned messages and
        sending those once more, a batch of its errors that remain."""
        unroutable = [i for i, e in batch.errors if isinstance(e, PublishUnroutable)]
        if not unroutable:
            return batch
        # The queue was deleted under us: declare it again and send those once more.
        for i in unroutable:
            self._ensured.discard(q_name(items[i][0]))
        for i in unroutable:
            self._ensure(q_name(items[i][0]))
        retry = self.publisher.publish([items[i] for i in unroutable], self.confirm_timeout / 1000)
        others = [(i, e) for i, e in batch.errors if i not in set(unroutable)]
        remaining = Batch([])
        remaining.errors = others + [(unroutable[j], e) for j, e in retry.errors]
        return remaining

    @staticmethod
    def _raise(batch: Batch, messages: list[Message[Any]]) -> None:
        # Raise the gravest error of the batch; its ``messages`` are every message of the batch
        # that was not confirmed (the others were enqueued).
        errors = sorted(batch.errors, key=lambda pair: pair[0])
        failed = [messages[i] for i, _ in errors]
        for kind in (PublishOutcomeUnknown, ConnectionFailed, PublishNacked, PublishUnroutable):
            first = next((e for _, e in errors if isinstance(e, kind)), None)
            if first is None:
                continue
            text = str(first)
            if len(messages) > 1:
                text += f" ({len(errors)} of {len(messages)} messages were not confirmed.)"
            error: BrokerError
            if isinstance(first, (PublishOutcomeUnknown, PublishRejected)):
                error = type(first)(text, failed)
            else:
                error = type(first)(text)
                error.messages = failed  # type: ignore[attr-defined]
            raise error
        raise errors[0][1]

    def _republish(self, body: bytes, properties: Any, queue_name: str) -> None:
        batch = self.publisher.publish(
            [(queue_name, body, properties)], self.confirm_timeout / 1000
        )
        if batch.errors:
            raise batch.errors[0][1]

    def _publish_dead_letter(
        self, queue_name: str, body: bytes, properties: Any, reason: str, error: str | None
    ) -> None:
        headers = dict(getattr(properties, "headers", None) or {})
        headers[REASON_HEADER] = reason
        if error:
            headers[ERROR_HEADER] = error[:2000]
        props = pika.BasicProperties(
            delivery_mode=2,
            priority=getattr(properties, "priority", None),
            headers=headers,
        )
        self._republish(body, props, xq_name(queue_name))

    def _record_dead(
        self, queue_name: str, exception: BaseException | None, message: Any, reason: str
    ) -> None:
        canonical = q_name(queue_name)
        if canonical not in self._dead_errors:
            self._dead_errors[canonical] = exception or BrokerError(
                f"Message {message} was dead-lettered ({reason}); pass fail_fast=False to join() "
                "to wait without raising."
            )

    # -- consuming ------------------------------------------------------------------------------

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        """Return a consumer of ``queue_name`` with its own connection (declaring the queue).

        Parameters:
          prefetch: how many deliveries may be unacknowledged at once.
          timeout: how long ``next()`` waits, in milliseconds, before returning ``None``.

        Raises:
          ConnectionFailed: could not connect.
          ConnectionClosed: RabbitMQ refused to consume the queue.
        """
        canonical = q_name(queue_name)
        self.declare_queue(canonical)
        self._ensure(canonical)
        return RabbitmqConsumer(self, queue_name, prefetch, timeout)

    def _local_delta(self, queue_name: str, delta: int) -> None:
        if not delta:
            return
        with self._local_cond:
            counts = self._local.setdefault(queue_name, [0, 0])
            counts[0] = max(0, counts[0] + delta)
            if delta > 0:
                counts[1] += delta
            elif counts[0] == 0:
                self._local_cond.notify_all()

    def _local_snapshot(self, queue_name: str) -> tuple[int, int]:
        with self._local_cond:
            a = self._local.get(queue_name, [0, 0])
            b = self._local.get(dq_name(queue_name), [0, 0])
            return a[0] + b[0], a[1] + b[1]

    # -- inspection -----------------------------------------------------------------------------

    def _count(self, name: str) -> int:
        try:
            return self._declare(name, {}, passive=True)
        except BrokerError as e:
            if getattr(e, "reply_code", None) == 404:
                self._forget_queue(name)
                return 0
            raise

    def get_queue_message_counts(self, queue_name: str) -> tuple[int, int, int]:
        """Return how many messages wait in a queue, its delay queue and its dead letters."""
        canonical = q_name(queue_name)
        return (
            self._count(canonical),
            self._count(dq_name(canonical)),
            self._count(xq_name(canonical)),
        )

    def flush(self, queue_name: str) -> None:
        """Drop the messages waiting in a queue, its delay queue and its dead letters."""
        canonical = q_name(queue_name)
        for name in (canonical, dq_name(canonical), xq_name(canonical)):

            def purge(channel: Any, future: Future[Any], name: str = name) -> None:
                channel.queue_purge(name, callback=lambda _f: _resolve(future, None))

            try:
                self._run(purge)
            except BrokerError as e:
                if getattr(e, "reply_code", None) != 404:
                    raise
        self._dead_errors.pop(canonical, None)

    def flush_all(self) -> None:
        """Drop every waiting message in every declared queue."""
        for queue_name in list(self.queues):
            self.flush(queue_name)

    def delete_queue(self, queue_name: str) -> None:
        """Delete a queue, its delay queue and its dead-letter queue from RabbitMQ (tests)."""
        canonical = q_name(queue_name)
        for name in (canonical, dq_name(canonical), xq_name(canonical)):

            def delete(channel: Any, future: Future[Any], name: str = name) -> None:
                channel.queue_delete(name, callback=lambda _f: _resolve(future, None))

            self._run(delete)
        self._ensured.discard(canonical)

    def _delete_queue(self, name: str) -> None:
        def delete(channel: Any, future: Future[Any]) -> None:
            channel.queue_delete(name, callback=lambda _f: _resolve(future, None))

        self._run(delete)

    def _lease_queue(self, queue_name: str, ttl: int) -> str:
        """Declare a lease queue that returns its message to ``queue_name`` after ``ttl`` ms."""
        canonical = q_name(queue_name)
        name = f"nbqueue.lease.{canonical}.{uuid.uuid4().hex[:12]}"
        self._declare(
            name,
            {
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": canonical,
                "x-message-ttl": ttl,
                "x-expires": 2 * ttl + 60_000,
            },
        )
        return name

    def join(self, queue_name: str, *, timeout: int | None = None, fail_fast: bool = False) -> None:
        """Wait until a queue and its delay queue are empty and this process settled its work.

        Only deliveries to consumers in this process are seen; a worker in another process may
        still be running the last messages when this returns.

        Parameters:
          timeout: in milliseconds; ``None`` waits forever.
          fail_fast: re-raise the error of the first message this process dead-lettered on the
            queue (cleared by ``flush``).

        Raises:
          QueueJoinTimeout: the queue did not drain in time.
        """
        canonical = q_name(queue_name)
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while True:
            in_flight, epoch = self._local_snapshot(canonical)
            if not in_flight:
                waiting = self._count(canonical) + self._count(dq_name(canonical))
                if not waiting:
                    for consumer in list(self._consumers):
                        if q_name(consumer.queue_name) == canonical:
                            consumer.barrier(self.confirm_timeout / 1000)
                    if self._local_snapshot(canonical) == (0, epoch):
                        break
                    continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise QueueJoinTimeout(
                    f"Queue {canonical!r} still had messages after {timeout} ms; is a worker "
                    "running on it?"
                )
            with self._local_cond:
                if self._local_snapshot(canonical)[0] and in_flight:
                    self._local_cond.wait(min(0.05, remaining or 0.05))
                else:
                    self._local_cond.wait(min(0.02, remaining or 0.02))
        if fail_fast and canonical in self._dead_errors:
            raise self._dead_errors[canonical]

    def queue_stats(self) -> dict[str, QueueStats]:
        """Return ready, delayed and dead counts per declared queue (``in_flight`` is ``None``).

        ``delayed`` includes the delayed messages this process's workers hold.
        """
        stats = {}
        for name in list(self.queues):
            with self._local_cond:
                held = self._local.get(dq_name(name), [0, 0])[0]
            stats[name] = QueueStats(
                ready=self._count(name),
                delayed=self._count(dq_name(name)) + held,
                in_flight=None,
                dead=self._count(xq_name(name)),
            )
        return stats

    def get_dead_letters(self, queue_name: str, *, limit: int | None = 1000) -> list[DeadLetter]:
        """Return up to ``limit`` dead letters of a queue (``None``: all), oldest first, without
        removing them.

        The messages are fetched and rejected back with requeue, so they keep their place.
        """
        canonical = q_name(queue_name)
        name = xq_name(canonical)

        def peek(channel: Any, future: Future[Any]) -> None:
            got: list[tuple[Any, bytes]] = []

            def finish(_frame: Any = None) -> None:
                channel.callbacks.remove(channel.channel_number, pika.spec.Basic.GetEmpty, finish)
                if got:
                    channel.basic_nack(0, multiple=True, requeue=True)
                _resolve(future, got)

            def on_get(_channel: Any, method: Any, properties: Any, body: bytes) -> None:
                got.append((properties, body))
                fetch()

            def fetch() -> None:
                if limit is not None and len(got) >= limit:
                    finish()
                else:
                    channel.basic_get(name, on_get)

            channel.add_callback(finish, [pika.spec.Basic.GetEmpty], one_shot=True)
            fetch()

        try:
            raw: list[tuple[Any, bytes]] = self._run(peek)
        except BrokerError as e:
            if getattr(e, "reply_code", None) == 404:
                return []
            raise
        return [dead_letter(canonical, properties, body) for properties, body in raw]


# Dramatiq's import path is the public one (reprs, docs and pickled references name it).
RabbitmqBroker.__module__ = "nbqueue.brokers.rabbitmq"
