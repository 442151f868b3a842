"""The notebook-actor store on Redis: keys under the broker's namespace ``ns``.

* ``ns:__nbq__:code:<hash>``: the signed envelope of one version (string, kept until deleted);
* ``ns:__nbq__:code.index``: hash of ``queue/actor`` -> JSON index entry of its latest version;
* ``ns:__nbq__:cap:<queue>``: sorted set of ``<worker id>|<actor>`` scored by the time (ms,
  Redis server clock) the registration expires. Reads drop expired members first.

Every call goes through the broker's client, whose socket timeout is the deadline, and its
errors become nbqueue's connection errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..services import CodeStore, Published
from .client import load_script

if TYPE_CHECKING:
    from .broker import RedisBroker

__all__ = ["RedisCodeStore"]


class RedisCodeStore(CodeStore):
    """The store of a ``RedisBroker``, on its own client and namespace."""

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.client = broker.client
        self.keys = broker.keys
        self._register = load_script(self.client, "code_register")
        self._live = load_script(self.client, "code_live")
        self._registered: dict[str, set[tuple[str, str]]] = {}

    def put(self, envelope: bytes, entry: Published) -> None:
        field = f"{entry.queue_name}/{entry.actor_name}"
        value = json.dumps(
            {
                "queue_name": entry.queue_name,
                "actor_name": entry.actor_name,
                "code_hash": entry.code_hash,
                "published_at": entry.published_at,
            }
        )
        with self.broker.connection.errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self.keys.code(entry.code_hash), envelope)
            pipe.hset(self.keys.code_index, field, value)
            pipe.execute()

    def get(self, code_hash: str) -> bytes | None:
        with self.broker.connection.errors():
            value = self.client.get(self.keys.code(code_hash))
        return value if value is None else bytes(value)  # type: ignore[arg-type]

    def published(self) -> list[Published]:
        with self.broker.connection.errors():
            raw = self.client.hgetall(self.keys.code_index)
        entries = []
        for value in raw.values():
            try:
                data = json.loads(value)
                entries.append(
                    Published(
                        str(data["queue_name"]),
                        str(data["actor_name"]),
                        str(data["code_hash"]),
                        int(data["published_at"]),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue  # an entry someone else wrote badly names no queue worth consuming
        return entries

    def register(self, worker_id: str, capabilities: set[tuple[str, str]], ttl: int) -> None:
        self._registered[worker_id] = set(capabilities)
        if not capabilities:
            return
        ordered = sorted(capabilities)
        keys = [self.keys.capabilities(queue) for queue, _ in ordered]
        members = [f"{worker_id}|{actor}" for _, actor in ordered]
        with self.broker.connection.errors():
            self._register(keys=keys, args=[ttl, *members])

    def unregister(self, worker_id: str) -> None:
        capabilities = self._registered.pop(worker_id, set())
        if not capabilities:
            return
        with self.broker.connection.errors():
            pipe = self.client.pipeline(transaction=False)
            for queue, actor in capabilities:
                pipe.zrem(self.keys.capabilities(queue), f"{worker_id}|{actor}")
            pipe.execute()

    def capable(self, queue_name: str, actor_names: Iterable[str], *, exclude: str) -> int:
        wanted = set(actor_names)
        with self.broker.connection.errors():
            members: list[bytes] = self._live(keys=[self.keys.capabilities(queue_name)], args=[])
        live = set()
        for member in members:
            worker, _, actor = member.decode("utf-8", "replace").partition("|")
            if actor in wanted and worker != exclude:
                live.add(worker)
        return len(live)
