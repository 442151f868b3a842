"""The spans of the ``OpenTelemetry`` middleware: a producer span per send, a consumer span per
processing, and the trace context a message carries between them.

This module imports ``opentelemetry`` at its top: ``OpenTelemetry()`` imports it only once it
has checked that the API is installed, so the rest of nbqueue imports without it.

The trace context travels in one message option, ``otel``: the carrier the propagator writes
(W3C ``traceparent`` and ``tracestate``, and ``baggage`` with OpenTelemetry's default
propagators), as a dict of strings. Dramatiq workers ignore options they do not know, so the
message stays Dramatiq's.
"""

from __future__ import annotations

import dataclasses
import threading
from contextvars import Token
from typing import TYPE_CHECKING, Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ..common import q_name
from ..errors import Abort
from ..live.status import MessageStatus

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator

    from ..broker import MessageProxy
    from ..message import Message

__all__ = ["OPTION", "SYSTEM", "Tracing"]

#: The message option that carries the trace context.
OPTION = "otel"

#: The value of ``messaging.system``: the queue library, as job queues report themselves.
SYSTEM = "nbqueue"

#: The semantic conventions the attributes follow.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"

#: How many sends may wait for their ``after_enqueue`` before the oldest span is ended anyway
#: (a send that raised never gets that hook; this bounds what such sends leave behind).
MAX_PENDING_SENDS = 10_000


@dataclasses.dataclass
class _Processing:
    """The consumer span of the message a worker thread is processing."""

    message_id: str
    span: Span
    token: Token[context.Context]
    exception: BaseException | None = None
    retrying: bool = False
    skipped: bool = False


def _retries(message: MessageProxy) -> int:
    """The ``retries`` option: how many attempts came before (0 when missing or not a number)."""
    retries = message.options.get("retries", 0)
    return retries if isinstance(retries, int) and not isinstance(retries, bool) else 0


def _qualified_name(kind: type[BaseException]) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


