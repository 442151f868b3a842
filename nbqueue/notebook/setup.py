"""Make a broker ready for notebook use: async actors, stored results and the live channel."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from ..broker import Broker
from ..live import Live
from ..middleware import AsyncIO
from ..results import Results

__all__ = ["prepare_broker"]

logger = logging.getLogger("nbqueue.notebook")


def prepare_broker(broker: Broker, url: str) -> str:
    """Add what notebooks rely on and the broker lacks: ``AsyncIO``, ``Results`` (a
    ``RedisBackend`` on the same server, for ``redis://`` URLs) and ``Live``.

    Returns:
      A note for the connect summary, e.g. ``", results and live status in Redis"``.
    """
    names = {type(m).__name__ for m in broker.middleware}
    if "AsyncIO" not in names:
        broker.add_middleware(AsyncIO())
    scheme = urlsplit(url).scheme.lower()
    if "Results" not in names and scheme in ("redis", "rediss", "unix"):
        from ..results.backends import RedisBackend

        broker.add_middleware(Results(backend=RedisBackend(url=url)))
        names.add("Results")
    if "Live" not in names and scheme != "memory":
        try:
            broker.add_middleware(Live())
        except Exception:  # no store for the live channel: widgets fall back to results
            logger.info("No live channel on %r.", broker, exc_info=True)
    if "Results" not in {type(m).__name__ for m in broker.middleware}:
        return ", results not stored: add a RedisBackend to see them"
    return ""
