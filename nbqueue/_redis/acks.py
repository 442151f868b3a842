"""Acknowledgements for the Redis broker, written in the background and in batches.

A worker thread that finished a message hands its ack over and takes the next message; one
thread per broker writes every ack that piled up meanwhile in one script call per queue. An
ack that cannot be written (Redis down) is retried until it is; the broker keeps heartbeating
while acks are pending, so those messages are not recovered by others meanwhile. If the process
dies first, they are redelivered after the heartbeat timeout, as with any at-least-once broker.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ..errors import BrokerError
from .client import as_text
from .keys import WAKE_CAP, WAKE_TTL

if TYPE_CHECKING:
    from .service import BrokerService

__all__ = ["Acker"]

#: How long the thread lingers without work before it exits, in seconds.
IDLE_EXIT = 5.0


class Acker:
    """Writes acks for one broker from a background thread.

    Parameters:
      service: the broker's service, which tracks the messages held until their ack is written.
    """

    def __init__(self, service: BrokerService) -> None:
        self.service = service
        self.logger = logging.getLogger("nbqueue.broker.RedisBroker.acks")
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._pending: dict[str, list[str]] = {}
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._keys: dict[str, list[str]] = {}
        self._quiet_until = 0.0

    def submit(self, queue: str, rid: str) -> None:
        """Queue an ack; it is written within about one round trip."""
        with self._lock:
            self._pending.setdefault(queue, []).append(rid)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run,
                    name=f"nbqueue-redis-acks-{self.service.broker.broker_id[:8]}",
                    daemon=True,
                )
                self._thread.start()
            elif not self._busy:
                self._wake.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until every ack submitted so far is written.

        Parameters:
          timeout: in seconds.

        Returns:
          Whether everything was written in time.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float) -> None:
        """Write what is pending (up to ``timeout`` seconds), then give up on the rest."""
        if not self.flush(timeout):
            self.logger.warning(
                "Could not write every acknowledgement before closing; those messages are "
                "redelivered once this worker's heartbeat times out."
            )
        with self._lock:
            self._closing = True
            self._wake.notify()

    def _run(self) -> None:
        failures = 0
        while True:
            with self._lock:
                while not self._pending:
                    if self._closing or not self._wake.wait(IDLE_EXIT):
                        if not self._pending:
                            self._thread = None
                            self._closing = False
                            self._idle.notify_all()
                            return
                batch, self._pending = self._pending, {}
                self._busy = True
            failed: dict[str, list[str]] = {}
            for queue, rids in batch.items():
                try:
                    self._write(queue, rids)
                except BrokerError:
                    failed[queue] = rids
                    self._complain()
            with self._lock:
                if failed and not self._closing:
                    for queue, rids in failed.items():
                        self._pending[queue] = rids + self._pending.get(queue, [])
                self._busy = False
                self._idle.notify_all()
            if failed:
                failures += 1
                time.sleep(min(5.0, 0.05 * 2**failures))
            else:
                failures = 0

    def _write(self, queue: str, rids: list[str]) -> None:
        service = self.service
        broker = service.broker
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = broker.keys.ack(queue, broker.broker_id)
        with broker.connection.errors():
            lost = broker.scripts["ack"](keys=keys, args=[WAKE_CAP, WAKE_TTL, *rids])
        service.release(queue, rids)
        for rid in lost:
            broker.logger.warning(
                "Message %s on %r was acknowledged after it had gone back to the queue (its "
                "worker was presumed dead, or stopped while the actor ran); the requeued copy "
                "is dropped unless another worker has taken it already.",
                as_text(rid),
                queue,
            )

    def _complain(self) -> None:
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + 30
            self.logger.warning(
                "Could not write acknowledgements to Redis; retrying until it answers.",
                exc_info=True,
            )
