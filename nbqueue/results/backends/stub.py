"""The in-memory result backend, for the in-memory broker and for tests."""

from __future__ import annotations

import threading
import time
from typing import Any

from ...encoder import Encoder
from ...live.memory import MemoryTransport, memory_transport_for
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
    """

    def __init__(
        self,
        *,
        namespace: str = "dramatiq-results",
        encoder: Encoder | None = None,
        use_namespace_prefix_keys: bool = False,
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

    def live_transport(
        self, *, namespace: str | None = None, max_events: int = 1000
    ) -> MemoryTransport:
        """The live channel of this backend's messages, in this process (``namespace`` does not
        apply)."""
        return memory_transport_for(self, max_events=max_events)

    def _lookup(self, message_key: str) -> bytes | None:
        """Return the encoded value under a key, dropping it if expired. Hold the lock."""
        entry = self.results.get(message_key)
        if entry is None:
            return None
        data, expiry = entry
        if time.monotonic() >= expiry:
            del self.results[message_key]
            return None
        return data

    def _get(self, message_key: str) -> Any:
        with self._lock:
            data = self._lookup(message_key)
        if data is None:
            return Missing
        return self.encoder.decode(data)

    def _store(self, message_key: str, result: Any, ttl: int) -> None:
        data = self.encoder.encode(result)
        with self._lock:
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
