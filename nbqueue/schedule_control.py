"""Looking at and steering schedules: what ``%nbqueue schedules`` and the Jobs sidebar use.

``list_schedules()`` describes every schedule declared on a broker in this process: its rule,
its next run, and its last run read from the store every worker of the fleet shares (the
``TickClaims`` of the broker or of its result backend), with that run's status read from the
live channel (``nbqueue.live.status`` of the tick's message id). ``pause_schedule`` and
``resume_schedule`` set the paused flag in that store, so they hold for every worker that
shares it (a Redis store: the whole fleet; the in-memory broker: this process).
``remove_schedule`` forgets a schedule here, clears its record in the store (its pause
too) and, for a schedule published with a notebook actor (``%%actor --remote --every``),
publishes the actor again without it, so the ``--notebook-actors`` workers drop it too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .broker import Broker, get_broker
from .errors import LiveUnavailable, SchedulesUnavailable
from .live import status as live_status
from .remote import RemoteActor
from .remote.publish import unpublish_schedule
from .scheduler import find_tick_claims, now_ms
from .schedules import Rule, Schedule, rule_from_spec, schedules_of, tick_message_id, unschedule
from .services import TickClaims
from .worker import workers

__all__ = [
    "ScheduleInfo",
    "fleet_schedules",
    "list_schedules",
    "pause_schedule",
    "remove_schedule",
    "resume_schedule",
]


@dataclasses.dataclass(frozen=True)
class ScheduleInfo:
    """One schedule as ``list_schedules()`` describes it (times in ms since the epoch).

    Attributes:
      name, actor_name, queue_name, rule, args, kwargs, misfire_grace: its declaration.
      next_run: its next tick; ``None`` while paused.
      last_run: the last tick a worker of the fleet claimed; ``None`` when none did yet.
      last_message_id: that tick's message.
      last_status: that message's status (``"enqueued"``, ``"running"``, ``"succeeded"``,
        ``"failed"`` ...), ``None`` when unknown (no live channel, or the record expired).
      paused: paused in the store, for every worker sharing it.
      remote: published with a notebook actor, run by ``--notebook-actors`` workers.
    """

    name: str
    actor_name: str
    queue_name: str
    rule: Rule
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    misfire_grace: int
    next_run: int | None
    last_run: int | None
    last_message_id: str | None
    last_status: str | None
    paused: bool
    remote: bool

    def to_json(self) -> dict[str, Any]:
        """The Jobs sidebar's ``schedules`` row (``nbqueue/lab/API.md``)."""
        return {
            "name": self.name,
            "actor": self.actor_name,
            "rule": str(self.rule),
            "next_run": self.next_run,
            "last_run": self.last_run,
            "last_status": self.last_status,
            "paused": self.paused,
        }


def _claims(broker: Broker) -> TickClaims:
    claims = find_tick_claims(broker)
    if claims is None:
        raise SchedulesUnavailable(
            f"{broker!r} has no store for schedules; add a Results middleware with a "
            f"RedisBackend or connect to redis://..."
        )
    return claims


def _find(broker: Broker, name: str) -> Schedule:
    for entry in schedules_of(broker):
        if entry.name == name:
            return entry
    known = ", ".join(entry.name for entry in schedules_of(broker)) or "none"
    raise ValueError(f"No schedule named {name!r} (schedules: {known}); check the name.")


def list_schedules(broker: Broker | None = None) -> list[ScheduleInfo]:
    """Describe every schedule declared on ``broker`` (default: the global broker), by name.

    Raises:
      SchedulesUnavailable: the broker has schedules and no store for them.
      BrokerConnectionError, BrokerError: the store could not be read.
    """
    target = broker or get_broker()
    declared = schedules_of(target)
    if not declared:
        return []
    claims = _claims(target)
    now = now_ms()
    return [
        _describe(
            entry,
            claims,
            target,
            now,
            remote=isinstance(target.actors.get(entry.actor_name), RemoteActor),
        )
        for entry in declared
    ]


