"""The scheduler thread of a worker: it sends the ticks of the schedules the worker takes part in.

There is no scheduler process. Every ``Worker`` whose queues include a scheduled actor starts
one ``Scheduler`` thread with its consumers and stops it with them; a worker started before
its first schedule was declared (the notebook's embedded worker) starts it then: declaring,
replacing or removing a schedule wakes the thread (``schedules.subscribe``), nothing polls.
At each tick every such thread of the fleet asks the store (``TickClaims``, found through
``Services.tick_claims()``: the broker's, else its result backend's) to claim the tick; the one
that wins sends the message, with the option ``scheduled_at`` (the tick, ms since the epoch)
and the message id ``tick_message_id(name, tick)``, then confirms the send.

A claim holds for ``LEASE`` ms. A thread that lost a tick to a claimant that has not confirmed
yet asks again when that lease ends; if the claimant still has not confirmed (it was killed
between claim and send), the thread takes the tick over and sends it, under the same message
id: a tick is not lost with its sender, and a sender that was only slow makes the same message
twice, which at-least-once delivery allows anyway.

Ticks missed (no worker alive, a suspended process) are skipped, except that the latest one
within ``Schedule.misfire_grace`` ms runs once when a worker boots or wakes. A thread that
wakes late still sends a tick up to ``LATENESS`` ms old: a busy machine delays, it does not
lose ticks. A schedule paused in the store (``TickClaims.set_paused``) claims no tick, on any
worker; its ticks are skipped, not caught up on resume.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any

from .errors import NbqueueError, SchedulesUnavailable
from .logging import get_logger
from .schedules import Schedule, schedules_of, tick_message_id
from .services import LOST, PAUSED

if TYPE_CHECKING:
    from .broker import Broker
    from .services import TickClaims
    from .worker import Worker

__all__ = ["LATENESS", "LEASE", "Scheduler", "find_tick_claims", "schedules"]

#: How late a live scheduler may send a tick, in milliseconds: a tick older than this (and than
#: its schedule's misfire_grace) when the thread wakes is a missed tick.
LATENESS = 5000

#: How long a claim holds without a confirmed send, in milliseconds; then another worker may
#: take the tick over.
LEASE = 5000

#: The longest the thread sleeps between looks at the clock, in seconds: the schedules wake it
#: when they change, this only bounds the effect of a wall-clock jump.
MAX_SLEEP = 60.0

#: How soon the thread tries again after the store did not answer, in seconds.
RETRY = 0.2

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


@dataclasses.dataclass
class _Recheck:
    """A tick lost to a claimant that had not confirmed: ask again at ``at`` (ms)."""

    tick: int
    at: int
    attempts: int = 1


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
        #: how long this thread's claims hold unconfirmed, in ms
        self.lease = LEASE
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        #: per schedule name: every tick at or before this (ms) is dealt with
        self._cursors: dict[str, int] = {}
        #: per schedule name: the ticks lost to claims not confirmed yet, to ask about again
        self._rechecks: dict[str, list[_Recheck]] = {}

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

    def wake(self) -> None:
        """Look at the schedules now (one was declared, replaced or removed)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread; waits at most ``STOP_WAIT`` seconds."""
        self._stop_event.set()
        self._wake.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(STOP_WAIT)

    def describe(self) -> list[str]:
        """Return one line per schedule: name, rule, next run and last run (UTC, ISO 8601).

        Reads the last runs from the store; a store that cannot be read shows ``unknown``.
        """
        lines = []
        now = now_ms()
        for entry in schedules(self.worker):
            paused = ""
            try:
                state = self.claims.state(entry.name)
                last = _iso(state.last_run) if state is not None and state.last_run else "never"
                paused = " paused" if state is not None and state.paused else ""
            except NbqueueError:
                last = "unknown"
            lines.append(
                f"{entry.name} {entry.rule} next-run {_iso(entry.rule.after(now))} "
                f"last-run {last}{paused}"
            )
        return lines

    def run(self) -> None:
        while not self._stop_event.is_set():
            self._wake.clear()  # before the step: a wake during it makes the next one at once
            try:
                wait = self._step()
            except Exception:
                self.logger.exception("The scheduler failed; it tries again in 1 s.")
                wait = 1.0
            self._wake.wait(wait)

    def _step(self) -> float:
        """Send what is due; return how long to sleep, in seconds."""
        now = now_ms()
        due = now + int(MAX_SLEEP * 1000)
        current = schedules(self.worker)
        names = {entry.name for entry in current}
        for gone in (self._cursors, self._rechecks):
            for name in [n for n in gone if n not in names]:
                del gone[name]
        for entry in current:
            waiting = self._rechecks.get(entry.name, [])
            for recheck in [r for r in waiting if r.at <= now]:
                waiting.remove(recheck)
                if not self._claim(entry, recheck.tick, recheck.attempts + 1):
                    waiting.append(recheck)
                    return RETRY
            # A schedule first seen (at boot) has missed every tick before now, except those
            # its misfire_grace lets run.
            cursor = self._cursors.setdefault(entry.name, now - entry.misfire_grace)
            tick = entry.rule.after(cursor)
            if tick <= now:
                if not self._fire(entry, cursor, now):
                    return RETRY  # the store did not answer: try again soon
                self._cursors[entry.name] = now
                tick = entry.rule.after(now)
            due = min([due, tick, *(r.at for r in self._rechecks.get(entry.name, []))])
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
        return self._claim(entry, latest, 1)

    def _claim(self, entry: Schedule, tick: int, attempts: int) -> bool:
        """Claim ``tick`` and send it if this thread wins; remember to ask again when it is
        lost to an unconfirmed claim. Returns ``False`` when the store could not be asked."""
        message_id = tick_message_id(entry.name, tick)
        try:
            claim = self.claims.claim(
                entry.name,
                tick,
                entry.rule.after(tick),
                self.worker.worker_id,
                message_id=message_id,
                lease=self.lease,
            )
        except NbqueueError as e:
            self.logger.warning("Schedule %r: could not claim tick %d: %s", entry.name, tick, e)
            return False
        if claim.outcome == LOST:
            if claim.retry_at is not None and attempts < 20:
                # At least 100 ms on: the store's clock may run behind this machine's.
                at = max(claim.retry_at, now_ms() + 100) + 50
                waiting = self._rechecks.setdefault(entry.name, [])
                if len(waiting) < 100:
                    waiting.append(_Recheck(tick, at, attempts))
            return True
        if claim.outcome == PAUSED:
            return True
        if claim.taken_over:
            self.logger.warning(
                "Schedule %r: tick %s was claimed by a worker that did not send it in %d ms; "
                "this one sends it (message %s).",
                entry.name,
                _iso(tick),
                self.lease,
                message_id,
            )
        if self._send(entry, tick, message_id):
            try:
                self.claims.confirm(entry.name, tick)
            except NbqueueError as e:
                self.logger.warning(
                    "Schedule %r: tick %s was sent but not confirmed (%s); another worker may "
                    "send it again as the same message.",
                    entry.name,
                    _iso(tick),
                    e,
                )
        return True

    def _send(self, entry: Schedule, tick: int, message_id: str) -> bool:
        try:
            actor: Any = self.broker.get_actor(entry.actor_name)
            message = actor.message_with_options(
                args=entry.args, kwargs=entry.kwargs, scheduled_at=tick
            )
            self.broker.enqueue(dataclasses.replace(message, message_id=message_id))
            return True
        except Exception:
            # Unconfirmed: another worker takes the tick over once the lease ends.
            self.logger.exception(
                "Schedule %r: tick %s was claimed but its message could not be sent; another "
                "worker sends it once the claim's lease (%d ms) ends.",
                entry.name,
                _iso(tick),
                self.lease,
            )
            return False


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
