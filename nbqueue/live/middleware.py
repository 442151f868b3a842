"""The Live middleware: writes each message's status, streams its output and carries out aborts."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..common import current_millis, q_name
from ..context import set_channel
from ..errors import Abort, LiveUnavailable
from ..history.base import origin
from ..middleware.base import Middleware, SkipMessage
from ..middleware.retries import Retries
from . import capture
from .backends import ResultsCache, resolve_transport
from .channel import CLOSE_TIMEOUT, Channel, get_publisher
from .memory import memory_transport_for
from .running import DONE, RUNNING, Running, RunningTable, summary, worker_id
from .transport import ABORTED, START_HOLD, HeldWrite, Transport, Write

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy
    from ..message import Message
    from ..results import ResultBackend
    from ..worker import Worker

__all__ = ["DEFAULT_TTL", "Live", "transport_for"]

logger = logging.getLogger("nbqueue.live")

#: How long records live when no Results middleware says otherwise, in milliseconds.
DEFAULT_TTL = 600000


class Live(Middleware):
    """Record each message's status, stream its output and progress, and carry out aborts.

    Add it last, so that it runs right around the actor (the in-memory default broker has it)::

        broker.add_middleware(Results(backend=RedisBackend(url=...)))
        broker.add_middleware(Live())

    The producer writes ``enqueued``/``delayed``; the worker writes ``running``, then
    ``succeeded``, ``retrying``, ``failed``, ``skipped``, ``aborted`` or ``dead``, and streams
    what the actor passes to ``nbqueue.stream()``, yields (async generator actors), reports with
    ``nbqueue.progress()`` and prints. Where it is kept follows the broker's result backend:
    ``StubBackend`` keeps it in this process, ``RedisBackend`` in Redis, where any process can
    watch it (with a RabbitMQ broker too). Everything expires with the result (``result_ttl``).

    An aborted message is never retried: it is dead-lettered with the reason ``"aborted"`` and
    its result is a failure of type ``Abort``.

    Parameters:
      backend: where to keep the channel; defaults to the broker's Results backend (and to the
        RedisBroker's connection, or this process's memory, without one).
      ttl: how long records and events live, in milliseconds; defaults to the result TTL.
      capture: whether actors' stdout and stderr are captured (the ``capture_output`` actor
        and message option overrides it).
      max_events: how many events each message keeps; older ones are dropped.
      max_chunk: the longest output chunk, in characters.
      progress_interval: the shortest time between two progress events of a message, in
        milliseconds.
      namespace: the Redis key namespace (default: the broker's, else the backend's).
    """

    def __init__(
        self,
        backend: ResultBackend | None = None,
        *,
        ttl: int | None = None,
        capture: bool = True,
        max_events: int = 1000,
        max_chunk: int = 4096,
        progress_interval: int = 100,
        namespace: str | None = None,
    ) -> None:
        if max_events < 1 or max_chunk < 1:
            raise ValueError(
                f"max_events and max_chunk must be at least 1, got {max_events} and {max_chunk}."
            )
        self.backend = backend
        self.ttl = ttl
        self.capture = capture
        self.max_events = max_events
        self.max_chunk = max_chunk
        self.progress_interval = progress_interval
        self.namespace = namespace
        self._transport: Transport | None = None
        self._lock = threading.Lock()
        self._table = RunningTable()
        self._results = ResultsCache()
        self._workers = 0

    def __repr__(self) -> str:
        return f"Live(transport={self._transport!r})"

    @property
    def actor_options(self) -> set[str]:
        """``capture_output``: whether the actor's stdout and stderr are captured; ``live``:
        ``False`` leaves the actor's messages out of the live channel altogether (for tiny
        high-rate tasks: on Redis the channel costs about one round trip per message)."""
        return {"capture_output", "live"}

    def _option(self, broker: Broker, message: Message[Any] | MessageProxy, name: str) -> Any:
        value = message.options.get(name)
        if value is None:
            actor = broker.actors.get(message.actor_name)
            value = actor.options.get(name) if actor is not None else None
        return value

    def transport(self, broker: Broker) -> Transport:
        """Return the transport this middleware writes to (chosen on first use)."""
        transport = self._transport
        if transport is None:
            with self._lock:
                if self._transport is None:
                    found = resolve_transport(
                        broker, self.backend, namespace=self.namespace, max_events=self.max_events
                    )
                    if found is None:
                        logger.warning(
                            "Live found no StubBackend or RedisBackend on %r; live status is kept "
                            "in this process only (add Results(backend=RedisBackend(...)) to "
                            "watch from other processes).",
                            broker,
                        )
                        found = memory_transport_for(broker, max_events=self.max_events)
                    self._transport = found
                transport = self._transport
        return transport

    def _ttl(self, broker: Broker, message: Message[Any] | MessageProxy) -> int:
        if self.ttl:
            return self.ttl
        ttl = message.options.get("result_ttl")
        if not ttl:
            actor = broker.actors.get(message.actor_name)
            ttl = actor.options.get("result_ttl") if actor is not None else None
        if not ttl:
            results = self._results.get(broker)
            ttl = results.result_ttl if results is not None else None
        return int(ttl or DEFAULT_TTL)

    def _settings(
        self, broker: Broker, message: Message[Any] | MessageProxy
    ) -> tuple[Any, Any, int]:
        """Return the message's ``live`` and ``capture_output`` options (message, then actor)
        and its TTL (as ``_ttl``), looking the actor up once."""
        options = message.options
        actor = broker.actors.get(message.actor_name)
        actor_options = actor.options if actor is not None else {}
        live = options.get("live")
        if live is None:
            live = actor_options.get("live")
        capture_output = options.get("capture_output")
        if capture_output is None:
            capture_output = actor_options.get("capture_output")
        ttl = self.ttl or options.get("result_ttl") or actor_options.get("result_ttl")
        if not ttl:
            results = self._results.get(broker)
            ttl = results.result_ttl if results is not None else None
        return live, capture_output, int(ttl or DEFAULT_TTL)

    # -- producer ----------------------------------------------------------------------------

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        running = self._table.mine(message.message_id)
        if running is not None:
            running.retry_delay = delay or 0  # Retries enqueued the next attempt
            return
        live, _, ttl = self._settings(broker, message)
        if live is False:
            return
        transport = self._transport or self.transport(broker)
        now = current_millis()
        status = "delayed" if delay else "enqueued"
        fields: dict[str, Any] = {
            "status": status,
            "actor_name": message.actor_name,
            "queue_name": q_name(message.queue_name),
        }
        event: dict[str, Any] = {"status": status}
        if delay:
            fields["eta"] = event["eta"] = message.options.get("eta") or now + delay
            ttl += delay
        if transport.buffered:
            write = Write(
                message.message_id,
                ttl,
                mode="initial",
                fields=fields,
                once={"enqueued_at": now},
                status_event=event,
                # the origin now: the publisher thread writes later, maybe after it changed
                history=(message, *origin()) if transport.keeps_history else None,
            )
            get_publisher(transport).submit(write)
            return
        try:
            # memory keeps a job's records while the handle send() returns lives
            transport.write_status(
                message.message_id,
                ttl,
                "initial",
                fields,
                event,
                once={"enqueued_at": now},
                handle=message,
                millis=now,
            )
        except Exception:
            logger.warning("The live channel could not write to %r.", transport, exc_info=True)

    # -- worker ------------------------------------------------------------------------------

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        with self._lock:
            self._workers += 1
        position = next((i for i, m in enumerate(broker.middleware) if m is self), -1)
        later = broker.middleware[position + 1 :] if position >= 0 else []
        if any(isinstance(m, Retries) for m in later):
            logger.warning(
                "Live comes before Retries on %r, so aborted messages may be retried; add Live "
                "after Retries (last is best).",
                broker,
            )
        self.transport(broker).subscribe(self)

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        transport = self.transport(broker)
        get_publisher(transport).flush()  # the last statuses go out before the process ends
        with self._lock:
            self._workers = max(0, self._workers - 1)
            if self._workers:
                return
        self._table.prune()
        transport.unsubscribe(self)

    def on_abort(self, message_id: str) -> None:
        """Interrupt ``message_id`` if it runs here (called by the transport)."""
        self._table.on_abort(message_id)

    def running_ids(self) -> list[str]:
        """Return the ids of the messages that run here."""
        return self._table.running_ids()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        live, capture_output, ttl = self._settings(broker, message)
        if live is False:
            return
        capture_output = self.capture if capture_output is None else bool(capture_output)
        if capture_output:
            capture.install()
        transport = self._transport or self.transport(broker)
        attempt = int(message.options.get("retries") or 0) + 1
        now = current_millis()
        running = self._table.start(message.message_id, attempt, now, ttl)
        wid = worker_id()
        fields = {
            "status": "running",
            "attempt": attempt,
            "worker_id": wid,
            "started_at": now,
            "actor_name": message.actor_name,
            "queue_name": q_name(message.queue_name),
        }
        if attempt > 1 or "eta" in message.options:
            # What an earlier attempt or the delay left (a first attempt has neither: leaving
            # the keys out keeps a memory record in the smaller of dict's table sizes, and a
            # Redis write shorter).
            fields["finished_at"] = fields["eta"] = fields["progress"] = ""
        event = {"status": "running", "attempt": attempt, "worker_id": wid}
        once = {"enqueued_at": message.message_timestamp}
        try:
            if transport.defers_start:
                # A take (abort check and mark) now; "running" goes with the attempt's last
                # write when the job is short, else on its own after START_HOLD.
                applied = transport.take(message.message_id, attempt, ttl)
                running.took = True
                if applied != ABORTED:
                    held = running.held_start = HeldWrite(
                        _worker_write(message.message_id, ttl, attempt, fields, once, event)
                    )
                    get_publisher(transport).defer(held, time.monotonic() + START_HOLD)
            else:
                applied = transport.write_status(
                    message.message_id,
                    ttl,
                    "start",
                    fields,
                    event,
                    attempt=attempt,
                    once=once,
                    backfill={"status": "enqueued"},
                    millis=now,
                )
        except Exception:
            logger.warning("The live channel could not write to %r.", transport, exc_info=True)
            applied = 0
        aborted = applied == ABORTED
        running.capture = capture_output
        running.opener = self._open_channel  # the channel is made on the actor's first write
        with running.lock:
            aborted = aborted or running.abort_requested
            running.state = DONE if aborted else RUNNING
        if aborted:
            running.aborted = running.skipped = True
            message.stuff_exception(Abort())
            message.fail("aborted")
            raise SkipMessage(f"Message {message.message_id} was aborted before it ran.")
        set_channel(running)

    def _open_channel(self, running: Running) -> Channel:
        """Make the channel that buffers a running message's output for the publisher, on the
        actor's first output or progress report: a deferred start goes out first."""
        transport = self._transport
        assert transport is not None  # chosen before the message started
        held = running.held_start
        if held is not None and held.claim():
            # Written now, by this thread: the output follows it through the publisher, and
            # the attempt's last write (the result store's, maybe) cannot overtake it.
            running.held_start = None
            get_publisher(transport).write_now([held.write])
            held.finish()
        # (claimed by the publisher: it is being written, before the channel's first batch;
        # the last write waits for it)
        return self._channel(running)

    def _channel(self, running: Running) -> Channel:
        transport = self._transport
        assert transport is not None
        return Channel(
            get_publisher(transport),
            running.message_id,
            ttl=running.ttl,
            max_chunk=self.max_chunk,
            max_pending=self.max_events,
            progress_interval=self.progress_interval / 1000,
            capture=running.capture,
        )

    def _done(self, message: MessageProxy) -> Running | None:
        running = self._table.mine(message.message_id)
        if running is not None:
            with running.lock:
                running.state = DONE
            set_channel(None)
        return running

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        running = self._done(message)
        if running is None:
            return
        if exception is None:
            if not message.failed and self._with_result(broker):
                # Final now, before Results stores the result (after-hooks run in reverse order):
                # the status and the output go with the result, in the same script.
                running.status_written = True
                self._finish(broker, message, running, "succeeded", "", with_result=True)
            return
        running.exception = exception
        if running.aborted or isinstance(exception, Abort):
            running.aborted = True
            message.fail("aborted")  # Retries leaves failed messages alone

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        running = self._done(message)
        if running is None:
            return
        running.skipped = True
        if not message.failed and not running.aborted and self._with_result(broker):
            running.status_written = True  # before Results stores None for it
            self._finish(broker, message, running, "skipped", "", with_result=True)

    def _with_result(self, broker: Broker) -> bool:
        """Whether the last status of an attempt goes out before Results stores the result,
        to be written with it: on a network store, whose result backend sends the two in one
        atomic script. In memory it is written after the result (at the ack), so that whoever
        sees a final status finds the result stored."""
        return (self._transport or self.transport(broker)).buffered

    def before_retry(self, broker: Broker, message: MessageProxy, delay: int) -> None:
        running = self._table.mine(message.message_id)
        if running is None or running.aborted or running.status_written:
            return
        # "retrying" goes out now, before Retries enqueues the next attempt, which may start
        # on another thread or process at once: written at the ack, after a short backoff the
        # next attempt's "running" could land first, the store would then drop "retrying" as
        # stale, and watchers would never see the transition.
        running.retry_delay = delay
        running.status_written = True
        self._finish(broker, message, running, "retrying", summary(running.exception))
        transport = self.transport(broker)
        if transport.buffered:
            get_publisher(transport).flush()

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        if message.queue_name.endswith(".DQ"):
            return  # a delayed message that came due was moved to its queue
        running = self._table.forget(message.message_id)
        if running is None:
            if self._option(broker, message, "live") is not False:
                self._finish(broker, message, None, "skipped", "")
        elif running.status_written:
            return  # with the result, or before the next attempt was enqueued
        elif running.aborted:
            self._finish(broker, message, running, "aborted", summary(running.exception))
        elif running.exception is not None:
            status = "failed" if running.retry_delay is None else "retrying"
            self._finish(broker, message, running, status, summary(running.exception))
        else:
            self._finish(
                broker, message, running, "skipped" if running.skipped else "succeeded", ""
            )

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        # On a network store here, before Results' after_nack, so that the final status goes
        # with the failure Results stores; in memory after it (after_dead_letter).
        if self._with_result(broker):
            self._dead(broker, message)

    def after_dead_letter(self, broker: Broker, message: MessageProxy, reason: str) -> None:
        if not self._with_result(broker):
            self._dead(broker, message)

    def _dead(self, broker: Broker, message: MessageProxy) -> None:
        running = self._table.forget(message.message_id)
        if running is None and self._option(broker, message, "live") is False:
            return
        reason = message.dead_reason or "failed"
        exception = running.exception if running is not None else None
        if reason == "aborted" or (running is not None and running.aborted):
            status = "aborted"
        elif exception is not None and running is not None and not running.skipped:
            status = "failed"
        else:
            status = "dead"
        exception = exception or message.exception
        if isinstance(exception, SkipMessage):
            exception = None  # the skip (AgeLimit's) is the reason already given
        error = summary(exception)
        if status == "dead":
            error = f"dead-lettered ({reason})" + (f": {error}" if error else "")
        self._finish(broker, message, running, status, error, with_result=self._with_result(broker))

    def _finish(
        self,
        broker: Broker,
        message: MessageProxy,
        running: Running | None,
        status: str,
        error: str,
        *,
        with_result: bool = False,
    ) -> None:
        now = current_millis()
        attempt = running.attempt if running else int(message.options.get("retries") or 0) + 1
        ttl = running.ttl if running else self._ttl(broker, message)
        fields: dict[str, Any] = {"status": status, "finished_at": now, "error": error}
        event: dict[str, Any] = {"status": status, "attempt": attempt}
        if running is not None:
            event["duration"] = max(0, now - running.started_at)
        if error:
            event["error"] = error
        if status == "retrying" and running is not None:
            delay = running.retry_delay or 0
            fields["eta"] = event["eta"] = now + delay
            ttl += delay
        transport = self._transport or self.transport(broker)
        channel = None
        once: dict[str, Any] = {}
        lead = None
        if running is not None:
            channel = running.seal()
            if running.took:
                fields["taken"] = ""  # abort() no longer asks this attempt's worker
                held, running.held_start = running.held_start, None
                if held is not None:
                    if held.claim():  # nobody wrote "running": it goes with this write
                        start = held.write
                        fields = {**start.fields, **fields}
                        once, lead = start.once, start.status_event
                        held.finish()
                    elif not held.wait(CLOSE_TIMEOUT):  # written now: this write follows
                        logger.warning(
                            "The running status of message %s was not written within %.0f s; "
                            "its end may be written first.",
                            message.message_id,
                            CLOSE_TIMEOUT,
                        )
            if channel is None and transport.buffered:
                # held for the result store, to become visible with the result
                channel = self._channel(running)
        if lead is None and (channel is None or (not transport.buffered and channel.close_empty())):
            # nothing buffered (most actors print nothing): the status alone, inline
            try:
                transport.write_status(
                    message.message_id,
                    ttl,
                    "worker",
                    fields,
                    event,
                    attempt=attempt,
                    backfill={"status": "enqueued"},
                    millis=now,
                )
            except Exception:
                logger.warning("The live channel could not write to %r.", transport, exc_info=True)
            return
        write = _worker_write(message.message_id, ttl, attempt, fields, once, event, lead)
        assert channel is not None  # a deferred start is only on a buffered store's message
        channel.close(write, with_result=with_result)


def _worker_write(
    message_id: str,
    ttl: int,
    attempt: int,
    fields: dict[str, Any],
    once: dict[str, Any],
    event: dict[str, Any],
    lead: dict[str, Any] | None = None,
) -> Write:
    """A worker's status change of ``attempt``, with ``enqueued`` backfilled when the record
    has no status yet (the producer's write has not landed)."""
    return Write(
        message_id,
        ttl,
        mode="worker",
        attempt=attempt,
        fields=fields,
        once=once,
        status_event=event,
        backfill={"status": "enqueued"},
        lead=lead,
    )


def transport_for(broker: Broker) -> Transport:
    """Return the transport that holds the live channel of ``broker``'s messages.

    Raises:
      LiveUnavailable: the broker has no ``Live`` middleware and no ``RedisBackend``.
    """
    for middleware in broker.middleware:
        if isinstance(middleware, Live):
            return middleware.transport(broker)
    transport = resolve_transport(broker)
    if transport is None or not transport.buffered:
        raise LiveUnavailable(
            f"{broker!r} has no live channel; add one with "
            f"broker.add_middleware(nbqueue.live.Live()), after a Results middleware with a "
            f"StubBackend or RedisBackend."
        )
    return transport
