"""The ``Prometheus`` middleware: Dramatiq's metrics of the messages this process handles.

Names, labels (``queue_name``, ``actor_name``), buckets and multiprocess modes follow Dramatiq
2.x, so dashboards built for Dramatiq keep working:

* ``dramatiq_messages_total``: messages processed (skipped ones included);
* ``dramatiq_message_errors_total``: messages whose actor raised;
* ``dramatiq_message_retries_total``: retries enqueued (``Retries``);
* ``dramatiq_message_rejects_total``: messages dead-lettered;
* ``dramatiq_messages_inprogress``: messages being processed now (summed over live processes);
* ``dramatiq_delayed_messages_inprogress``: delayed messages a worker holds until their eta;
* ``dramatiq_message_duration_milliseconds``: processing time, a histogram.

Counting, where Dramatiq's hooks could count twice or go below zero: a retry is counted once,
when ``Retries`` schedules it (``before_retry``), not again when it comes due and moves from the
delay queue, and a message re-sent with a ``retries`` option (a requeued dead letter) is no retry; a delayed
message leaves the delayed gauge when its worker moves it (whoever then runs it) or stops; and
the in-progress gauge only goes down for a message it went up for, so a message that an earlier
middleware skipped (``AgeLimit``) still counts as processed without making the gauge negative.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..common import current_millis, dq_name
from ..logging import get_logger
from ..middleware.base import Middleware
from . import settings, store
from .exposition import run_exposition_server
from .queues import QueueStatsServer

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

    from ..broker import Broker, MessageProxy
    from ..message import Message
    from ..worker import Worker

__all__ = ["BUCKETS", "Prometheus"]

#: The buckets of ``dramatiq_message_duration_milliseconds``, in milliseconds (Dramatiq's).
BUCKETS = (
    5,
    10,
    25,
    50,
    75,
    100,
    250,
    500,
    750,
    1000,
    2500,
    5000,
    7500,
    10000,
    30000,
    60000,
    600000,
    900000,
    float("inf"),
)

LABELS = ("queue_name", "actor_name")


@dataclasses.dataclass(frozen=True)
class _Metrics:
    total: Counter
    errors: Counter
    retries: Counter
    rejects: Counter
    in_progress: Gauge
    delayed: Gauge
    durations: Histogram

    @classmethod
    def create(cls) -> _Metrics:
        # prometheus_client is an optional extra, imported only once its directory is set.
        import prometheus_client as prom

        # A private registry, as in Dramatiq: the exposition server reads the files of every
        # process, not this registry.
        registry = prom.CollectorRegistry()

        def counter(name: str, doc: str) -> Counter:
            return prom.Counter(name, doc, LABELS, registry=registry)

        return cls(
            total=counter("dramatiq_messages_total", "The total number of messages processed."),
            errors=counter(
                "dramatiq_message_errors_total", "The total number of errored messages."
            ),
            retries=counter(
                "dramatiq_message_retries_total", "The total number of retried messages."
            ),
            rejects=counter(
                "dramatiq_message_rejects_total", "The total number of dead-lettered messages."
            ),
            in_progress=prom.Gauge(
                "dramatiq_messages_inprogress",
                "The number of messages in progress.",
                LABELS,
                registry=registry,
                multiprocess_mode="livesum",
            ),
            delayed=prom.Gauge(
                "dramatiq_delayed_messages_inprogress",
                "The number of delayed messages in memory.",
                LABELS,
                registry=registry,
                multiprocess_mode="livesum",
            ),
            durations=prom.Histogram(
                "dramatiq_message_duration_milliseconds",
                "The time spent processing messages.",
                LABELS,
                buckets=BUCKETS,
                registry=registry,
            ),
        )


def _labels(message: MessageProxy | Message[Any]) -> tuple[str, str]:
    return message.queue_name, message.actor_name


class Prometheus(Middleware):
    """Exports Dramatiq's message metrics, and nbqueue's queue counts, to Prometheus.

    In the worker CLI the metrics are set up in each worker process by ``after_process_boot``
    (a plain ``Worker`` sets them up when it boots), written to prometheus_client's multiprocess
    files in ``dramatiq_prom_db``, and served, summed over the processes, by the exposition
    server at ``http://dramatiq_prom_host:dramatiq_prom_port/`` that the CLI runs in a process
    of its own (``forks``). Each worker process also answers that server's scrapes with its
    broker's ``queue_stats()``, as ``nbqueue_queue_messages{queue_name,state}``.

    Raises:
      ImportError: prometheus_client is not installed.
    """

    def __init__(self) -> None:
        if importlib.util.find_spec("prometheus_client") is None:
            raise ImportError(
                "Prometheus needs the prometheus_client package: pip install 'nbqueue[prometheus]'."
            )
        self.logger = get_logger(__name__, type(self))
        self._lock = threading.Lock()
        self._metrics: _Metrics | None = None
        self._directory: str | None = None
        #: message id -> labels of the delayed messages this process holds until their eta
        self._delayed: dict[str, tuple[str, str]] = {}
        #: id() of each message proxy being processed -> its start, in milliseconds
        self._started: dict[int, int] = {}
        self._queue_server: QueueStatsServer | None = None
        self._workers = 0

    @property
    def forks(self) -> list[Callable[[], int]]:
        """The exposition server, which the worker CLI runs beside the worker processes."""
        return [run_exposition_server]

    def _setup(self) -> _Metrics:
        with self._lock:
            if self._metrics is None:
                directory = settings.DB_PATH
                store.use_directory(directory)
                if store.start_run(directory):
                    self.logger.debug("Emptied the Prometheus directory %r.", directory)
                self._metrics = _Metrics.create()
                self._directory = directory
                if not store.multiprocess_enabled():
                    self.logger.warning(
                        "prometheus_client was imported before the Prometheus middleware set "
                        "PROMETHEUS_MULTIPROC_DIR, so this process's metrics stay in memory and "
                        "the exposition server does not see them; import prometheus_client only "
                        "after the broker is set up, or set PROMETHEUS_MULTIPROC_DIR=%s before "
                        "the worker starts.",
                        directory,
                    )
            return self._metrics

    def after_process_boot(self, broker: Broker) -> None:
        self._setup()

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        self._setup()

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        with self._lock:
            self._workers += 1
            if self._queue_server is not None or self._directory is None:
                return
            server = QueueStatsServer(broker, self._directory)
            if server.start():
                self._queue_server = server

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        metrics = self._metrics
        with self._lock:
            self._workers = max(0, self._workers - 1)
            if self._workers:
                return
            server, self._queue_server = self._queue_server, None
            held, self._delayed = self._delayed, {}
        if server is not None:
            server.stop()
        if metrics is None:
            return
        for labels in held.values():
            metrics.delayed.labels(*labels).dec()
        if self._directory is not None and store.multiprocess_enabled():
            # prometheus_client is an optional extra, imported only once its directory is set.
            from prometheus_client import multiprocess

            # Drops this process's "live" gauges from the sums.
            multiprocess.mark_process_dead(os.getpid(), self._directory)  # type: ignore[no-untyped-call]

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        if self._metrics is not None:
            self._metrics.rejects.labels(*_labels(message)).inc()

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        with self._lock:
            held = self._delayed.pop(message.message_id, None)
        if held is not None:
            # A delayed message this process held has come due and moved to its queue (a retry
            # among them was counted once, by before_retry).
            metrics.delayed.labels(*held).dec()

    def before_retry(self, broker: Broker, message: MessageProxy, delay: int) -> None:
        if self._metrics is not None:
            # Labelled with the delay queue the retry goes to, as Dramatiq's count is.
            self._metrics.retries.labels(dq_name(message.queue_name), message.actor_name).inc()

    def before_delay_message(self, broker: Broker, message: MessageProxy) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        labels = _labels(message)
        with self._lock:
            if message.message_id in self._delayed:
                return
            self._delayed[message.message_id] = labels
        metrics.delayed.labels(*labels).inc()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        with self._lock:
            held = self._delayed.pop(message.message_id, None)
            self._started[id(message)] = current_millis()
        if held is not None:
            metrics.delayed.labels(*held).dec()
        metrics.in_progress.labels(*_labels(message)).inc()

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        labels = _labels(message)
        with self._lock:
            started = self._started.pop(id(message), None)
        if started is not None:
            metrics.in_progress.labels(*labels).dec()
        duration = 0 if started is None else max(0, current_millis() - started)
        metrics.durations.labels(*labels).observe(duration)
        metrics.total.labels(*labels).inc()
        if exception is not None:
            metrics.errors.labels(*labels).inc()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self.after_process_message(broker, message)
