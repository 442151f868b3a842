"""The ``OpenTelemetry`` middleware: a trace through every message, from the code that sends it
to the worker that runs it, following OpenTelemetry's semantic conventions for messaging.

* On send, a ``PRODUCER`` span ``send <queue>`` (a child of the sender's current span), from
  ``before_enqueue`` to ``after_enqueue``; its context goes into the message's ``otel`` option.
* On a worker, a ``CONSUMER`` span ``process <queue>``, a child of that send span, from
  ``before_process_message`` until the message is acknowledged or dead-lettered, and the
  current span of the worker thread meanwhile: spans the actor makes (an async actor's too),
  and the sends of pipelines, callbacks and actors, are its children. A message without a
  context (sent by Dramatiq, or by nbqueue without this middleware) starts a new trace.
* Attributes: ``messaging.system`` (``nbqueue``), ``messaging.operation.type`` and
  ``messaging.operation.name`` (``send``, ``process``), ``messaging.destination.name`` (the
  queue, never its ``.DQ``), ``messaging.message.id``; nbqueue's own ``nbqueue.actor.name``,
  ``nbqueue.message.delay`` (ms, on a delayed send), ``nbqueue.message.retries`` (earlier
  attempts) and, when processing ends, ``nbqueue.message.outcome``: a ``MessageStatus`` value
  (``succeeded``, ``failed``, ``retrying``, ``skipped``, ``aborted`` or ``dead``, with
  ``nbqueue.message.dead_reason``). An actor that raised records its exception (an
  ``exception`` event, ``error.type``, status ``ERROR``); a retry adds an ``nbqueue.retry``
  event with its delay.

A retry, a delayed message coming due and a message sent again keep the context of their first
send, so every attempt is a child of the same send span.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..middleware.base import Middleware

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import TracerProvider

    from ..broker import Broker, MessageProxy
    from ..message import Message
    from .tracing import Tracing

__all__ = ["OpenTelemetry"]


def _tracing(
    tracer_provider: TracerProvider | None, propagator: TextMapPropagator | None
) -> Tracing:
    try:
        # the opentelemetry extra, imported once a middleware is made (nbqueue imports without it)
        from .tracing import Tracing
    except ImportError as e:
        if not (e.name or "").startswith("opentelemetry"):
            raise
        raise ImportError(
            "OpenTelemetry needs the opentelemetry-api package: pip install "
            "'nbqueue[opentelemetry]'."
        ) from e
    return Tracing(tracer_provider, propagator)


class OpenTelemetry(Middleware):
    """Traces messages with OpenTelemetry: a span per send and a child span per processing.

    Add it to the brokers of the senders and of the workers (``broker.add_middleware(
    OpenTelemetry())``), or set ``NBQUEUE_TRACING=opentelemetry`` for brokers built from a URL,
    or pass ``nbqueue worker --tracing``. Spans go to the tracer provider your application
    configures (the OpenTelemetry SDK and an exporter); with none configured they cost little
    and record nothing.

    Parameters:
      tracer_provider: where spans go; ``None`` for OpenTelemetry's global provider.
      propagator: how the trace context is written into messages; ``None`` for the global
        propagator (W3C trace context and baggage unless ``OTEL_PROPAGATORS`` says otherwise).

    Raises:
      ImportError: opentelemetry-api is not installed.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self.tracing = _tracing(tracer_provider, propagator)

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        self.tracing.start_send(message, delay)

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        self.tracing.end_send(message)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        self.tracing.start_process(message)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self.tracing.processed(message, exception)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self.tracing.skipped(message)

    def before_retry(self, broker: Broker, message: MessageProxy, delay: int) -> None:
        self.tracing.retrying(message, delay)

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        self.tracing.settled(message, dead=False)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self.tracing.settled(message, dead=True)

    def before_worker_thread_shutdown(self, broker: Broker, thread: Any) -> None:
        self.tracing.thread_stopping()
