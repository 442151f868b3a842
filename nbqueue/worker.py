"""The worker: consumer threads fetch messages, worker threads run actors.

One consumer thread per queue (and one per delay queue) fetches messages and puts them on a
shared priority queue, from which ``worker_threads`` worker threads take them: larger priority
first, then oldest first. Delayed messages are held by one scheduler thread that sleeps until the
next one is due, then moves it to its queue; nothing polls.

A heartbeat thread publishes the worker's record (``WorkerInfo``: id, host, pid, processes x
threads, queues, the messages running now) to the broker's worker registry every
``heartbeat_ttl / 3`` ms, then calls the middleware's ``after_worker_heartbeat``; a clean stop
removes the record, and the record of a killed worker expires ``heartbeat_ttl`` ms after its
last heartbeat.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .broker import get_broker
from .common import current_millis, getenv_int, q_name
from .errors import (
    Abort,
    ActorNotFound,
    BrokerConnectionError,
    BrokerError,
    QueueJoinTimeout,
    RateLimitExceeded,
    Retry,
    SchedulesUnavailable,
)
from .logging import get_logger
from .middleware.base import Middleware, SkipMessage
from .results import Results
from .scheduler import Scheduler
from .scheduler import schedules as scheduled
from .schedules import subscribe, unsubscribe
from .services import RunningMessage, ScheduleRef, WorkerInfo, WorkerRegistry

if TYPE_CHECKING:
    from .broker import Broker, Consumer, MessageProxy

__all__ = ["ConsumerThread", "Worker", "WorkerThread", "workers"]

#: How long ``stop()`` waits for each consumer thread to hand back its messages and close, at
#: least, in seconds (more than a broker call's deadline).
CONSUMER_CLOSE_TIMEOUT = 10.0


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name, "").strip():
            return getenv_int(name, default)
    return default


# These settings are read once, when this module is imported, as Dramatiq reads its own when
# ``dramatiq.worker`` is imported: a worker module that sets ``os.environ`` after importing
# nbqueue changes nothing. Tests and programs that need another value patch the constants.

#: How long a consumer thread waits before restarting after a broker connection error (ms),
#: from ``dramatiq_restart_delay`` (default 3000).
CONSUMER_RESTART_DELAY = getenv_int("dramatiq_restart_delay", 3000)

#: Messages each queue's consumer may hold; 0 means twice the worker threads. From
#: ``NBQUEUE_QUEUE_PREFETCH``, else ``dramatiq_queue_prefetch``.
QUEUE_PREFETCH = _env_int("NBQUEUE_QUEUE_PREFETCH", "dramatiq_queue_prefetch", default=0)

#: Messages each delay queue's consumer may hold; 0 means 1000 per worker thread. From
#: ``NBQUEUE_DELAY_QUEUE_PREFETCH``, else ``dramatiq_delay_queue_prefetch``.
DELAY_QUEUE_PREFETCH = _env_int(
    "NBQUEUE_DELAY_QUEUE_PREFETCH", "dramatiq_delay_queue_prefetch", default=0
)

#: How long a consumer waits for a message before checking for a stop (ms), when ``Worker``
#: gets no ``worker_timeout``. From ``NBQUEUE_WORKER_TIMEOUT``, else ``dramatiq_worker_timeout``.
WORKER_TIMEOUT = _env_int("NBQUEUE_WORKER_TIMEOUT", "dramatiq_worker_timeout", default=1000)

#: How long a worker's record lives in the worker registry after its last heartbeat (ms), when
#: ``Worker`` gets no ``heartbeat_ttl``; it beats every third of that. From
#: ``NBQUEUE_WORKER_HEARTBEAT_TTL`` (default 30000).
HEARTBEAT_TTL = _env_int("NBQUEUE_WORKER_HEARTBEAT_TTL", default=30000)

#: The smallest ``heartbeat_ttl`` a worker accepts, in milliseconds.
MIN_HEARTBEAT_TTL = 300

_STOP = object()


def workers(broker: Broker | None = None) -> list[WorkerInfo]:
    """Return the live workers of a broker's fleet, by heartbeat, sorted by host, pid and id.

    Every ``Worker`` on the broker's server (in this process or another, on any machine)
    publishes a ``WorkerInfo`` every ``heartbeat_ttl / 3`` ms; one that stopped is gone at once,
    one that died is gone ``heartbeat_ttl`` ms after its last heartbeat.

    Parameters:
      broker: the broker whose server to ask; the global broker by default.

    Raises:
      BrokerError: the broker's server keeps no worker registry.
      BrokerConnectionError: the server could not be reached or did not answer in time.
    """
    broker = broker if broker is not None else get_broker()
    registry = broker.worker_registry()
    if registry is None:
        raise BrokerError(
            f"{type(broker).__name__} keeps no worker registry; use a StubBroker, RedisBroker "
            f"or RabbitmqBroker to list live workers."
        )
    return registry.workers()


class _WorkItem:
    __slots__ = ("key", "message", "consumer")

    def __init__(self, key: tuple[int, int], message: Any, consumer: ConsumerThread | None) -> None:
        self.key = key
        self.message = message
        self.consumer = consumer

    def __lt__(self, other: _WorkItem) -> bool:
        return self.key < other.key


class _WorkQueue:
    """The worker threads' priority queue, which wakes as few threads as it can.

    ``queue.PriorityQueue`` wakes a waiting thread on every put. Each wake is a system call, a
    context switch and a fight for the GIL, and cost more than running a no-op actor. Here at
    most one waiting thread is on its way at a time: a put wakes one only if none is, and a
    thread that takes an item while more are queued wakes the next one before it runs its own
    (passing the baton). Every queued item still gets a thread within a few wake-ups, however
    long the running actors take, but a burst of short messages is run by the threads already
    awake instead of waking all of them.
    """

    def __init__(self) -> None:
        self._heap: list[_WorkItem] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0  # threads blocked in get()
        self._woken = 0  # of those, notified and not yet returned (0 or 1, but see get())

    def put(self, item: _WorkItem) -> None:
        with self._lock:
            heapq.heappush(self._heap, item)
            if self._waiting and not self._woken:
                self._woken += 1
                self._cond.notify()

    def get(self, timeout: float) -> _WorkItem:
        """Return the most urgent item, waiting up to ``timeout`` seconds; raises queue.Empty."""
        with self._lock:
            heap = self._heap
            if not heap:
                self._waiting += 1
                try:
                    self._cond.wait(timeout)
                finally:
                    # A thread that timed out just as it was notified cannot tell which it was,
                    # so every return spends the credit. Whoever returns takes an item (or finds
                    # none) and passes the baton below, so no item is left without a thread.
                    self._waiting -= 1
                    if self._woken:
                        self._woken -= 1
                if not heap:
                    raise queue.Empty
            item = heapq.heappop(heap)
            if heap and self._waiting and not self._woken:
                self._woken += 1
                self._cond.notify()
            return item

    def get_nowait(self) -> _WorkItem:
        """Return the most urgent item at once; raises queue.Empty when there is none."""
        with self._lock:
            if not self._heap:
                raise queue.Empty
            return heapq.heappop(self._heap)


class Worker:
    """Consumes messages from a broker and runs their actors on a pool of threads.

    Parameters:
      broker: the broker to consume from.
      queues: the queues to consume (their delay queues are included); ``None`` means all,
        including queues declared after ``start()``.
      worker_timeout: how long threads block waiting for work before checking for a stop or a
        pause, in milliseconds.
      worker_threads: how many actors may run at once.
      heartbeat_ttl: how long the worker's record in the broker's worker registry lives after
        its last heartbeat, in milliseconds; it beats every third of that
        (``NBQUEUE_WORKER_HEARTBEAT_TTL``, default 30000).
      processes: how many worker processes the command that made this worker runs, for the
        registry's record (an nbqueue addition, set by ``nbqueue worker --processes``).

    ``with Worker(broker):`` starts the worker and stops it gracefully at the end of the block.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        queues: Iterable[str] | None = None,
        worker_timeout: int | None = None,
        worker_threads: int = 8,
        heartbeat_ttl: int | None = None,
        processes: int = 1,
    ) -> None:
        if worker_threads < 1:
            raise ValueError(f"worker_threads must be at least 1, got {worker_threads}.")
        heartbeat_ttl = HEARTBEAT_TTL if heartbeat_ttl is None else heartbeat_ttl
        if heartbeat_ttl < MIN_HEARTBEAT_TTL:
            raise ValueError(
                f"heartbeat_ttl is in milliseconds and must be at least {MIN_HEARTBEAT_TTL}, "
                f"got {heartbeat_ttl}."
            )
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}.")
        self.logger = get_logger(__name__, type(self))
        self.broker = broker
        self.worker_id = uuid.uuid4().hex
        self.consumer_whitelist = set(queues) if queues is not None else None
        self.worker_timeout = worker_timeout if worker_timeout is not None else WORKER_TIMEOUT
        self.worker_threads = worker_threads
        self.heartbeat_ttl = heartbeat_ttl
        self.processes = processes
        #: when the worker last started, in ms since the epoch (``None`` before ``start()``)
        self.started_at: int | None = None
        self._heartbeat: _Heartbeat | None = None
        self.queue_prefetch = QUEUE_PREFETCH or min(worker_threads * 2, 65535)
        self.delay_prefetch = DELAY_QUEUE_PREFETCH or min(worker_threads * 1000, 65535)
        self.consumers: dict[str, ConsumerThread] = {}
        self.workers: list[WorkerThread] = []
        self.work_queue = _WorkQueue()
        self.delay_scheduler = _DelayScheduler(self)
        #: the thread that sends this worker's share of schedule ticks (``nbqueue.scheduler``);
        #: ``None`` while stopped or when it takes part in no schedule
        self.scheduler: Scheduler | None = None
        self._scheduler_lock = threading.Lock()
        self.running = False
        self.paused = False
        self._pause_cond = threading.Condition()
        # actors whose results were checked for a Results middleware (see _warn_if_discarded)
        self._discard_checked: set[str] = set()
        self._sequence = itertools.count()
        self._idle_lock = threading.Lock()
        self._idle = threading.Condition(self._idle_lock)
        self._pending = 0
        self._worker_middleware = _WorkerMiddleware(self)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Worker({self.broker!r}, worker_threads={self.worker_threads}, {state})"

    def start(self) -> None:
        """Start the consumer, delay-scheduler and worker threads, and the schedule thread when
        the worker takes part in schedules (``nbqueue.schedule``); returns at once.

        Raises:
          SchedulesUnavailable: the worker has schedules and its broker no store to claim
            their ticks in.
        """
        if self.running:
            return
        scheduler = Scheduler.for_worker(self)
        self.running = True
        subscribe(self.broker, self._schedules_changed)
        self.work_queue = _WorkQueue()
        self.delay_scheduler = _DelayScheduler(self)
        self.broker.emit_before("worker_boot", self)
        self.delay_scheduler.start()
        self.broker.add_middleware(self._worker_middleware)
        for _ in range(self.worker_threads):
            self._add_worker()
        if scheduler is not None:
            with self._scheduler_lock:
                self.scheduler = scheduler
                scheduler.start()
        self.started_at = current_millis()
        self._heartbeat = _Heartbeat(self, self.broker.worker_registry())
        self._heartbeat.start()
        self.broker.emit_after("worker_boot", self)

    def _schedules_changed(self) -> None:
        """A schedule of the broker was declared, replaced or removed: wake the scheduler, or
        start it if this is the first schedule the worker takes part in."""
        with self._scheduler_lock:
            if not self.running:
                return
            if self.scheduler is not None:
                self.scheduler.wake()
                return
            try:
                scheduler = Scheduler.for_worker(self)
            except SchedulesUnavailable as e:
                self.logger.error("%s", e)
                return
            if scheduler is not None:
                self.scheduler = scheduler
                scheduler.start()

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def pause(self) -> None:
        """Stop fetching and running messages; returns once every thread has paused.

        Blocks while actors run: a worker thread pauses once its current message is done.
        Messages already fetched stay in this worker, unrun and unacknowledged, until
        ``resume()`` (or ``stop()``, which hands them back to the broker). Pausing a worker that
        is not started makes it start paused.
        """
        me = threading.current_thread()
        with self._pause_cond:
            self.paused = True
            while self.running:
                # Threads started meanwhile (a queue declared while pausing) are waited for too.
                busy = [
                    thread
                    for thread in [*self.consumers.values(), *self.workers]
                    if thread is not me and thread.is_alive() and not thread.paused_event.is_set()
                ]
                if not busy:
                    break
                self._pause_cond.wait(self.worker_timeout / 1000)

    def resume(self) -> None:
        """Resume after ``pause()``: fetching and running continue; returns at once."""
        self._wake_threads()

    def stop(self, timeout: int = 600000) -> None:
        """Stop gracefully: finish running messages, hand prefetched ones back to the broker.

        Parameters:
          timeout: how long to wait for running actors, in milliseconds. An actor still running
            after that keeps its thread; its message is handed back and will run again.
        """
        if not self.running:
            return
        self.logger.info("Shutting down worker %s...", self.worker_id[:8])
        deadline = time.monotonic() + timeout / 1000
        self.broker.emit_before("worker_shutdown", self)
        unsubscribe(self.broker, self._schedules_changed)
        with self._scheduler_lock:
            scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None:
            # First: no tick is sent by a worker on its way out.
            scheduler.stop()
        consumers = list(self.consumers.values())
        # First, so that no worker thread takes another message while the consumers stop.
        self.running = False
        for consumer in consumers:
            consumer.stop_fetching()
        self._wake_threads()
        for _ in self.workers:
            self.work_queue.put(_WorkItem((-(2**62), -1), _STOP, None))
        # Prefetched messages that no worker thread started go back now, not after the
        # running actors finish (which can take as long as the timeout).
        for consumer, messages in self._unstarted().items():
            consumer.hand_back(messages)
        for thread in self.workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        leftovers: dict[ConsumerThread, list[MessageProxy]] = {c: [] for c in consumers}
        for message, consumer in self.delay_scheduler.stop():
            leftovers.setdefault(consumer, []).append(message)
        while True:
            try:
                item = self.work_queue.get_nowait()
            except queue.Empty:
                break
            if item.message is not _STOP and item.consumer is not None:
                leftovers.setdefault(item.consumer, []).append(item.message)
        for consumer, messages in leftovers.items():
            consumer.finish(messages)
        # Closing a consumer hands its messages back (those of actors still running too): a
        # broker round trip with its own deadline, given its own time even once the running
        # actors used up the timeout, so that stop() returns with every message handed back.
        for consumer in consumers:
            consumer.join(max(CONSUMER_CLOSE_TIMEOUT, deadline - time.monotonic()))
        self.broker.remove_middleware(self._worker_middleware)
        self.consumers.clear()
        self.workers.clear()
        with self._idle:
            self._pending = 0
            self._idle.notify_all()
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.stop()
        self.broker.emit_after("worker_shutdown", self)
        self.logger.info("Worker %s stopped.", self.worker_id[:8])

    def _unstarted(self) -> dict[ConsumerThread, list[MessageProxy]]:
        """Take the messages no worker thread has started off the work queue (stops stay)."""
        taken: dict[ConsumerThread, list[MessageProxy]] = {}
        stops = []
        while True:
            try:
                item = self.work_queue.get_nowait()
            except queue.Empty:
                break
            if item.message is _STOP:
                stops.append(item)
            elif item.consumer is not None:
                taken.setdefault(item.consumer, []).append(item.message)
        for item in stops:
            self.work_queue.put(item)
        return taken

    def _holds_paused(self) -> bool:
        """Whether threads should stay paused (callers hold ``_pause_cond``)."""
        return self.paused and self.running

    def _wake_threads(self) -> None:
        with self._pause_cond:
            self.paused = False
            self._pause_cond.notify_all()

    def join(self, timeout: int | None = None) -> None:
        """Wait until every message this worker fetched was processed or handed back.

        Use it after ``broker.join(queue)`` in tests and scripts.

        Parameters:
          timeout: in milliseconds; ``None`` waits forever.

        Raises:
          QueueJoinTimeout: work was still pending when the timeout passed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        with self._idle:
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise QueueJoinTimeout(
                        f"The worker still had {self._pending} messages pending after {timeout} ms."
                    )
                self._idle.wait(remaining)

    def info(self) -> WorkerInfo:
        """Return this worker's record as its next heartbeat publishes it (``last_seen`` is
        now, by this machine's clock)."""
        running = []
        for thread in self.workers:
            message = thread.current
            if message is not None:
                running.append(RunningMessage(message.message_id, message.actor_name))
        now = current_millis()
        return WorkerInfo(
            id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            processes=self.processes,
            threads=self.worker_threads,
            queues=tuple(sorted({q_name(name) for name in list(self.consumers)})),
            running=tuple(running),
            started_at=self.started_at if self.started_at is not None else now,
            last_seen=now,
            ttl=self.heartbeat_ttl,
            schedules=tuple(
                ScheduleRef(
                    name=entry.name,
                    actor_name=entry.actor_name,
                    queue_name=entry.queue_name,
                    rule=entry.rule.spec(),
                    args=entry.args,
                    kwargs=dict(entry.kwargs),
                    misfire_grace=entry.misfire_grace,
                )
                for entry in scheduled(self)
            ),
        )

    @property
    def pending(self) -> int:
        """How many fetched messages are waiting, delayed or running in this worker."""
        return self._pending

    def _add_worker(self) -> None:
        thread = WorkerThread(self, len(self.workers))
        self.workers.append(thread)
        thread.start()

    def _add_consumer(self, queue_name: str) -> None:
        if not self.running or queue_name in self.consumers:
            return
        if (
            self.consumer_whitelist is not None
            and q_name(queue_name) not in self.consumer_whitelist
        ):
            return
        delay = queue_name.endswith(".DQ")
        prefetch = self.delay_prefetch if delay else self.queue_prefetch
        thread = ConsumerThread(self, queue_name, prefetch)
        self.consumers[queue_name] = thread
        thread.start()

    def _track(self, delta: int) -> None:
        with self._idle_lock:  # the lock itself: a Condition's __enter__ is a Python call
            self._pending += delta
            if self._pending <= 0:
                self._pending = 0
                self._idle.notify_all()

    def _submit(self, message: MessageProxy, consumer: ConsumerThread) -> None:
        priority = self.broker.message_priority(message.message)
        self._track(1)
        self.work_queue.put(_WorkItem((-priority, next(self._sequence)), message, consumer))

    def post_process_message(
        self, message: MessageProxy, consumer: ConsumerThread, *, quiet: bool = False
    ) -> None:
        """Acknowledge the message, or reject it (dead-letter) when it failed.

        Broker connection errors are retried until they pass or the worker stops (the broker
        then redelivers the message). ``quiet`` acknowledges without emitting the ack hooks: the
        message was handed on (re-enqueued), not processed.
        """
        attempt = 0
        while True:
            try:
                if quiet:
                    consumer.settle(message, ack=True)
                elif message.failed:
                    self.broker.emit_before("nack", message)
                    consumer.settle(message, ack=False)
                    self.broker.emit_after("nack", message)
                    self.broker.emit_after("dead_letter", message, message.dead_reason or "failed")
                else:
                    self.broker.emit_before("ack", message)
                    consumer.settle(message, ack=True)
                    self.broker.emit_after("ack", message)
                break
            except BrokerConnectionError:
                attempt += 1
                if not self.running and attempt > 3:
                    self.logger.warning(
                        "Could not settle %s while stopping; the broker will redeliver it.",
                        message.message_id,
                    )
                    break
                self.logger.warning(
                    "Could not settle %s; retrying.", message.message_id, exc_info=True
                )
                time.sleep(min(5.0, 0.1 * 2**attempt))
            except Exception:
                self.logger.critical(
                    "Failed to settle message %s.", message.message_id, exc_info=True
                )
                break
        message.clear_exception()


