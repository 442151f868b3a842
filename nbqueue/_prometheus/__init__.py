"""Prometheus metrics, in one package (needs ``nbqueue[prometheus]``).

* ``settings``: Dramatiq's environment variables (``dramatiq_prom_db``, ``dramatiq_prom_host``,
  ``dramatiq_prom_port``), read when this package is imported, as Dramatiq reads them;
* ``store``: the directory of prometheus_client's multiprocess files, and its cleaning per run;
* ``middleware``: the ``Prometheus`` middleware, with Dramatiq's metric names, labels and
  buckets;
* ``queues``: ``nbqueue_queue_messages``, the broker's ready / delayed / in-flight / dead counts
  per queue, asked of a worker process at scrape time;
* ``exposition``: the HTTP server of ``/metrics`` and ``run_exposition_server``, the fork
  function the worker CLI runs in a process of its own.

``prometheus_client`` picks its multiprocess mode when it is first imported, from
``PROMETHEUS_MULTIPROC_DIR``; so nothing here imports it at module level: each use imports it
after that variable is set. Dramatiq's import path, ``nbqueue.middleware.prometheus``,
re-exports the public names from here. Nothing here imports another server's package.
"""

from __future__ import annotations

from .exposition import ExpositionServer, run_exposition_server
from .middleware import Prometheus
from .settings import DB_PATH, HTTP_HOST, HTTP_PORT

__all__ = [
    "DB_PATH",
    "HTTP_HOST",
    "HTTP_PORT",
    "ExpositionServer",
    "Prometheus",
    "run_exposition_server",
]
