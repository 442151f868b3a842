"""The kernel's embedded worker: a ``Worker`` on daemon threads, next to the user's code.

It starts on first need (the first ``%send``, or ``%nbqueue worker start``) against the current
global broker, restarts cleanly when ``%nbqueue connect`` changes the broker, and stops within
``STOP_TIMEOUT`` at kernel shutdown or ``%unload_ext``: running actors get that long to finish,
and every message it fetched but did not finish is handed back to the broker.

Nothing here touches the kernel's event loop: async actors run on nbqueue's private loop thread.
"""

from __future__ import annotations

import atexit
import collections
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..broker import Broker, get_broker
from ..middleware.base import Middleware
from ..worker import Worker

if TYPE_CHECKING:
    from ..broker import MessageProxy
    from ..message import Message

__all__ = ["AutoStart", "EmbeddedWorker", "RateMeter", "WorkerLog", "get_embedded_worker"]

#: How long running actors get to finish when the embedded worker stops, in milliseconds.
STOP_TIMEOUT = 4000

#: The same at interpreter exit (kernel shutdown). jupyter_client sends SIGTERM 2.5 s after its
#: shutdown request (half of its default ``shutdown_wait_time``), and a kernel killed before the
#: worker stopped leaves its messages to the broker's redelivery timeout.
EXIT_TIMEOUT = 1500

#: How many threads the embedded worker runs unless told otherwise.
DEFAULT_THREADS = 4


class RateMeter(Middleware):
    """Counts the messages a worker finished, for the queue monitor's "recent rate".

    Parameters:
      window: how far back the rate looks, in seconds.
    """

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.total = 0
        self._times: collections.deque[float] = collections.deque(maxlen=10000)
        self._lock = threading.Lock()

    def _count(self) -> None:
        with self._lock:
            self.total += 1
            self._times.append(time.monotonic())

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        if not message.queue_name.endswith(".DQ"):
            self._count()

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self._count()

    def rate(self) -> float:
        """Messages finished per second over the last ``window`` seconds."""
        cutoff = time.monotonic() - self.window
        with self._lock:
            while self._times and self._times[0] < cutoff:
                self._times.popleft()
            return len(self._times) / self.window


class WorkerLog(logging.Handler):
    """Keeps what nbqueue logs from its own threads out of whichever cell happens to run.

    Records from nbqueue's threads (worker, consumer, publisher) are kept, the last ``size`` of
    them, for ``%nbqueue status``; records from the kernel's own thread are written to
    ``sys.stderr`` as usual. Installed on the ``nbqueue`` logger only when logging is not
    configured (no handler on it or on the root logger), so user configuration always wins.
    """

    def __init__(self, size: int = 50) -> None:
        super().__init__(logging.WARNING)
        self.records: collections.deque[str] = collections.deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.threadName and record.threadName.startswith("nbqueue-"):
                self.records.append(text)
            elif sys.stderr is not None:
                sys.stderr.write(text + "\n")
        except Exception:
            self.handleError(record)

    def install(self) -> bool:
        """Attach to the ``nbqueue`` logger unless logging is configured; return whether it did."""
        logger = logging.getLogger("nbqueue")
        if logger.handlers or logging.getLogger().handlers:
            return False
        logger.addHandler(self)
        logger.propagate = False
        return True

    def uninstall(self) -> None:
        """Detach from the ``nbqueue`` logger."""
        logger = logging.getLogger("nbqueue")
        if self in logger.handlers:
            logger.removeHandler(self)
            logger.propagate = True


class AutoStart(Middleware):
    """Starts the embedded worker when the kernel sends a message: its "first need".

    Sends made by nbqueue's own threads (retries, delayed messages coming due) are ignored, so a
    stopping worker never restarts itself.
    """

    def __init__(self, embedded: EmbeddedWorker) -> None:
        self.embedded = embedded
        #: called with each message the kernel sent, and its broker (the results table)
        self.on_sent: Callable[[Message[Any], Broker], object] | None = None

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        if self.embedded.auto and not threading.current_thread().name.startswith("nbqueue-"):
            if broker is get_broker():
                self.embedded.ensure_started()

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        on_sent = self.on_sent
        if on_sent is not None and not threading.current_thread().name.startswith("nbqueue-"):
            on_sent(message, broker)


class _AllBut(set[str]):
    """A worker's queue whitelist that admits every queue except ``excluded`` (a live set)."""

    def __init__(self, excluded: set[str]) -> None:
        super().__init__()
        self.excluded = excluded

    def __contains__(self, name: object) -> bool:
        return name not in self.excluded