class _WorkerMiddleware(Middleware):
    """Starts a consumer for every queue the broker declares while the worker runs."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def after_declare_queue(self, broker: Broker, queue_name: str) -> None:
        self.worker._add_consumer(queue_name)

    def after_declare_delay_queue(self, broker: Broker, queue_name: str) -> None:
        self.worker._add_consumer(queue_name)


class _PausableThread(threading.Thread):
    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        #: set while the thread is parked by ``Worker.pause()``
        self.paused_event = threading.Event()

    def _wait_while_paused(self, worker: Worker) -> None:
        # The flag and the event change only under the worker's condition, so pause() never
        # sees a thread as parked while it is on its way out, and a resume() followed at once
        # by a pause() leaves it parked (and seen as parked).
        cond = worker._pause_cond
        with cond:
            if not worker._holds_paused():
                return
            self.paused_event.set()
            cond.notify_all()
            while worker._holds_paused():
                cond.wait(worker.worker_timeout / 1000)
            self.paused_event.clear()


class ConsumerThread(_PausableThread):
    """Fetches messages from one queue and hands them to the worker threads."""

    def __init__(self, worker: Worker, queue_name: str, prefetch: int) -> None:
        super().__init__(name=f"nbqueue-consumer-{queue_name}")
        self.worker = worker
        self.broker = worker.broker
        self.queue_name = queue_name
        self.prefetch = prefetch
        self.logger = get_logger(__name__, f"ConsumerThread({queue_name})")
        self.consumer: Consumer | None = None
        self.fetching = True
        self._finished = threading.Event()
        self._handed_back: list[MessageProxy] = []
        self._late: list[MessageProxy] = []
        self._early: list[MessageProxy] = []
        self._early_lock = threading.Lock()
        self._stopping = threading.Event()

    def settle(self, message: MessageProxy, *, ack: bool) -> None:
        """Acknowledge or reject a message this thread's consumer fetched."""
        consumer = self.consumer
        if consumer is None:
            return  # the consumer was closed; the broker redelivers the message
        if ack:
            consumer.ack(message)
        else:
            consumer.nack(message)

    def stop_fetching(self) -> None:
        self.fetching = False
        consumer = self.consumer
        if consumer is not None:
            try:
                consumer.interrupt()
            except Exception:
                self.logger.debug(
                    "Could not interrupt the consumer of %r.", self.queue_name, exc_info=True
                )

    def hand_back(self, messages: list[MessageProxy]) -> None:
        """Have the thread requeue unprocessed messages now, while running actors finish."""
        with self._early_lock:
            self._early.extend(messages)
        self._stopping.set()

    def finish(self, messages: list[MessageProxy]) -> None:
        """Hand back unprocessed messages; the thread requeues them, closes and exits."""
        self._handed_back = messages
        self._finished.set()
        self._stopping.set()

    def run(self) -> None:
        self.broker.emit_after("consumer_thread_boot", self)
        restart_wait = threading.Event()
        while self.fetching:
            if self.worker.paused:
                # Also here, not only between messages: a consumer restarting after errors
                # (its broker down) must still pause.
                self._wait_while_paused(self.worker)
                continue
            try:
                self.consumer = self.broker.consume(
                    self.queue_name, prefetch=self.prefetch, timeout=self.worker.worker_timeout
                )
                self._consume()
            except BrokerConnectionError:
                self.logger.critical(
                    "Consumer of %r lost its broker connection; restarting in %d ms.",
                    self.queue_name,
                    CONSUMER_RESTART_DELAY,
                    exc_info=True,
                )
                self._close_consumer()
                restart_wait.wait(CONSUMER_RESTART_DELAY / 1000)
            except Exception:
                self.logger.critical(
                    "Consumer of %r failed; restarting.", self.queue_name, exc_info=True
                )
                self._close_consumer()
                restart_wait.wait(CONSUMER_RESTART_DELAY / 1000)
        while True:
            self._stopping.wait()
            self._stopping.clear()
            finished = self._finished.is_set()
            with self._early_lock:
                messages, self._early = self._early + self._late, []
            self._late = []
            if finished:
                messages += self._handed_back
            self._requeue(messages)
            if finished:
                break
        self.broker.emit_before("consumer_thread_shutdown", self)
        self._close_consumer()

    def _requeue(self, messages: list[MessageProxy]) -> None:
        if messages and self.consumer is not None:
            try:
                self.consumer.requeue(messages)
            except Exception:
                self.logger.warning(
                    "Could not requeue %d messages on %r; the broker will redeliver them.",
                    len(messages),
                    self.queue_name,
                    exc_info=True,
                )

    def _consume(self) -> None:
        worker = self.worker
        assert self.consumer is not None
        for message in self.consumer:
            if message is not None:
                if self.fetching:
                    self.handle_message(message)
                else:
                    self._late.append(message)
            if not self.fetching:
                return
            if worker.paused:
                self._wait_while_paused(worker)

    def _close_consumer(self) -> None:
        # Forgotten first: an actor that outlived a stop must not settle its message through a
        # closed consumer, since closing gave it back to the broker (settle() skips it).
        consumer, self.consumer = self.consumer, None
        if consumer is None:
            return
        try:
            consumer.close()
        except Exception:
            self.logger.debug("Error closing the consumer of %r.", self.queue_name, exc_info=True)

    def handle_message(self, message: MessageProxy) -> None:
        """Route one fetched message: hold it if delayed, queue it for a worker thread, or
        dead-letter it when no actor can run it."""
        worker = self.worker
        if "eta" in message.options:
            self.broker.emit_before("delay_message", message)
            worker.delay_scheduler.add(message, self)
            return
        try:
            self.broker.actor_for(message)
        except ActorNotFound as e:
            self._unknown_actor(message, e)
            return
        worker._submit(message, self)

    def _unknown_actor(self, message: MessageProxy, error: ActorNotFound) -> None:
        # A handler (the notebook-actor middleware, say) may hand the message on to a capable
        # worker; the original is then settled without ack hooks, since it did not run here.
        worker = self.worker
        handed_on = False
        for handler in self.broker.unknown_actor_handlers:
            try:
                handed_on = handler(message, error)
            except Exception:
                self.logger.exception("Unknown-actor handler failed for %s.", message.message_id)
                handed_on = False
            if handed_on:
                break
        if not handed_on:
            reason = getattr(error, "reason", None) or "unknown_actor"
            self.logger.error(
                "Dead-lettered message %s (%s): %s", message.message_id, reason, error
            )
            message.stuff_exception(error)
            message.fail(reason)
        worker._track(1)
        try:
            worker.post_process_message(message, self, quiet=handed_on)
        finally:
            worker._track(-1)


