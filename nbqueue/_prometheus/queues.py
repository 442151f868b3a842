"""``nbqueue_queue_messages``: how many messages each queue holds, asked at scrape time.

The exposition server runs in a process of its own that has no broker, so each worker process
answers on a Unix socket in the multiprocess directory (``queues-<pid>.sock``) with its
broker's ``queue_stats()`` as JSON; at scrape time the server asks the sockets in turn and the
first answer wins (every worker process sees the same queues of the same broker). A server that
shares a process with its broker reads ``queue_stats()`` directly instead.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..logging import get_logger

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ..broker import Broker, QueueStats

__all__ = [
    "QUEUE_METRIC",
    "STATES",
    "QueueCollector",
    "QueueStatsServer",
    "ask_workers",
    "counts_of",
]

#: The gauge's name; its labels are ``queue_name`` and ``state`` (one of ``STATES``).
QUEUE_METRIC = "nbqueue_queue_messages"

#: The states a message can be counted in; ``in_flight`` is left out where the broker cannot
#: tell (RabbitMQ).
STATES = ("ready", "delayed", "in_flight", "dead")

#: Seconds a scrape waits for one worker process to answer.
ASK_TIMEOUT = 10.0

#: The longest path a Unix socket may have on Linux (``sun_path`` minus its final NUL).
MAX_SOCKET_PATH = 107

Counts = dict[str, dict[str, int]]


def counts_of(stats: Mapping[str, QueueStats]) -> Counts:
    """Turn ``Broker.queue_stats()`` into ``{queue: {state: count}}``, without unknown counts."""
    return {
        name: {state: count for state in STATES if (count := getattr(queue, state)) is not None}
        for name, queue in stats.items()
    }


def socket_path(directory: str, pid: int) -> str:
    """The socket of worker process ``pid`` in the multiprocess directory."""
    return os.path.join(directory, f"queues-{pid}.sock")


class _Handler(socketserver.BaseRequestHandler):
    server: _UnixServer

    def handle(self) -> None:
        try:
            body = json.dumps(counts_of(self.server.broker.queue_stats())).encode()
        except Exception:
            # The scrape then asks another process, or reports no queue counts.
            get_logger(__name__, QueueStatsServer).warning(
                "Could not read the queue counts for Prometheus.", exc_info=True
            )
            return
        self.request.sendall(body)


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, broker: Broker) -> None:
        self.broker = broker
        super().__init__(path, _Handler)


class QueueStatsServer:
    """Answers scrapes with this process's broker's queue counts, on a daemon thread.

    Parameters:
      broker: the broker whose ``queue_stats()`` is reported.
      directory: the multiprocess directory, shared with the exposition server.
    """

    def __init__(self, broker: Broker, directory: str) -> None:
        self.broker = broker
        self.path = socket_path(directory, os.getpid())
        self.logger = get_logger(__name__, type(self))
        self._server: _UnixServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Bind the socket and start answering; return ``False`` (and log why) if it cannot."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            self.logger.warning(
                "The Prometheus directory %r is too long a path for a Unix socket, so "
                "nbqueue_queue_messages is not reported; set dramatiq_prom_db to a shorter path.",
                os.path.dirname(self.path),
            )
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by an earlier process with the same pid
        try:
            self._server = _UnixServer(self.path, self.broker)
        except OSError as e:
            self.logger.warning(
                "Could not bind %r: %s; queue counts are not reported.", self.path, e
            )
            return False
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="nbqueue-prometheus-queues",
            daemon=True,
        )
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop answering and remove the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _ask(path: str) -> Counts | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(ASK_TIMEOUT)
        try:
            sock.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            # Nobody listens: the process died without removing its socket.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return None
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    if not chunks:
        return None
    counts: Counts = json.loads(b"".join(chunks))
    return counts


def ask_workers(directory: str) -> Counts | None:
    """Ask the worker processes of ``directory`` for their broker's counts, one after another;
    return the first answer, or ``None`` when none answers."""
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), "queues-*.sock"))):
        try:
            counts = _ask(path)
        except (OSError, ValueError):
            get_logger(__name__, "ask_workers").debug("No answer from %r.", path, exc_info=True)
            continue
        if counts is not None:
            return counts
    return None


class QueueCollector:
    """A prometheus_client collector of ``nbqueue_queue_messages``, read when scraped.

    Parameters:
      source: returns ``{queue: {state: count}}``, or ``None`` when the counts are unknown
        (then the gauge is left out of the scrape).
    """

    def __init__(self, source: Callable[[], Counts | None]) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        # prometheus_client is an optional extra, imported only once its directory is set.
        from prometheus_client.core import GaugeMetricFamily

        counts = self.source()
        if counts is None:
            return []
        family = GaugeMetricFamily(
            QUEUE_METRIC,
            "Messages a queue holds, by state (ready, delayed, in_flight, dead).",
            labels=["queue_name", "state"],
        )
        for name in sorted(counts):
            for state, count in counts[name].items():
                family.add_metric([name, state], count)
        return [family]

    def describe(self) -> list[Any]:
        # Registering must not call the broker: an empty description skips the collect() that
        # prometheus_client would otherwise run to learn the metric names.
        return []
