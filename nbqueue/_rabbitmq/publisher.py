"""The broker's publishing connection: confirmed publishes and queue administration.

One I/O thread owns it: a channel in confirm mode for messages and a second channel for queue
declarations, purges, counts and peeks (a failed declaration closes its channel, and must not take
unconfirmed publishes down with it). Concurrent senders share confirm round trips: the loop
publishes whatever is waiting, and one ``Basic.Ack`` with ``multiple`` set settles many senders at
once. Bulk sends are published in slices, so confirms and heartbeats are read in between.
"""

from __future__ import annotations

import collections
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import pika  # type: ignore[import-untyped]

from ..errors import (
    BrokerConnectionError,
    BrokerError,
    ConnectionBlocked,
    ConnectionClosed,
    ConnectionFailed,
    PublishNacked,
    PublishOutcomeUnknown,
    PublishUnroutable,
)
from .io import Link, describe_error

__all__ = ["Batch", "Publisher"]

#: Largest slice of a batch published in one go, so confirms are read between slices.
PUBLISH_SLICE = 500


class Batch:
    """Messages published together, and what became of them (settled on the loop thread)."""

    __slots__ = (
        "items",
        "remaining",
        "errors",
        "event",
        "lock",
        "cancelled",
        "published",
        "progress",
    )

    def __init__(self, items: list[tuple[str, bytes, Any]]) -> None:
        self.items = items
        self.remaining = len(items)
        # (index, error) of every item that was not enqueued or whose fate is unknown
        self.errors: list[tuple[int, BrokerError]] = []
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.cancelled = False
        self.published = 0
        self.progress = 0

    def settle(self, index: int, error: BrokerError | None) -> None:
        if error is not None:
            self.errors.append((index, error))
        self.remaining -= 1
        self.progress += 1
        if self.remaining <= 0:
            self.event.set()


class _Op:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[Any, Future[Any]], None]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()