class WorkerThread(_PausableThread):
    """Takes messages from the worker's priority queue and runs their actors."""

    def __init__(self, worker: Worker, index: int) -> None:
        super().__init__(name=f"nbqueue-worker-{index}")
        self.worker = worker
        self.broker = worker.broker
        self.logger = get_logger(__name__, "WorkerThread")
        #: the message this thread runs now, read by the heartbeat
        self.current: MessageProxy | None = None

    def run(self) -> None:
        worker = self.worker
        timeout = worker.worker_timeout / 1000
        self.broker.emit_after("worker_thread_boot", self)
        while worker.running:
            if worker.paused:
                self._wait_while_paused(worker)
                continue
            try:
                item = worker.work_queue.get(timeout=timeout)
            except queue.Empty:
                continue
            if item.message is _STOP:
                break
            assert item.consumer is not None
            self.current = item.message
            try:
                self._guarded(self.process_message, item.message)
                self.current = None
                self._guarded(worker.post_process_message, item.message, item.consumer)
            finally:
                self.current = None
                worker._track(-1)
        self.broker.emit_before("worker_thread_shutdown", self)

    def _guarded(self, step: Any, message: MessageProxy, *args: Any) -> None:
        # The steps handle the actor's errors themselves; what escapes is an interrupt (a time
        # limit or a shutdown) that landed after the actor returned. It must not kill the thread.
        try:
            step(message, *args)
        except BaseException:
            self.logger.warning(
                "Interrupted while finishing %s.", message.message_id, exc_info=True
            )

    def process_message(self, message: MessageProxy) -> None:
        """Run the middleware and the actor for one message."""
        broker = self.broker
        actor = None
        try:
            actor = broker.actor_for(message)
            broker.emit_before("process_message", message)
            result = None
            if not message.failed:
                result = actor(*message.args, **message.kwargs)
                if result is not None and actor.actor_name not in self.worker._discard_checked:
                    self._warn_if_discarded(actor.actor_name, message)
            broker.emit_after("process_message", message, result=result)
        except SkipMessage as e:
            if message.failed and message.exception is None:
                # As in Dramatiq: a message skipped and failed (AgeLimit) carries the skip as
                # its exception, which Results store; join() does not count it as a failure.
                message.stuff_exception(e)
            self.logger.debug("Skipped message %s.", message.message_id)
            broker.emit_after("skip_message", message)
        except BaseException as e:
            message.stuff_exception(e)
            self._log_failure(message, e, actor)
            broker.emit_after("process_message", message, exception=e)

    def _warn_if_discarded(self, actor_name: str, message: MessageProxy) -> None:
        # A broker with a Results middleware warns itself when the actor does not store results
        # (Results.after_process_message); without one, nothing would keep the value.
        if message.options.get("pipe_target") is not None:
            return  # the next step of the pipeline receives it
        self.worker._discard_checked.add(actor_name)
        if any(isinstance(m, Results) for m in self.broker.middleware):
            return
        self.logger.warning(
            "Actor %r returned a value, but the broker has no Results middleware, so the value "
            "was discarded; add broker.add_middleware(Results(backend=...)) and declare the "
            "actor with store_results=True to keep it, or pipe it to another actor (this is "
            "logged once per actor).",
            actor_name,
        )

    def _log_failure(self, message: MessageProxy, error: BaseException, actor: Any) -> None:
        if isinstance(error, Retry):
            return
        if isinstance(error, RateLimitExceeded):
            self.logger.debug("Rate limit exceeded in message %s: %s", message.message_id, error)
            return
        if isinstance(error, Abort):
            self.logger.info("Message %s was aborted.", message.message_id)
            return
        throws: Any = message.options.get("throws") or (
            actor.options.get("throws") if actor else None
        )
        if isinstance(throws, list):
            throws = tuple(throws)
        expected = isinstance(throws, type) or (
            isinstance(throws, tuple) and all(isinstance(t, type) for t in throws)
        )
        if expected and isinstance(error, throws):
            self.logger.info("Message %s failed with %r.", message.message_id, error)
            return
        self.logger.error("Failed to process message %s.", message, exc_info=error)