def fleet_schedules(broker: Broker | None = None) -> list[ScheduleInfo]:
    """Describe the schedules the live workers of ``broker``'s fleet take part in, by name,
    from their heartbeat records (``nbqueue.workers()``): what a process that declares no
    schedule itself shows, the Jobs sidebar's server for one. Last runs and pauses are read from
    the store the fleet shares; ``remote`` is ``False`` (a heartbeat does not say).

    Raises:
      BrokerError: the broker keeps no worker registry.
      SchedulesUnavailable: the workers have schedules and the broker no store for them.
      BrokerConnectionError: the registry or the store could not be read.
    """
    target = broker or get_broker()
    declared: dict[str, Schedule] = {}
    for info in workers(target):
        for ref in info.schedules:
            if ref.name in declared:
                continue
            try:
                rule = rule_from_spec(ref.rule)
            except (TypeError, ValueError):
                continue  # a rule this version cannot read: shown by the workers that can
            declared[ref.name] = Schedule(
                name=ref.name,
                actor_name=ref.actor_name,
                queue_name=ref.queue_name,
                rule=rule,
                args=tuple(ref.args),
                kwargs=dict(ref.kwargs),
                misfire_grace=ref.misfire_grace,
            )
    if not declared:
        return []
    claims = _claims(target)
    now = now_ms()
    return [_describe(entry, claims, target, now, remote=False) for entry in declared.values()]


def _describe(
    entry: Schedule, claims: TickClaims, broker: Broker, now: int, *, remote: bool
) -> ScheduleInfo:
    state = claims.state(entry.name)
    paused = state is not None and state.paused
    last = state.last_run if state is not None and state.last_run else None
    message_id = None
    status = None
    if last is not None and state is not None:
        message_id = state.message_id or tick_message_id(entry.name, last)
        try:
            record = live_status(message_id, broker=broker)
        except LiveUnavailable:
            record = None
        if record is not None:
            status = record.status.value
        elif not state.confirmed:
            status = "claimed"
    return ScheduleInfo(
        name=entry.name,
        actor_name=entry.actor_name,
        queue_name=entry.queue_name,
        rule=entry.rule,
        args=entry.args,
        kwargs=dict(entry.kwargs),
        misfire_grace=entry.misfire_grace,
        next_run=None if paused else entry.rule.after(now),
        last_run=last,
        last_message_id=message_id,
        last_status=status,
        paused=paused,
        remote=remote,
    )


def pause_schedule(name: str, broker: Broker | None = None) -> None:
    """Pause the schedule ``name`` for every worker sharing the broker's store: no tick of it
    is sent until ``resume_schedule``; the ticks in between are skipped. The schedule may be
    one declared in another process of the fleet, if it ran already.

    Raises:
      ValueError: no schedule of that name is declared here or recorded in the store.
      SchedulesUnavailable, BrokerConnectionError, BrokerError: see ``list_schedules``.
    """
    _set_paused(name, broker or get_broker(), True)


def _set_paused(name: str, broker: Broker, paused: bool) -> None:
    claims = _claims(broker)
    if not any(entry.name == name for entry in schedules_of(broker)):
        if claims.state(name) is None:
            _find(broker, name)  # raises, naming the schedules declared here
    claims.set_paused(name, paused)


def resume_schedule(name: str, broker: Broker | None = None) -> None:
    """Resume the schedule ``name`` after ``pause_schedule``: its next tick runs.

    Raises:
      ValueError, SchedulesUnavailable, BrokerConnectionError, BrokerError: as for
        ``pause_schedule``.
    """
    _set_paused(name, broker or get_broker(), False)


def remove_schedule(
    name: str, broker: Broker | None = None, *, secret: bytes | None = None
) -> None:
    """Remove the schedule ``name``: this process's workers stop sending it at once, its
    record in the store (its pause too) is cleared, and a schedule published with a notebook
    actor is published again without it, which ends it on the ``--notebook-actors`` workers.
    The actor stays.

    Parameters:
      secret: the shared secret to republish with (default ``NBQUEUE_SECRET``).

    Raises:
      ValueError: no such schedule, or a published one and no secret.
      SchedulesUnavailable, BrokerConnectionError, BrokerError: see ``list_schedules``.
    """
    target = broker or get_broker()
    entry = _find(target, name)
    actor = target.actors.get(entry.actor_name)
    if isinstance(actor, RemoteActor):
        unpublish_schedule(actor, secret=secret)
    unschedule(target, entry.name)
    claims = find_tick_claims(target)
    if claims is not None:
        claims.forget(entry.name)