class EmbeddedWorker:
    """Owns the kernel's one embedded ``Worker`` (see the module docstring).

    Queues in ``skip_queues`` (those of ``%%actor --remote`` actors, which run on remote
    workers) are not consumed unless ``queues`` names them.

    Parameters:
      threads: how many actors may run at once.
      queues: the queues to consume; ``None`` means every queue, including later ones.
    """

    def __init__(self, threads: int = DEFAULT_THREADS, queues: Iterable[str] | None = None) -> None:
        self.threads = threads
        self.queues: list[str] | None = list(queues) if queues is not None else None
        self.skip_queues: set[str] = set()
        self.worker: Worker | None = None
        self.meter = RateMeter()
        self.autostart = AutoStart(self)
        self.log = WorkerLog()
        self._brokers: list[Broker] = []
        #: whether ``%send`` starts the worker on first need (off after ``%nbqueue worker stop``)
        self.auto = True
        self._lock = threading.RLock()
        self._atexit = False

    def __repr__(self) -> str:
        return f"EmbeddedWorker({self.status()})"

    @property
    def running(self) -> bool:
        """Whether the worker runs (against any broker)."""
        worker = self.worker
        return worker is not None and worker.running

    def status(self) -> str:
        """A one-line description, e.g. ``"running, 4 threads, all queues"``."""
        worker = self.worker
        if worker is None or not worker.running:
            return "stopped"
        queues = ", ".join(sorted(self.queues)) if self.queues is not None else "all queues"
        if self.queues is None and self.skip_queues:
            queues += f" but {', '.join(sorted(self.skip_queues))}"
        return f"running, {self.threads} threads, {queues}, {worker.pending} pending"

    def ensure_started(self) -> Worker:
        """Return the running worker of the current global broker, starting it if needed.

        A worker that runs against another broker (after ``nbqueue.connect()``) is stopped first.
        """
        broker = get_broker()
        with self._lock:
            worker = self.worker
            if worker is not None and worker.running and worker.broker is broker:
                return worker
            return self.start()

    def attach(self, broker: Broker) -> None:
        """Add the rate meter and the start-on-first-send hook to ``broker``."""
        with self._lock:
            for middleware in (self.meter, self.autostart):
                if middleware not in broker.middleware:
                    broker.add_middleware(middleware)
            if broker not in self._brokers:
                self._brokers.append(broker)

    def on_send(self) -> None:
        """Start the worker if it should run and does not (called before each ``%send``)."""
        if self.auto:
            self.ensure_started()

    def start(self, threads: int | None = None, queues: Iterable[str] | None = None) -> Worker:
        """(Re)start the worker against the current global broker; returns once it runs.

        Parameters:
          threads: how many actors may run at once (default: as before).
          queues: the queues to consume (default: as before; ``None`` the first time: all).
        """
        with self._lock:
            self.stop()
            self.auto = True
            if threads is not None:
                self.threads = threads
            if queues is not None:
                self.queues = list(queues) or None
            broker = get_broker()
            self.attach(broker)
            worker = Worker(broker, queues=self.queues, worker_threads=self.threads)
            if self.queues is None:
                worker.consumer_whitelist = _AllBut(self.skip_queues)
            worker.start()
            self.worker = worker
            if not self._atexit:
                # Daemon threads die with the interpreter; stopping first hands their messages
                # back instead of leaving them to the broker's redelivery timeout.
                atexit.register(self._stop_at_exit)
                self._atexit = True
            return worker

    def stop(self, timeout: int = STOP_TIMEOUT, *, auto: bool | None = None) -> None:
        """Stop the worker: running actors get ``timeout`` milliseconds to finish, and what it
        fetched but did not finish goes back to the broker. Does nothing when stopped.

        Parameters:
          auto: whether ``%send`` may start it again (default: unchanged).
        """
        with self._lock:
            if auto is not None:
                self.auto = auto
            worker, self.worker = self.worker, None
            if worker is None:
                return
            worker.stop(timeout=timeout)

    def _stop_at_exit(self) -> None:
        self.stop(EXIT_TIMEOUT)

    def close(self) -> None:
        """Stop the worker, detach from the brokers and forget the exit hook (``%unload_ext``)."""
        self.stop()
        with self._lock:
            for broker in self._brokers:
                broker.remove_middleware(self.meter)
                broker.remove_middleware(self.autostart)
            self._brokers.clear()
        if self._atexit:
            atexit.unregister(self._stop_at_exit)
            self._atexit = False


_embedded: EmbeddedWorker | None = None
_embedded_lock = threading.Lock()


def get_embedded_worker() -> EmbeddedWorker:
    """Return the kernel's embedded worker manager (created stopped on first use)."""
    global _embedded
    if _embedded is None:
        with _embedded_lock:
            if _embedded is None:
                _embedded = EmbeddedWorker()
    return _embedded
