"""The Jupyter server extension of the Jobs sidebar: ``<base_url>nbqueue/api/`` (``API.md``).

Enabled by ``jupyter-config/jupyter_server_config.d/nbqueue.json`` (installed with the wheel),
or by hand: ``jupyter server extension enable nbqueue.lab``. It reads the local SQLite history
of the embedded broker's jobs and, when a broker URL is configured (``c.NBQueue.broker_url`` or
``NBQUEUE_BROKER_URL``, with ``NBQUEUE_RESULTS_URL`` where results live elsewhere), that Redis
namespace's history, results and queues.
"""

from __future__ import annotations

import os
from typing import Any

from traitlets import Unicode
from traitlets.config import Configurable

from ..common import redact_url
from ..connection import broker_from_url
from ..history.base import Limits
from ..history.sqlite import SQLiteHistory
from .handlers import LabState, setup_handlers
from .sources import LocalSource, RedisSource, Source

__all__ = ["NBQueue", "build_state"]


class NBQueue(Configurable):
    """Settings of the nbqueue server extension (``c.NBQueue.<name>`` in jupyter_server_config)."""

    broker_url = Unicode(
        "",
        config=True,
        help="The broker whose jobs the sidebar lists besides the local ones (default: "
        "NBQUEUE_BROKER_URL). Only a Redis broker keeps a history.",
    )
    namespace = Unicode("", config=True, help="The Redis key namespace (default: dramatiq).")
    history_path = Unicode(
        "",
        config=True,
        help="The local history file (default: NBQUEUE_HISTORY_PATH or "
        "<jupyter data dir>/nbqueue/history.sqlite3).",
    )


def build_state(config: NBQueue, log: Any, root_dir: str = "") -> LabState:
    """Build the handlers' shared state from the settings and the environment."""
    limits = Limits.from_env() or Limits()
    sources: list[Source] = [LocalSource(SQLiteHistory(config.history_path or None, limits=limits))]
    url = config.broker_url or os.environ.get("NBQUEUE_BROKER_URL", "")
    if url and url.split(":", 1)[0].lower() in ("redis", "rediss"):
        options: dict[str, Any] = {"namespace": config.namespace} if config.namespace else {}
        try:
            sources.append(RedisSource(broker_from_url(url, **options), url))
        except Exception as e:
            log.warning("nbqueue: cannot read jobs from %s: %s", redact_url(url), type(e).__name__)
    elif url:
        log.info("nbqueue: %s keeps no job history; listing local jobs only.", redact_url(url))
    return LabState(sources, limits, root_dir)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nbqueue.lab"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    state = build_state(NBQueue(parent=serverapp), serverapp.log, serverapp.root_dir)
    setup_handlers(serverapp.web_app, state)
    names = ", ".join(f"{s.name} ({s.url})" for s in state.sources)
    serverapp.log.info("nbqueue: the Jobs sidebar's API is at nbqueue/api/, reading %s", names)
