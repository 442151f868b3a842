"""The worker registry on Redis: two keys under the broker's namespace ``ns``.

* ``ns:__nbq__:workers``: hash of worker id -> its record (``WorkerInfo`` as JSON);
* ``ns:__nbq__:workers.expiry``: sorted set of worker id -> when its record expires (ms, Redis
  server clock).

A heartbeat is one ``worker_beat.lua`` call (one round trip): it drops the expired records,
scores the worker's at ``now + ttl`` and stores it; a read (``workers_live.lua``) drops the
expired ones and returns the rest, so a killed worker is gone ``ttl`` ms after its last beat by
the server's clock. ``last_seen`` is the server's time of the last beat. Both keys expire
``2 * ttl`` after the last beat of the fleet. Every call has the connection's deadline.
"""

from __future__ import annotations

import json
from typing import Any

from ..services import WorkerInfo, WorkerRegistry, sort_workers
from .client import RedisConnection, as_text, load_script
from .keys import RedisKeys

__all__ = ["RedisWorkerRegistry"]


class RedisWorkerRegistry(WorkerRegistry):
    """The registry under ``keys``' namespace, on a connection it shares with its owner (a
    broker) and never closes."""

    def __init__(self, connection: RedisConnection, keys: RedisKeys) -> None:
        self.connection = connection
        self.keys = [keys.workers, keys.workers_expiry]
        self._beat = load_script(connection.client, "worker_beat")
        self._live = load_script(connection.client, "workers_live")

    def __repr__(self) -> str:
        return f"RedisWorkerRegistry({self.connection.where!r}, key={self.keys[0]!r})"

    def beat(self, info: WorkerInfo) -> None:
        """Publish ``info``; see ``WorkerRegistry.beat``."""
        record = json.dumps(info.to_dict(), separators=(",", ":"))
        with self.connection.errors():
            self._beat(keys=self.keys, args=[info.id, info.ttl, record])

    def remove(self, worker_id: str) -> None:
        """Drop ``worker_id``'s record; see ``WorkerRegistry.remove``."""
        with self.connection.errors():
            pipe = self.connection.client.pipeline(transaction=True)
            pipe.hdel(self.keys[0], worker_id)
            pipe.zrem(self.keys[1], worker_id)
            pipe.execute()

    def workers(self) -> list[WorkerInfo]:
        """Return the live workers; see ``WorkerRegistry.workers``."""
        with self.connection.errors():
            reply: list[Any] = self._live(keys=self.keys, args=[])
        found = []
        for i in range(0, len(reply), 3):
            expiry, record = reply[i + 1], reply[i + 2]
            if not record:
                continue  # removed between the two reads of the script: not live
            try:
                data = json.loads(as_text(record))
                found.append(
                    WorkerInfo.from_dict(data, last_seen=int(float(expiry)) - int(data["ttl"]))
                )
            except (ValueError, KeyError, TypeError):
                continue  # a record someone else wrote badly describes no worker of ours
        return sort_workers(found)
