"""The scheduler thread of a worker: it sends the ticks of the schedules the worker takes part in.

There is no scheduler process. Every ``Worker`` whose queues include a scheduled actor starts
one ``Scheduler`` thread with its consumers and stops it with them. At each tick every such
thread of the fleet asks the store (``TickClaims``, found through ``Services.tick_claims()``:
the broker's, else its result backend's) to claim the tick; the one that wins sends the
message, with the option ``scheduled_at`` (the tick, ms since the epoch).

Ticks missed (no worker alive, a suspended process) are skipped, except that the latest one
within ``Schedule.misfire_grace`` ms runs once when a worker boots or wakes. A thread that
wakes late still sends a tick up to ``LATENESS`` ms old: a busy machine delays, it does not
lose ticks.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from .errors import NbqueueError, SchedulesUnavailable
from .logging import get_logger
from .schedules import Schedule, schedules_of

if TYPE_CHECKING:
    from .broker import Broker
    from .services import TickClaims
    from .worker import Worker

__all__ = ["LATENESS", "Scheduler", "find_tick_claims"]

#: How late a live scheduler may send a tick, in milliseconds: a tick older than this (and than
#: its schedule's misfire_grace) when the thread wakes is a missed tick.
LATENESS = 5000

#: The longest the thread sleeps between looks at the schedules, in seconds (a schedule
#: declared or removed while the worker runs is noticed within this).
POLL = 1.0

#: How long ``stop()`` waits for the thread, in seconds; a broker call in flight keeps only its
#: own (daemon) thread, never the worker's shutdown.
STOP_WAIT = 0.5


def now_ms() -> int:
    """The wall clock in milliseconds since the epoch: ticks are wall-clock times."""
    return time.time_ns() // 1_000_000


def find_tick_claims(broker: Broker) -> TickClaims | None:
    """Return the claims of ``broker``'s store: its own, else those of its result backend."""
    claims = broker.tick_claims()
    if claims is not None:
        return claims
    try:
        backend = broker.get_results_backend()
    except RuntimeError:  # no Results middleware
        return None
    return backend.tick_claims()


class Scheduler(threading.Thread):
    """Sends the ticks of ``worker``'s schedules that this thread claims.

    Parameters:
      worker: the worker it belongs to; its broker's schedules on its queues take part.
      claims: where ticks are claimed.
    """

    def __init__(self, worker: Worker, claims: TickClaims) -> None:
        super().__init__(name="nbqueue-scheduler", daemon=True)
        self.worker = worker
        self.broker = worker.broker
        self.claims = claims
        self.logger = get_logger(__name__, type(self))
        self._stop_event = threading.Event()
        #: per schedule name: every tick at or before this (ms) is dealt with
        self._cursors: dict[str, int] = {}

    @classmethod
    def for_worker(cls, worker: Worker) -> Scheduler | None:
        """Return the scheduler ``worker`` needs, or ``None`` when it takes part in no schedule.

        Raises:
          SchedulesUnavailable: the worker has schedules and its broker no store to claim
            their ticks in.
        """
        if not schedules(worker):
            return None
        claims = find_tick_claims(worker.broker)
        if claims is None:
            raise SchedulesUnavailable(
                f"{worker.broker!r} has no store to claim schedule ticks in, so it cannot run "
                f"schedules; add a Results middleware with a RedisBackend (what `nbqueue worker "
                f"--broker amqp://...` does with NBQUEUE_RESULTS_URL=redis://...) or use a "
                f"RedisBroker."
            )
        return cls(worker, claims)

    def stop(self) -> None:
        """Stop the thread; waits at most ``STOP_WAIT`` seconds."""
        self._stop_event.set()
        if self.is_alive():
            self.join(STOP_WAIT)

    def describe(self) -> list[str]:
        """Return one line per schedule: name, rule, next run and last run (UTC, ISO 8601).

        Reads the last runs from the store; a store that cannot be read shows ``unknown``.
        """
        lines = []
        now = now_ms()
        for entry in schedules(self.worker):
            try:
                state = self.claims.state(entry.name)
                last = _iso(state.last_run) if state is not None else "never"
            except NbqueueError:
                last = "unknown"
            lines.append(
                f"{entry.name} {entry.rule} next-run {_iso(entry.rule.after(now))} last-run {last}"
            )
        return lines

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                wait = self._step()
            except Exception:
                self.logger.exception("The scheduler failed; it tries again in 1 s.")
                wait = POLL
            self._stop_event.wait(wait)

    def _step(self) -> float:
        """Send what is due; return how long to sleep, in seconds."""
        now = now_ms()
        due = now + int(POLL * 1000)
        current = schedules(self.worker)
        names = {entry.name for entry in current}
        for name in [n for n in self._cursors if n not in names]:
            del self._cursors[name]
        for entry in current:
            # A schedule first seen (at boot) has missed every tick before now, except those
            # its misfire_grace lets run.
            cursor = self._cursors.setdefault(entry.name, now - entry.misfire_grace)
            tick = entry.rule.after(cursor)
            if tick <= now:
                if self._fire(entry, cursor, now):
                    self._cursors[entry.name] = now
                    tick = entry.rule.after(now)
                else:
                    return 0.2  # the store did not answer: try again soon
            due = min(due, tick)
        if self._stop_event.is_set():
            return 0.0
        return max(0.0, (due - now_ms()) / 1000)

    def _fire(self, entry: Schedule, cursor: int, now: int) -> bool:
        """Claim and send the latest tick of ``entry`` in (cursor, now] that is not too old;
        return ``False`` when the store could not be asked (the ticks stay due)."""
        start = max(cursor, now - max(entry.misfire_grace, LATENESS))
        latest, skipped = None, entry.rule.after(cursor) <= start
        tick = entry.rule.after(start)
        while tick <= now:
            skipped = skipped or latest is not None
            latest, tick = tick, entry.rule.after(tick)
        if skipped:
            self.logger.warning(
                "Schedule %r: skipped the ticks missed before %s (misfire_grace=%d ms).",
                entry.name,
                _iso(latest if latest is not None else now),
                entry.misfire_grace,
            )
        if latest is None:
            return True
        try:
            claimed = self.claims.claim(
                entry.name, latest, entry.rule.after(latest), self.worker.worker_id
            )
        except NbqueueError as e:
            self.logger.warning("Schedule %r: could not claim tick %d: %s", entry.name, latest, e)
            return False
        if claimed:
            self._send(entry, latest)
        return True

    def _send(self, entry: Schedule, tick: int) -> None:
        try:
            actor: Any = self.broker.get_actor(entry.actor_name)
            actor.send_with_options(args=entry.args, kwargs=entry.kwargs, scheduled_at=tick)
        except Exception:
            # The tick is claimed: no other worker sends it, so say plainly that it is lost.
            self.logger.exception(
                "Schedule %r: tick %s was claimed but its message could not be sent; it is "
                "lost, the next tick runs as usual.",
                entry.name,
                _iso(tick),
            )


def schedules(worker: Worker) -> list[Schedule]:
    """Return the schedules ``worker`` takes part in: its broker's, for actors it has on queues
    it consumes."""
    wanted = worker.consumer_whitelist
    return [
        entry
        for entry in schedules_of(worker.broker)
        if entry.actor_name in worker.broker.actors
        and (wanted is None or entry.queue_name in wanted)
    ]


def _iso(when: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when / 1000))
