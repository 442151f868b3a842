"""The in-memory result backend, for the in-memory broker and for tests."""

from __future__ import annotations

import threading
import time
import types
from typing import Any

from ...encoder import Encoder
from ...live.memory import MemoryTransport, memory_transport_for
from ...live.retention import Job, Retention
from ..backend import Missing, ResultBackend

__all__ = ["StubBackend"]


class StubBackend(ResultBackend):
    """Keep results in memory, in this process.

    Thread-safe. A blocking ``get_result`` waits on a condition variable and wakes the moment
    the result is stored. TTLs are honoured to the millisecond.

    Unlike Dramatiq's, whose storage is one class-level dict shared by every instance, each
    instance here has its own storage: results then live exactly as long as the broker that
    uses the backend, so re-created brokers (a test, a re-run notebook cell) never see stale
    results. Pass the same instance wherever results are read and written.

    Parameters:
      namespace, encoder, use_namespace_prefix_keys: see ``ResultBackend``.
      retention: the limits on what finished jobs keep, here and in this backend's live
        channel (``nbqueue.live.retention``); ``None`` (the default, as Dramatiq's) keeps every
        result until its TTL. The embedded broker's backend has one.
    """

    def __init__(
        self,
        *,
        namespace: str = "dramatiq-results",
        encoder: Encoder | None = None,
        use_namespace_prefix_keys: bool = False,
        retention: Retention | None = None,
    ) -> None:
        super().__init__(
            namespace=namespace,
            encoder=encoder,
            use_namespace_prefix_keys=use_namespace_prefix_keys,
        )
        #: key -> (encoded value, monotonic expiry time in seconds)
        self.results: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        # One condition per key someone waits on, with its number of waiters, so that storing
        # a result wakes only the callers waiting for it.
        self._waiters: dict[str, tuple[threading.Condition, int]] = {}
        self.retention = retention
        if retention is not None:
            retention.bind_results(self._release)

    def live_transport(
        self, *, namespace: str | None = None, max_events: int = 1000
    ) -> MemoryTransport:
        """The live channel of this backend's messages, in this process (``namespace`` does not
        apply)."""
        return memory_transport_for(self, max_events=max_events, retention=self.retention)

    def _lookup(self, message_key: str) -> bytes | None:
        """Return the encoded value under a key, dropping it if expired. Hold the lock."""
        entry = self.results.get(message_key)
        if entry is None:
            return None
        data, expiry = entry
        if time.monotonic() >= expiry:
            del self.results[message_key]
            if self.retention is not None:
                self.retention.result_bytes -= len(data)
            return None
        return data

    def _release(self, jobs: list[Job]) -> None:
        """Forget the results of jobs the retention released (nobody can ask for them)."""
        retention = self.retention
        assert retention is not None
        keys = [
            self.build_message_key(
                types.SimpleNamespace(queue_name=queue, actor_name=actor, message_id=message_id)  # type: ignore[arg-type]
            )
            for message_id, queue, actor in jobs
        ]
        with self._lock:
            for key in keys:
                if key not in self._waiters and (entry := self.results.pop(key, None)):
                    retention.result_bytes -= len(entry[0])

    def _get(self, message_key: str) -> Any:
        with self._lock:
            data = self._lookup(message_key)
        if data is None:
            return Missing
        return self.encoder.decode(data)

    def _store(self, message_key: str, result: Any, ttl: int) -> None:
        data = self.encoder.encode(result)
        with self._lock:
            if self.retention is not None:
                old = self.results.get(message_key)
                self.retention.result_bytes += len(data) - (len(old[0]) if old else 0)
            self.results[message_key] = (data, time.monotonic() + ttl / 1000)
            waiting = self._waiters.get(message_key)
            if waiting is not None:
                waiting[0].notify_all()

    def _wait(self, message_key: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self._lock:
            condition, count = self._waiters.get(message_key) or (
                threading.Condition(self._lock),
                0,
            )
            self._waiters[message_key] = (condition, count + 1)
            try:
                while (data := self._lookup(message_key)) is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return Missing
                    condition.wait(remaining)
            finally:
                condition, count = self._waiters[message_key]
                if count <= 1:
                    del self._waiters[message_key]
                else:
                    self._waiters[message_key] = (condition, count - 1)
        return self.encoder.decode(data)

    def flush(self) -> None:
        """Drop every stored result."""
        with self._lock:
            self.results.clear()
            if self.retention is not None:
                self.retention.result_bytes = 0