class Tracing:
    """Starts and ends the spans; the middleware calls it from its hooks.

    Parameters:
      tracer_provider: where spans go; ``None`` for the global one (``trace.set_tracer_provider``),
        looked up when a span starts, so it may be set after the middleware was made.
      propagator: how the context is written into and read from messages; ``None`` for the
        global one (``OTEL_PROPAGATORS``, W3C trace context and baggage by default).
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self.tracer = trace.get_tracer(
            "nbqueue", tracer_provider=tracer_provider, schema_url=SCHEMA_URL
        )
        self.propagator = propagator
        self._lock = threading.Lock()
        #: id() of each message being sent -> its producer span, until after_enqueue
        self._sending: dict[int, Span] = {}
        self._local = threading.local()

    # -- sending ------------------------------------------------------------------------------

    def start_send(self, message: Message[Any], delay: int | None) -> None:
        """Start the producer span of a message and write its context into the message.

        A message that carries a context already (a retry, a delayed message coming due, the
        same message sent again) keeps it: its attempts are all children of its first send.
        """
        options = message.options
        if OPTION in options:
            return
        queue_name = q_name(message.queue_name)
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": queue_name,
            "messaging.message.id": message.message_id,
            "nbqueue.actor.name": message.actor_name,
        }
        if delay is not None:
            attributes["nbqueue.message.delay"] = int(delay)
        span = self.tracer.start_span(
            f"send {queue_name}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        carrier: dict[str, str] = {}
        self._inject(carrier, trace.set_span_in_context(span))
        if carrier:
            options[OPTION] = carrier
        if not span.is_recording():
            return
        evicted: Span | None = None
        with self._lock:
            self._sending[id(message)] = span
            if len(self._sending) > MAX_PENDING_SENDS:
                evicted = self._sending.pop(next(iter(self._sending)))
        if evicted is not None:
            evicted.end()

    def end_send(self, message: Message[Any]) -> None:
        """End the producer span of a message the broker has enqueued."""
        with self._lock:
            span = self._sending.pop(id(message), None)
        if span is not None:
            span.end()

    def _inject(self, carrier: dict[str, str], ctx: context.Context) -> None:
        if self.propagator is None:
            propagate.inject(carrier, context=ctx)
        else:
            self.propagator.inject(carrier, context=ctx)

    def _extract(self, message: MessageProxy) -> context.Context:
        carrier = message.options.get(OPTION)
        if not isinstance(carrier, dict):
            # Sent without a context (by Dramatiq, or before tracing was on): a new trace.
            return context.Context()
        if self.propagator is None:
            return propagate.extract(carrier, context=context.Context())
        return self.propagator.extract(carrier, context=context.Context())

    # -- processing ---------------------------------------------------------------------------

    def start_process(self, message: MessageProxy) -> None:
        """Start the consumer span of a message, as a child of its sender's span, and make it
        the current span of this thread until the message is settled."""
        self._abandon()
        parent = self._extract(message)
        queue_name = q_name(message.queue_name)
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue_name,
            "messaging.message.id": message.message_id,
            "nbqueue.actor.name": message.actor_name,
            "nbqueue.message.retries": _retries(message),
        }
        span = self.tracer.start_span(
            f"process {queue_name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        # The sender's baggage comes along with the span.
        token = context.attach(trace.set_span_in_context(span, parent))
        self._local.processing = _Processing(message.message_id, span, token)

    def _current(self, message: MessageProxy) -> _Processing | None:
        processing: _Processing | None = getattr(self._local, "processing", None)
        if processing is None or processing.message_id != message.message_id:
            return None
        return processing

    def processed(self, message: MessageProxy, exception: BaseException | None) -> None:
        """Record how the actor ended (the span ends when the message is settled)."""
        processing = self._current(message)
        if processing is None or exception is None:
            return
        processing.exception = exception
        span = processing.span
        span.record_exception(exception)
        span.set_attribute("error.type", _qualified_name(type(exception)))
        span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))

    def skipped(self, message: MessageProxy) -> None:
        """Record that a middleware skipped the message, starting its span if the skip came
        before this middleware's turn."""
        if self._current(message) is None:
            self.start_process(message)
        processing = self._current(message)
        assert processing is not None
        processing.skipped = True

    def retrying(self, message: MessageProxy, delay: int) -> None:
        """Record that ``Retries`` enqueues another attempt ``delay`` milliseconds from now."""
        processing = self._current(message)
        if processing is None:
            return
        processing.retrying = True
        processing.span.add_event(
            "nbqueue.retry",
            {
                "nbqueue.retry.delay": int(delay),
                "nbqueue.message.retries": _retries(message),
            },
        )

    def settled(self, message: MessageProxy, *, dead: bool) -> None:
        """End the consumer span of a message that was acknowledged or dead-lettered."""
        processing = self._current(message)
        if processing is None:
            return
        span = processing.span
        exception = processing.exception
        reason = message.dead_reason if dead else None
        if processing.retrying:
            outcome = MessageStatus.retrying
        elif isinstance(exception, Abort) or reason == "aborted":
            outcome = MessageStatus.aborted
        elif exception is not None:
            outcome = MessageStatus.failed
        elif dead:
            outcome = MessageStatus.dead
        elif processing.skipped:
            outcome = MessageStatus.skipped
        else:
            outcome = MessageStatus.succeeded
        span.set_attribute("nbqueue.message.outcome", outcome.value)
        if dead:
            span.set_attribute("nbqueue.message.dead_reason", reason or "failed")
            if exception is None:
                span.set_status(Status(StatusCode.ERROR, f"dead-lettered ({reason or 'failed'})"))
        self._finish(processing)

    def _finish(self, processing: _Processing) -> None:
        self._local.processing = None
        processing.span.end()
        context.detach(processing.token)

    def _abandon(self) -> None:
        """End the span this thread still holds: its message was never settled (settling
        raised), or the thread is stopping."""
        processing: _Processing | None = getattr(self._local, "processing", None)
        if processing is not None:
            self._finish(processing)

    def thread_stopping(self) -> None:
        """Called on a worker thread that exits."""
        self._abandon()