class Publisher(Link):
    """The broker's publishing connection: confirmed publishes and queue administration.

    Parameters:
      confirm: put the publishing channel in confirm mode (and publish with ``mandatory``).
    """

    def __init__(
        self,
        params: Sequence[Any],
        where: str,
        secrets: Sequence[str],
        *,
        confirm: bool,
    ) -> None:
        super().__init__(params, "nbqueue-rabbitmq-publisher", where, secrets)
        self.confirm = confirm
        self._outbox: collections.deque[tuple[Batch, int]] = collections.deque()
        self._ops: collections.deque[_Op] = collections.deque()
        self._channel: Any = None
        self._admin: Any = None
        self._current_op: _Op | None = None
        self._seq = 0
        self._unconfirmed: collections.OrderedDict[int, tuple[Batch, int]] = (
            collections.OrderedDict()
        )
        self._returned: collections.Counter[bytes] = collections.Counter()
        self._draining = False
        # (routing key, id(properties)) -> (method frame, encoded properties, properties)
        self._frame_cache: dict[Any, Any] = {}

    # -- any thread -------------------------------------------------------------------------

    def publish(self, items: list[tuple[str, bytes, Any]], timeout: float) -> Batch:
        """Publish ``(routing_key, body, properties)`` items and wait for their confirms.

        ``timeout`` (seconds) bounds the wait for progress: it restarts whenever some item of
        the batch is settled, so a large batch is not cut short while confirms keep arriving.

        Returns:
          The settled batch; ``batch.errors`` lists items not enqueued or of unknown outcome.

        Raises:
          ConnectionFailed: nothing was sent (no connection within the timeout).
          ConnectionBlocked: nothing was sent because the server blocks publishing.
        """
        batch, waits = self.submit(items)
        return self.wait(batch, timeout) if waits else batch

    def submit(self, items: list[tuple[str, bytes, Any]]) -> tuple[Batch, bool]:
        """Hand ``items`` to the I/O thread and return at once, with whether their confirms are
        to be waited for (``wait``): not without confirms, where nothing would tell."""
        batch = Batch(items)
        if not items:
            return batch, False
        fire_and_forget = not self.confirm and self._channel is not None and not self.blocked
        self.io.call(lambda: self._submit(batch))
        # Without confirms nothing tells whether RabbitMQ took a message; like Dramatiq's
        # unconfirmed mode, hand it to the open connection and return (flush() and close()
        # wait for the hand-off).
        return batch, not fire_and_forget

    def wait(self, batch: Batch, timeout: float) -> Batch:
        """Wait for the confirms of a submitted batch; see ``publish``."""
        progress = 0
        while not batch.event.wait(timeout):
            if batch.progress != progress:
                progress = batch.progress
                continue
            with batch.lock:
                batch.cancelled = True
                published = batch.published
            if batch.event.is_set():
                break
            if not published:
                if self.blocked:
                    raise ConnectionBlocked(
                        f"RabbitMQ at {self.where} blocks publishing ({self.blocked}) and did not "
                        f"lift the block within {timeout:g} s; nothing was sent. Free memory or "
                        "disk on the server, then send again."
                    )
                reason = f": {self.last_error}" if self.last_error else ""
                raise ConnectionFailed(
                    f"Could not publish to RabbitMQ at {self.where} within {timeout:g} s"
                    f"{reason}; nothing was sent. Check that the server runs, then send again."
                )
            blocked = f" (it blocks publishing: {self.blocked})" if self.blocked else ""
            raise PublishOutcomeUnknown(
                f"RabbitMQ at {self.where} did not confirm {batch.remaining} published "
                f"message(s) within {timeout:g} s{blocked}; they may or may not be enqueued. "
                "Sending them again is safe but may run them twice."
            )
        return batch

    def flush(self, timeout: float) -> None:
        """Wait (bounded) until every message handed to the I/O thread was written or failed."""
        if self.io.in_loop:
            return
        done = threading.Event()

        def check() -> None:
            if not self._outbox or self.connection is None:
                done.set()
            else:
                self.io.loop.call_later(0.01, check)

        try:
            self.io.call(check)
        except BrokerError:
            return
        done.wait(timeout)

    def run(self, fn: Callable[[Any, Future[Any]], None], timeout: float) -> Any:
        """Run ``fn(admin_channel, future)`` on the loop thread and wait for the future.

        Raises:
          ConnectionFailed: no connection within ``timeout`` seconds.
          BrokerError: whatever ``fn`` set on the future.
        """
        op = _Op(fn)
        self.io.call(lambda: self._submit_op(op))
        try:
            return op.future.result(timeout)
        except TimeoutError:
            op.future.cancel()
            reason = f": {self.last_error}" if self.last_error else ""
            raise ConnectionFailed(
                f"RabbitMQ at {self.where} did not answer within {timeout:g} s{reason}; check "
                "that the server runs."
            ) from None

    # -- loop thread --------------------------------------------------------------------------

    def _ready(self) -> bool:
        return self._channel is not None and self._admin is not None

    def _submit(self, batch: Batch) -> None:
        self._outbox.append((batch, 0))
        if self._ready():
            self._drain()
        else:
            self.connect()

    def _submit_op(self, op: _Op) -> None:
        self._ops.append(op)
        if self._ready():
            self._next_op()
        else:
            self.connect()

    def on_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel)
        connection.channel(on_open_callback=self._on_admin)

    def _on_channel(self, channel: Any) -> None:
        if channel.connection is not self.connection:
            return
        channel.add_on_close_callback(self._on_channel_closed)
        if self.confirm:
            channel.add_on_return_callback(self._on_return)
            channel.confirm_delivery(
                self._on_confirm, callback=lambda _: self._set_channel(channel)
            )
        else:
            self._set_channel(channel)

    def _set_channel(self, channel: Any) -> None:
        self._seq = 0
        self._channel = channel
        self._became_ready()

    def _on_admin(self, channel: Any) -> None:
        if channel.connection is not self.connection:
            return
        channel.add_on_close_callback(self._on_admin_closed)
        self._admin = channel
        self._became_ready()

    def _became_ready(self) -> None:
        if self._ready():
            self._drain()
            self._next_op()

    def on_unblocked(self) -> None:
        if self._ready():
            self._drain()

    def _drain(self) -> None:
        if self._draining or self.blocked or self._channel is None:
            return
        self._draining = True
        try:
            self._publish_some()
        finally:
            self._draining = False

    def _publish_some(self) -> None:
        channel = self._channel
        budget = PUBLISH_SLICE
        outbox = self._outbox
        confirm = self.confirm
        framer = self._framer()
        frames: list[bytes] = []
        while outbox and budget > 0:
            batch, start = outbox[0]
            if start == 0:
                with batch.lock:
                    if batch.cancelled:
                        outbox.popleft()
                        continue
                    batch.published = 1
            end = min(len(batch.items), start + budget)
            items = batch.items
            for index in range(start, end):
                routing_key, body, properties = items[index]
                data = framer(routing_key, body, properties) if framer is not None else None
                if data is not None:
                    frames.append(data)
                else:
                    self._emit(frames)
                    channel.basic_publish("", routing_key, body, properties, mandatory=confirm)
                if confirm:
                    self._seq += 1
                    self._unconfirmed[self._seq] = (batch, index)
                else:
                    batch.settle(index, None)
            budget -= end - start
            if end == len(items):
                outbox.popleft()
            else:
                outbox[0] = (batch, end)
        self._emit(frames)
        if outbox:
            # Let the loop read confirms (and heartbeats) before the next slice.
            self.io.loop.add_callback_threadsafe(self._drain)

    def _emit(self, frames: list[bytes]) -> None:
        if frames:
            self.connection._output_marshaled_frames([b"".join(frames)])
            frames.clear()

    def _framer(self) -> Callable[[str, bytes, Any], bytes | None] | None:
        """Return a function that frames a publish as pika would, with the constant parts cached.

        A slice of a batch then goes to the socket as one write instead of three per message.
        ``None`` (use ``basic_publish``) if this pika lacks the internals it relies on.
        """
        connection = self.connection
        channel = self._channel
        body_max = getattr(connection, "_body_max_length", None)
        if not body_max or not hasattr(connection, "_output_marshaled_frames"):
            return None
        number = channel.channel_number
        cache = self._frame_cache
        if cache.get("channel") != (id(channel), number):
            cache.clear()
            cache["channel"] = (id(channel), number)
        confirm = self.confirm
        pack = struct.pack

        def framer(routing_key: str, body: bytes, properties: Any) -> bytes | None:
            size = len(body)
            if size > body_max or not size:
                return None
            key = (routing_key, id(properties))
            parts = cache.get(key)
            if parts is None:
                if len(cache) > 256:
                    # one-off properties (dead letters, re-published deliveries) must not pile up
                    cache.clear()
                    cache["channel"] = (id(channel), number)
                method = pika.frame.Method(
                    number,
                    pika.spec.Basic.Publish(
                        exchange="", routing_key=routing_key, mandatory=confirm
                    ),
                ).marshal()
                parts = (method, b"".join(properties.encode()), properties)
                cache[key] = parts
            method, encoded, _keep = parts
            header = pack(">HxxQ", 60, size) + encoded
            return b"".join(
                (
                    method,
                    pack(">BHI", 2, number, len(header)),
                    header,
                    b"\xce",
                    pack(">BHI", 3, number, size),
                    body,
                    b"\xce",
                )
            )

        return framer

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # A returned message's Basic.Return arrives before its Basic.Ack; remember the body so
        # the ack settles it as unroutable.
        self._returned[bytes(body)] += 1

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nacked = isinstance(method, pika.spec.Basic.Nack)
        tag = method.delivery_tag
        unconfirmed = self._unconfirmed
        if method.multiple:
            while unconfirmed:
                seq = next(iter(unconfirmed))
                if seq > tag:
                    break
                self._settle(unconfirmed.popitem(last=False)[1], nacked)
        else:
            entry = unconfirmed.pop(tag, None)
            if entry is not None:
                self._settle(entry, nacked)

    def _settle(self, entry: tuple[Batch, int], nacked: bool) -> None:
        batch, index = entry
        error: BrokerError | None = None
        if self._returned:
            body = batch.items[index][1]
            if self._returned.get(body):
                self._returned[body] -= 1
                if not self._returned[body]:
                    del self._returned[body]
                error = PublishUnroutable(
                    f"RabbitMQ returned a message for queue {batch.items[index][0]!r}: no such "
                    "queue (was it deleted?); it was not enqueued."
                )
        if error is None and nacked:
            error = PublishNacked(
                f"RabbitMQ refused a message for queue {batch.items[index][0]!r} (negative "
                "confirm); it was not enqueued. Send it again."
            )
        batch.settle(index, error)

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        self._channel = None
        self._fail_unconfirmed(describe_error(reason, self.secrets))
        connection = self.connection
        if connection is not None and connection.is_open and not self.closing:
            connection.channel(on_open_callback=self._on_channel)

    def _on_admin_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self._admin:
            return
        self._admin = None
        op, self._current_op = self._current_op, None
        if op is not None and not op.future.done():
            op.future.set_exception(_channel_error(reason, self.secrets, self.where))
        connection = self.connection
        if connection is not None and connection.is_open and not self.closing:
            connection.channel(on_open_callback=self._on_admin)

    def _fail_unconfirmed(self, why: str) -> None:
        unconfirmed, self._unconfirmed = self._unconfirmed, collections.OrderedDict()
        self._returned.clear()
        for batch, index in unconfirmed.values():
            batch.settle(
                index,
                PublishOutcomeUnknown(
                    f"The connection to RabbitMQ at {self.where} dropped before it confirmed a "
                    f"message for {batch.items[index][0]!r} ({why}); it may or may not be "
                    "enqueued. Sending it again is safe but may run it twice."
                ),
            )

    def on_lost(self, error: BrokerConnectionError) -> None:
        self._channel = None
        self._admin = None
        self._fail_unconfirmed(str(error))
        op, self._current_op = self._current_op, None
        if op is not None and not op.future.done():
            op.future.set_exception(error)
        if self.closing:
            self._fail_waiting(error)
        elif self._outbox or self._ops:
            # Callers are still waiting (each within its own deadline): reconnect now.
            self.io.loop.call_later(0.2, self.connect)

    def on_connect_failed(self, error: BrokerConnectionError) -> None:
        self._fail_waiting(error)

    def _fail_waiting(self, error: BrokerConnectionError) -> None:
        outbox, self._outbox = self._outbox, collections.deque()
        for batch, start in outbox:
            with batch.lock:
                batch.cancelled = True
            for index in range(start, len(batch.items)):
                batch.settle(index, error)
        ops, self._ops = self._ops, collections.deque()
        for op in ops:
            if not op.future.done():
                op.future.set_exception(error)

    def _next_op(self) -> None:
        while self._current_op is None and self._ops and self._admin is not None:
            op = self._ops.popleft()
            if not op.future.set_running_or_notify_cancel():
                continue
            self._current_op = op
            op.future.add_done_callback(self._op_done_callback(op))
            try:
                op.fn(self._admin, op.future)
            except Exception as e:
                if not op.future.done():
                    op.future.set_exception(
                        BrokerError(
                            f"RabbitMQ operation failed: {describe_error(e, self.secrets)}."
                        )
                    )

    def _op_done_callback(self, op: _Op) -> Callable[[Future[Any]], None]:
        return lambda _future: self._op_done(op)

    def _op_done(self, op: _Op) -> None:
        # Futures run callbacks in the thread that resolves them: the loop thread, or a caller
        # that cancelled; hop back to the loop either way.
        def advance() -> None:
            if self._current_op is op:
                self._current_op = None
            self._next_op()

        if self.io.in_loop:
            advance()
        else:
            try:
                self.io.call(advance)
            except BrokerError:
                pass


def _channel_error(reason: BaseException, secrets: Sequence[str], where: str) -> BrokerError:
    code = getattr(reason, "reply_code", None)
    text = describe_error(reason, secrets)
    if code in (404, 406):
        error = BrokerError(f"RabbitMQ at {where} refused the operation: {text}.")
        error.reply_code = code  # type: ignore[attr-defined]
        return error
    return ConnectionClosed(f"The RabbitMQ channel to {where} closed: {text}.")
