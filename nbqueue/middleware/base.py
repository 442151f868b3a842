"""The middleware base class: one documented no-op per hook.

Read top to bottom, the hooks tell the life of a message. Declaration time (producers and
workers): ``before_declare_actor``, ``before_declare_queue``, ``after_declare_queue``,
``after_declare_delay_queue``, ``after_declare_actor``. Boot: ``after_process_boot`` (the CLI, right
after importing the broker), ``before_worker_boot``, ``after_worker_boot`` and, per thread,
``after_consumer_thread_boot`` / ``after_worker_thread_boot``. Sending: ``before_enqueue`` then
``after_enqueue`` (also for retries, pipeline steps, callbacks and delayed messages coming due).
A worker's consumer sees a delayed message: ``before_delay_message``. A worker thread runs it:
``before_process_message`` (which may raise ``SkipMessage``), the actor, then
``after_process_message`` or ``after_skip_message``, then ``before_ack``/``after_ack`` or
``before_nack``/``after_nack``. While a worker runs, its heartbeat thread calls
``after_worker_heartbeat`` every ``heartbeat_ttl / 3`` ms. Shutdown: ``before_worker_shutdown``, per thread
``before_worker_thread_shutdown``/``before_consumer_thread_shutdown``, ``after_worker_shutdown``.

``before_*`` hooks run in the broker's middleware order, ``after_*`` hooks in reverse order. An
exception raised by a hook is logged and swallowed, except ``MiddlewareError`` subclasses (such as
``SkipMessage``) raised by ``before_*`` hooks, which propagate. Both are defined in
``nbqueue.errors`` and re-exported here, under the name they report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import MiddlewareError, SkipMessage

if TYPE_CHECKING:
    from ..actor import Actor
    from ..broker import Broker, MessageProxy
    from ..message import Message
    from ..worker import Worker

__all__ = ["Middleware", "MiddlewareError", "SkipMessage"]


class Middleware:
    """Base class for broker middleware. Subclasses override only the hooks they need."""

    @property
    def actor_options(self) -> set[str]:
        """The option names this middleware reads from actors and messages."""
        return set()

    @property
    def forks(self) -> list[Callable[[], int]]:
        """Callables the worker CLI runs in processes of their own beside the workers."""
        return []

    def before_ack(self, broker: Broker, message: MessageProxy) -> None:
        """Called before a message is acknowledged."""

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        """Called after a message is acknowledged."""

    def before_nack(self, broker: Broker, message: MessageProxy) -> None:
        """Called before a message is rejected (dead-lettered)."""

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        """Called after a message is rejected (dead-lettered)."""

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        """Called before an actor is declared on the broker."""

    def after_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        """Called after an actor is declared (or re-declared) on the broker."""

    def before_declare_queue(self, broker: Broker, queue_name: str) -> None:
        """Called before a queue is declared."""

    def after_declare_queue(self, broker: Broker, queue_name: str) -> None:
        """Called after a queue is declared."""

    def after_declare_delay_queue(self, broker: Broker, queue_name: str) -> None:
        """Called after the delay queue (``<queue>.DQ``) of a queue is declared."""

    def before_delay_message(self, broker: Broker, message: MessageProxy) -> None:
        """Called when a worker receives a delayed message and starts holding it until its eta."""

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        """Called before a message is enqueued; ``delay`` is in milliseconds."""

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        """Called after a message is enqueued; ``delay`` is in milliseconds."""

    def before_retry(self, broker: Broker, message: MessageProxy, delay: int) -> None:
        """Called by ``Retries`` right before it enqueues the next attempt of a failed message,
        ``delay`` milliseconds from now (an nbqueue addition: Dramatiq has no such hook)."""

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Called before a worker starts its threads."""

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Called after a worker started its threads."""

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Called when a worker begins to shut down."""

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Called after a worker stopped all of its threads."""

    def after_worker_heartbeat(self, broker: Broker, worker: Worker) -> None:
        """Called on the worker's heartbeat thread after each heartbeat (every
        ``worker.heartbeat_ttl / 3`` ms while it runs, the first at start), once the worker's
        record was published to the broker's worker registry (an nbqueue addition: Dramatiq
        has no such hook)."""

    def after_consumer_thread_boot(self, broker: Broker, thread: Any) -> None:
        """Called on a consumer thread when it starts."""

    def before_consumer_thread_shutdown(self, broker: Broker, thread: Any) -> None:
        """Called on a consumer thread before it exits."""

    def after_worker_thread_boot(self, broker: Broker, thread: Any) -> None:
        """Called on a worker thread when it starts."""

    def before_worker_thread_shutdown(self, broker: Broker, thread: Any) -> None:
        """Called on a worker thread before it exits."""

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Called on a worker thread before the actor runs; may raise ``SkipMessage``."""

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Called on a worker thread after the actor returned ``result`` or raised ``exception``."""

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """Called instead of ``after_process_message`` when the message was skipped."""

    def after_process_boot(self, broker: Broker) -> None:
        """Called by the worker CLI in each worker process, after the broker module was imported."""

    def after_dead_letter(self, broker: Broker, message: MessageProxy, reason: str) -> None:
        """Called after a message was dead-lettered, with the reason (nbqueue addition).

        ``reason`` is one of ``undecodable``, ``invalid``, ``unknown_actor``, ``too_large``,
        ``bad_signature``, ``load_failed`` (a notebook actor's cell raised on the worker),
        ``crash_limit`` (``CrashLimit``), ``retries_exhausted``, ``max_age``, ``throws``,
        ``aborted`` or ``failed``. Not called for bodies that could not be decoded at all, since there is no
        message to pass.
        """
