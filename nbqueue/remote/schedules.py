"""Schedules published with notebook actors, run by ``--notebook-actors`` workers.

``%%actor --remote --every 10m`` (or ``publish_actor(fn, periodic=...)``) puts the schedule in
the actor's signed record (``CodeRecord.schedule``). A worker started with ``--notebook-actors``
reads the store's index when it boots and every ``REFRESH`` seconds after: for the latest
version of each actor on a queue it consumes, it verifies the record (the same secret and
checks as any version it runs), loads it and declares its schedule on the worker's broker, so
its scheduler takes part in the ticks with every other such worker (``nbqueue.scheduler``)
whether or not the notebook still runs. A newer version published without a schedule, or with
another one, replaces it. A record that fails verification is logged once and skipped.

The index is re-read on a timer because nothing tells a worker process that another process
published: one read of the index per ``REFRESH``, and a fetch only for versions not seen yet.
Pausing is not published: it is the store's (``TickClaims.set_paused``), so it holds at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import NbqueueError
from ..middleware.base import Middleware
from ..schedules import rule_from_spec, schedule, schedules_of, unschedule
from .signing import verify

if TYPE_CHECKING:
    from ..broker import Broker
    from .loader import CodeLoader
    from .store import CodeStore

__all__ = ["REFRESH", "RemoteSchedules"]

#: How often a notebook-actor worker reads the index for new schedules, in seconds.
REFRESH = 2.0

logger = logging.getLogger("nbqueue.remote")


class RemoteSchedules(Middleware):
    """Declares the schedules of published notebook actors on a worker's broker (module
    docstring).

    Parameters:
      broker: the worker's broker.
      store: the published actors.
      loader: what loads a version (the worker's ``CodeLoader``).
      secret: the shared secret records are verified with.
      queues: the queues the worker consumes; ``None`` means all.
      refresh: seconds between reads of the index.
    """

    def __init__(
        self,
        broker: Broker,
        store: CodeStore,
        loader: CodeLoader,
        secret: bytes,
        *,
        queues: Sequence[str] | None,
        refresh: float = REFRESH,
    ) -> None:
        self.broker = broker
        self.store = store
        self.loader = loader
        self._secret = secret
        self.queues = set(queues) if queues is not None else None
        self.refresh_every = refresh
        #: (queue, actor) -> (the version seen last, the schedule name it declared or None)
        self._seen: dict[tuple[str, str], tuple[str, str | None]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read the index and declare, replace or end the published schedules now.

        Raises:
          BrokerConnectionError, BrokerError: the store could not be read.
        """
        with self._lock:
            for entry in self.store.published():
                if self.queues is not None and entry.queue_name not in self.queues:
                    continue
                key = (entry.queue_name, entry.actor_name)
                seen = self._seen.get(key)
                if seen is not None and seen[0] == entry.code_hash:
                    continue
                previous = seen[1] if seen is not None else None
                name = self._declare(entry.code_hash, entry.actor_name)
                self._seen[key] = (entry.code_hash, name)
                if previous is not None and previous != name:
                    declared = {s.name: s for s in schedules_of(self.broker)}
                    if previous in declared and declared[previous].actor_name == entry.actor_name:
                        unschedule(self.broker, previous)
                        logger.info("Schedule %r ended: its actor was republished.", previous)

    def _declare(self, code_hash: str, actor_name: str) -> str | None:
        """Declare the schedule of one version; return its name, or ``None`` when it has none
        (or cannot be loaded)."""
        try:
            envelope = self.store.get(code_hash)
            if envelope is None:
                return None
            record = verify(envelope, self._secret, code_hash)
            spec: Any = record.schedule
            if spec is None:
                return None
            rule = rule_from_spec(spec.get("rule"))
            actor = self.loader.load(code_hash, actor_name)
            entry = schedule(
                actor,
                rule,
                name=str(spec.get("name") or actor_name),
                misfire_grace=int(spec.get("misfire_grace") or 0),
            )
        except NbqueueError as e:
            logger.error(
                "Published schedule of %r version %s skipped: %s", actor_name, code_hash[:12], e
            )
            return None
        except (ValueError, TypeError, AttributeError) as e:
            logger.error(
                "Published schedule of %r version %s is malformed and skipped: %s",
                actor_name,
                code_hash[:12],
                e,
            )
            return None
        logger.info(
            "Schedule %r of notebook actor %r (%s) declared from version %s.",
            entry.name,
            actor_name,
            entry.rule,
            code_hash[:12],
        )
        return entry.name

    # -- the refresh thread, tied to the worker's life -------------------------------------------

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        if self._thread is not None:
            return
        try:
            self.refresh()  # before the boot ends, so that `nbqueue worker` lists them
        except NbqueueError:
            logger.warning("Could not read the published schedules yet.", exc_info=True)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="nbqueue-remote-schedules", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_every):
            try:
                self.refresh()
            except Exception:
                logger.warning("Could not read the published schedules.", exc_info=True)