class _DelayScheduler(threading.Thread):
    """Holds delayed messages until their eta, then moves them to their queue."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(name="nbqueue-delay-scheduler", daemon=True)
        self.worker = worker
        self.logger = get_logger(__name__, "DelayScheduler")
        self._heap: list[tuple[int, int, MessageProxy, ConsumerThread]] = []
        self._sequence = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False

    def add(self, message: MessageProxy, consumer: ConsumerThread) -> None:
        eta = message.options.get("eta")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)):
            self.logger.warning(
                "Message %s has an invalid eta %r; it is treated as due now.",
                message.message_id,
                eta,
            )
            eta = 0
        self.worker._track(1)
        with self._cond:
            heapq.heappush(self._heap, (int(eta), next(self._sequence), message, consumer))
            if self._heap[0][2] is message:
                self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    now = current_millis()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    wait = (self._heap[0][0] - now) / 1000 if self._heap else None
                    self._cond.wait(wait)
                if self._stopping:
                    return
                _, _, message, consumer = heapq.heappop(self._heap)
            self._move(message, consumer)

    def _move(self, message: MessageProxy, consumer: ConsumerThread) -> None:
        worker = self.worker
        options = {k: v for k, v in message.options.items() if k != "eta"}
        due = dataclasses.replace(
            message.message, queue_name=q_name(message.queue_name), options=options
        )
        attempt = 0
        try:
            while True:
                try:
                    worker.broker.enqueue(due)
                    break
                except BrokerConnectionError:
                    attempt += 1
                    if self._stopping:
                        # Still unacknowledged on the delay queue: the broker keeps it.
                        self.logger.warning(
                            "Could not move delayed %s while stopping.", message.message_id
                        )
                        return
                    self.logger.warning("Could not move delayed %s; retrying.", message.message_id)
                    time.sleep(min(5.0, 0.1 * 2**attempt))
            worker.post_process_message(message, consumer)
        except Exception:
            self.logger.critical(
                "Failed to move delayed message %s.", message.message_id, exc_info=True
            )
        finally:
            worker._track(-1)

    def stop(self) -> list[tuple[MessageProxy, ConsumerThread]]:
        """Stop the thread and return the messages it still held."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            held = [(message, consumer) for _, _, message, consumer in self._heap]
            self._heap.clear()
        if self.is_alive():
            self.join(5)
        return held


