"""The Redis job history: an index beside the live records, kept by the live channel's scripts.

Keys, under the namespace ``ns`` (``keys.history_keys``)::

    ns:__nbq__:history           zset: message ids by first enqueue time (ms)
    ns:__nbq__:history:entries   hash: id -> {"message": the message's dict, "notebook", "kernel"}
    ns:__nbq__:history:records   hash: id -> the status record as of its final status
    ns:__nbq__:history:version   counter, incremented on every change
    ns:__nbq__:history:changes   pub/sub channel: the new version, at every change

Nothing here adds a round trip to a send: the producer's first live write (already batched by
the publisher thread) carries the entry, and ``live_write`` (``_lib.lua``) adds it, trims the
history to its bounds, and copies the record when a message it holds reaches a final status, in
the same script (readers read an unfinished job's live record). The record copy outlives the
live record (which expires with the result), so a finished job stays listed with its status,
times and worker; its output and result last as long as the live channel and result backend
keep them.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ..history.base import History, HistoryJob, JobQuery
from .client import as_text

if TYPE_CHECKING:
    from .live import RedisTransport

__all__ = ["OUTPUT_TAIL", "RedisHistory"]

#: The longest output tail ``job()`` returns, in characters.
OUTPUT_TAIL = 65536

#: How many jobs one round trip of ``jobs()`` reads.
CHUNK = 500


def _json(value: Any) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


class RedisHistory(History):
    """Read the job history of one namespace (see the module docstring).

    Parameters:
      transport: the live channel whose scripts write it.
    """

    source = "redis"

    def __init__(self, transport: RedisTransport) -> None:
        self.transport = transport
        self.connection = transport.connection
        self.client = transport.client
        (
            self.index_key,
            self.entries_key,
            self.records_key,
            self.version_key,
            self.changes_key,
        ) = transport.history_keys

    def __repr__(self) -> str:
        return f"RedisHistory({self.connection.where!r}, namespace={self.transport.namespace!r})"

    def _build(self, message_id: str, entry: Any, record: Any) -> HistoryJob | None:
        values = record if isinstance(record, dict) else (_json(record) or {})
        return HistoryJob.from_parts(message_id, values, _json(entry), source=self.source)

    def jobs(self, query: JobQuery | None = None) -> list[HistoryJob]:
        query = query or JobQuery()
        with self.connection.errors():
            ids = [as_text(i) for i in self.client.zrevrange(self.index_key, 0, -1)]
        if query.q:
            ids = [i for i in ids if i.startswith(query.q)]
        found: list[HistoryJob] = []
        for start in range(0, len(ids), CHUNK):
            if len(found) >= query.limit:
                break
            chunk = ids[start : start + CHUNK]
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(self.entries_key, chunk)
            pipe.hmget(self.records_key, chunk)
            with self.connection.errors():
                entries, records = pipe.execute()
            unfinished = [i for i, record in zip(chunk, records, strict=True) if record is None]
            live: dict[str, Any] = {}
            if unfinished:  # no copy before a final status: their live records
                pipe = self.client.pipeline(transaction=False)
                for message_id in unfinished:
                    pipe.hgetall(self.transport.prefix + message_id)
                with self.connection.errors():
                    live = dict(zip(unfinished, pipe.execute(), strict=True))
            for message_id, entry, record in zip(chunk, entries, records, strict=True):
                if record is None:
                    record = live.get(message_id) or None
                job = self._build(message_id, entry, record)
                if job is not None and query.matches(job):
                    found.append(job)
        found = found[: query.limit]
        self._add_progress(found)
        return found

    def _add_progress(self, jobs: list[HistoryJob]) -> None:
        """Progress reports change no status, so the record copy lacks the latest: running
        jobs read it from their live record."""
        running = [job for job in jobs if job.status == "running"]
        if not running:
            return
        pipe = self.client.pipeline(transaction=False)
        for job in running:
            pipe.hget(self.transport.prefix + job.id, "progress")
        with self.connection.errors():
            replies = pipe.execute()
        for job, raw in zip(running, replies, strict=True):
            fresh = HistoryJob.from_parts(
                job.id, {"status": "running", "progress": raw}, None, source=self.source
            )
            if fresh is not None and fresh.progress is not None:
                job.progress = fresh.progress

    def job(self, message_id: str) -> HistoryJob | None:
        record_key, stream_key = self.transport.keys(message_id)[:2]
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.entries_key, message_id)
        pipe.hget(self.records_key, message_id)
        pipe.hgetall(record_key)
        with self.connection.errors():
            entry, copy, live = pipe.execute()
        if entry is None and copy is None:
            return None
        record = live or _json(copy) or {}
        job = HistoryJob.from_parts(message_id, record, _json(entry), source=self.source)
        if job is None:
            return None
        job.output = self.output(message_id)
        return job

    def output(self, message_id: str) -> str:
        """Return the tail of a job's output while its events live ("" after)."""
        events = self.transport.read(message_id, 0, block=None, count=self.transport.max_events)
        text = "".join(event.text for event in events if event.kind == "output")
        return text[-OUTPUT_TAIL:]

    def truncated(self, message_id: str) -> bool:
        """Whether events of the job were dropped (its output tail is incomplete)."""
        events = self.transport.read(message_id, 0, block=None, count=2)
        return bool(events) and (events[0].offset > 1 or events[0].kind == "dropped")

    def count(self) -> int:
        """How many jobs the history holds."""
        with self.connection.errors():
            return int(self.client.zcard(self.index_key))

    def version(self) -> int:
        with self.connection.errors():
            raw = self.client.get(self.version_key)
        return int(raw or 0)

    def wait(self, version: int, timeout: float) -> int:
        """Wait on the changes channel until the version moves, or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            with self.connection.errors():
                # Subscribed before the version is read: a change in between is not missed.
                pubsub.subscribe(self.changes_key)
            while True:
                current = self.version()
                remaining = deadline - time.monotonic()
                if current != version or remaining <= 0:
                    return current
                with self.connection.errors():
                    pubsub.get_message(timeout=min(remaining, self.connection.block_limit))
        finally:
            pubsub.close()
