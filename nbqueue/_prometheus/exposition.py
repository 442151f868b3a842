"""The exposition server: ``GET`` any path for the metrics of every worker process.

``run_exposition_server`` is the fork function of the ``Prometheus`` middleware: the worker CLI
runs it in a process of its own, beside the worker processes. It serves the multiprocess files
of ``dramatiq_prom_db`` summed over the processes, plus ``nbqueue_queue_messages`` asked of a
worker process at scrape time, on ``dramatiq_prom_host``:``dramatiq_prom_port``.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ..logging import get_logger
from . import settings, store
from .queues import QueueCollector, ask_workers

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

__all__ = ["ExpositionServer", "run_exposition_server"]


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:
        # prometheus_client is an optional extra, imported only once its directory is set.
        import prometheus_client as prom

        try:
            body = self.server.exposition.generate()
        except Exception:
            get_logger(__name__, ExpositionServer).exception("Could not collect the metrics.")
            self.send_error(500, "could not collect the metrics; see the server's log")
            return
        self.send_response(200)
        self.send_header("Content-Type", prom.CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        get_logger(__name__, ExpositionServer).debug(format, *args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], exposition: ExpositionServer) -> None:
        self.exposition = exposition
        super().__init__(address, _Handler)


class ExpositionServer:
    """An HTTP server of Prometheus metrics, bound when created.

    Parameters:
      host: the address to bind.
      port: the TCP port; 0 picks a free one (see ``port``).
      db_path: a multiprocess directory whose files are summed into each scrape.
      collectors: more collectors read at each scrape (such as a ``QueueCollector``).

    Raises:
      OSError: the address cannot be bound.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db_path: str | None = None,
        collectors: Sequence[Collector] = (),
    ) -> None:
        self.db_path = db_path
        self.collectors = list(collectors)
        self._httpd = _HTTPServer((host, port), self)

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self._httpd.server_address[1])

    def registry(self) -> Any:
        """Return a fresh ``CollectorRegistry`` with what one scrape reports."""
        # prometheus_client is an optional extra, imported only once its directory is set.
        import prometheus_client as prom
        from prometheus_client import multiprocess

        registry = prom.CollectorRegistry()
        if self.db_path is not None:
            multiprocess.MultiProcessCollector(registry, path=self.db_path)  # type: ignore[no-untyped-call]
        for collector in self.collectors:
            registry.register(collector)
        return registry

    def generate(self) -> bytes:
        """Return one scrape's metrics in Prometheus's text format.

        Raises:
          struct.error: a metric file was still empty after three tries.
        """
        # prometheus_client is an optional extra, imported only once its directory is set.
        import prometheus_client as prom

        for _ in range(2):
            try:
                return prom.generate_latest(self.registry())
            except struct.error:
                # A worker process was creating its metric file, which is empty for an instant
                # before prometheus_client sizes it: read the files again.
                continue
        return prom.generate_latest(self.registry())

    def serve_forever(self) -> None:
        """Answer requests until ``shutdown()`` is called (blocks)."""
        self._httpd.serve_forever(poll_interval=0.5)

    def start(self) -> threading.Thread:
        """Serve on a daemon thread; return it."""
        thread = threading.Thread(
            target=self.serve_forever, name="nbqueue-prometheus-exposition", daemon=True
        )
        thread.start()
        return thread

    def shutdown(self) -> None:
        """Stop serving and close the socket (blocks until ``serve_forever`` returned)."""
        self._httpd.shutdown()
        self.close()

    def close(self) -> None:
        """Close the listening socket."""
        self._httpd.server_close()


def run_exposition_server() -> int:
    """Serve every worker process's metrics until stopped; return the exit code.

    The fork function of ``Prometheus``: module-level and without arguments, so that the worker
    CLI can run it in a process of its own (``--fork-function`` accepts it too).
    """
    logger = get_logger(__name__, "run_exposition_server")
    directory = settings.DB_PATH
    # Before prometheus_client is first imported in this process.
    store.use_directory(directory)
    try:
        server = ExpositionServer(
            settings.HTTP_HOST,
            settings.HTTP_PORT,
            db_path=directory,
            collectors=[QueueCollector(lambda: ask_workers(directory))],
        )
    except OSError as e:
        logger.error(
            "Could not start the Prometheus exposition server on %s:%d: %s; set %s to a free port.",
            settings.HTTP_HOST,
            settings.HTTP_PORT,
            e,
            settings.PORT_ENV,
        )
        return 1
    logger.info("Serving Prometheus metrics on http://%s:%d/.", settings.HTTP_HOST, server.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.debug("Stopping the exposition server.")
    finally:
        server.close()
    return 0