class _Heartbeat(threading.Thread):
    """Publishes the worker's record every ``heartbeat_ttl / 3`` ms, the first at once, and
    calls ``after_worker_heartbeat`` after each; removes the record when stopped."""

    def __init__(self, worker: Worker, registry: WorkerRegistry | None) -> None:
        super().__init__(name="nbqueue-worker-heartbeat", daemon=True)
        self.worker = worker
        self.registry = registry
        self.logger = get_logger(__name__, "Heartbeat")
        self._halt = threading.Event()
        self._failing = False

    def run(self) -> None:
        worker = self.worker
        interval = worker.heartbeat_ttl / 3000
        while True:
            if self.registry is not None:
                try:
                    self.registry.beat(worker.info())
                    if self._failing:
                        self.logger.info("The worker registry answers again.")
                    self._failing = False
                except Exception:
                    # Once per streak: a broker that is down says so through its consumers too.
                    if not self._failing:
                        self.logger.warning(
                            "Could not publish this worker's heartbeat; retrying every %.1f s.",
                            interval,
                            exc_info=True,
                        )
                    self._failing = True
            worker.broker.emit_after("worker_heartbeat", worker)
            if self._halt.wait(interval):
                return

    def stop(self) -> None:
        """Stop beating, then remove the worker's record (a broker call with its deadline)."""
        self._halt.set()
        # A beat in flight ends within its broker call's deadline; one that outlives this wait
        # may publish again after the removal, and that record expires by its ttl.
        self.join(CONSUMER_CLOSE_TIMEOUT)
        if self.registry is None:
            return
        try:
            self.registry.remove(self.worker.worker_id)
        except Exception:
            self.logger.warning(
                "Could not remove this worker from the worker registry; its record expires in "
                "%d ms.",
                self.worker.heartbeat_ttl,
                exc_info=True,
            )
