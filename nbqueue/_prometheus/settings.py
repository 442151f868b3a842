"""Dramatiq's environment variables of the Prometheus middleware, read once at import.

Dramatiq reads them when ``dramatiq.middleware.prometheus`` is imported, so a worker module that
sets one with ``os.environ.setdefault`` after importing the middleware changes nothing; nbqueue
behaves the same way.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["DB_ENV", "DB_PATH", "HOST_ENV", "HTTP_HOST", "HTTP_PORT", "MULTIPROC_ENVS", "PORT_ENV"]

DB_ENV = "dramatiq_prom_db"
HOST_ENV = "dramatiq_prom_host"
PORT_ENV = "dramatiq_prom_port"

#: prometheus_client's variable for its multiprocess directory, and the older lower-case name
#: (still read by prometheus_client, with a deprecation warning when it is the only one set).
MULTIPROC_ENVS = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")

#: The directory of the metric files every worker process writes; emptied at the start of a run.
DB_PATH = os.getenv(DB_ENV, os.path.join(tempfile.gettempdir(), "dramatiq-prometheus"))

#: The address the exposition server binds to.
HTTP_HOST = os.getenv(HOST_ENV, "0.0.0.0")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(
            f"{PORT_ENV}={value!r} is not a TCP port; set it to a number from 0 to 65535."
        )
    return port


#: The TCP port the exposition server listens on.
HTTP_PORT = _port(os.getenv(PORT_ENV, "9191"))
