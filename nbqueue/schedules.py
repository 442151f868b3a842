"""Periodic actors: the rules (``every``, ``cron``) and the schedules declared with them.

A schedule sends one message to an actor at every tick of its rule. Every worker that consumes
the actor's queue takes part (``nbqueue.scheduler``): each tick is named by the schedule's name
and its scheduled time in milliseconds since the epoch, and claimed in the broker's store
(``Services.tick_claims()``), so exactly one worker of the fleet sends it. The message carries
the option ``scheduled_at`` (ms), the tick it is.

``every(ms)`` needs nothing installed; ``cron(...)`` needs cronsim (``pip install
'nbqueue[schedules]'``), which follows Debian's cron on daylight-saving days: a time skipped
when clocks go forward runs right after the change, and a daily time repeated when they go back
runs once (rules with ``*`` hours run in both repeated hours, as cron does).
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import threading
import uuid
import weakref
import zoneinfo
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .actor import Actor
    from .broker import Broker

__all__ = [
    "Rule",
    "Schedule",
    "cron",
    "every",
    "rule_from_spec",
    "schedule",
    "schedules_of",
    "subscribe",
    "tick_message_id",
    "unschedule",
    "unsubscribe",
]

#: The namespace of the message ids of ticks (``tick_message_id``).
_TICK_IDS = uuid.UUID("8a0f5c52-9a43-4c1e-9d0e-6b1f3c1b7e11")


def tick_message_id(name: str, tick: int) -> str:
    """Return the message id of the tick ``tick`` (ms) of the schedule ``name``: the same in
    every process, so a tick sent again after its sender died is the same message."""
    return str(uuid.uuid5(_TICK_IDS, f"{name}\x00{tick}"))


class Rule(abc.ABC):
    """When a schedule's ticks fall; every time is in milliseconds since the epoch (UTC)."""

    @abc.abstractmethod
    def after(self, when: int) -> int:
        """Return the first tick strictly after ``when`` (ms since the epoch)."""

    def __str__(self) -> str:
        return repr(self)

    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """Return the rule as JSON data, what ``rule_from_spec`` reads back."""


def rule_from_spec(spec: Any) -> Rule:
    """Return the rule ``spec`` describes (``{"every": ms}`` or ``{"cron": expression, "tz":
    zone}``, what ``Rule.spec`` returns).

    Raises:
      ValueError: ``spec`` describes no rule.
    """
    if isinstance(spec, dict) and set(spec) == {"every"}:
        return every(spec["every"])
    if isinstance(spec, dict) and set(spec) <= {"cron", "tz"} and isinstance(spec.get("cron"), str):
        return cron(spec["cron"], tz=spec.get("tz"))
    raise ValueError(
        f"Not a schedule rule: {spec!r}; expected {{'every': ms}} or {{'cron': '...', 'tz': ...}}."
    )


@dataclasses.dataclass(frozen=True, repr=False)
class every(Rule):  # noqa: N801 - named like a function, as periodiq's cron()
    """A tick every ``milliseconds``, aligned on the epoch, so that every worker of a fleet
    computes the same ticks: ``every(60000)`` ticks at each minute's start (UTC).

    Parameters:
      milliseconds: the period, at least 1.

    Raises:
      ValueError: the period is not a positive whole number of milliseconds.
    """

    milliseconds: int

    def __post_init__(self) -> None:
        if isinstance(self.milliseconds, bool) or not isinstance(self.milliseconds, int):
            raise ValueError(
                f"every() takes a whole number of milliseconds, got {self.milliseconds!r}; "
                f"write every(5 * 60 * 1000) for five minutes."
            )
        if self.milliseconds < 1:
            raise ValueError(f"every() needs a period of at least 1 ms, got {self.milliseconds}.")

    def after(self, when: int) -> int:
        """Return the first multiple of the period strictly after ``when`` (ms)."""
        return (when // self.milliseconds + 1) * self.milliseconds

    def __repr__(self) -> str:
        return f"every({self.milliseconds})"

    def spec(self) -> dict[str, Any]:
        return {"every": self.milliseconds}


class cron(Rule):  # noqa: N801 - periodiq's name and form
    """A cron rule (5 fields: minute hour day-of-month month day-of-week) in a time zone.

    Parameters:
      expression: e.g. ``"*/5 * * * *"`` or ``"0 9 * * 1-5"``.
      tz: an IANA zone name (``"Europe/Paris"``) or a ``tzinfo``; UTC by default. Ticks follow
        the zone's daylight-saving rules as Debian's cron does (see the module docstring).

    Raises:
      ImportError: cronsim is missing (``pip install 'nbqueue[schedules]'``).
      ValueError: the expression or the zone is invalid.
    """

    def __init__(self, expression: str, tz: str | datetime.tzinfo | None = None) -> None:
        try:
            import cronsim  # the optional extra; only cron rules need it
        except ImportError as e:  # pragma: no cover - exercised without the extra
            raise ImportError(
                "nbqueue.cron() needs the cronsim package: pip install 'nbqueue[schedules]'."
            ) from e
        self._cronsim = cronsim
        self.expression = expression
        if tz is None:
            self.tz: datetime.tzinfo = datetime.timezone.utc
        elif isinstance(tz, str):
            try:
                self.tz = zoneinfo.ZoneInfo(tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
                raise ValueError(
                    f"Unknown time zone {tz!r}; use an IANA name such as 'Europe/Paris' (pip "
                    f"install tzdata where the system has no zone database)."
                ) from e
        else:
            self.tz = tz
        try:
            cronsim.CronSim(expression, datetime.datetime.now(self.tz))
        except cronsim.CronSimError as e:
            raise ValueError(
                f"Invalid cron expression {expression!r}: {e}; write five fields, e.g. "
                f"'*/5 * * * *' (minute hour day-of-month month day-of-week)."
            ) from e

    def after(self, when: int) -> int:
        """Return the first tick strictly after ``when`` (ms), in this rule's zone."""
        start = datetime.datetime.fromtimestamp(when / 1000, self.tz)
        tick = next(self._cronsim.CronSim(self.expression, start))
        return int(tick.timestamp() * 1000)

    def spec(self) -> dict[str, Any]:
        if self.tz is datetime.timezone.utc:
            return {"cron": self.expression}
        return {"cron": self.expression, "tz": str(self.tz)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, cron) and (other.expression, str(other.tz)) == (
            self.expression,
            str(self.tz),
        )

    def __hash__(self) -> int:
        return hash((self.expression, str(self.tz)))

    def __repr__(self) -> str:
        if self.tz is datetime.timezone.utc:
            return f"cron({self.expression!r})"
        return f"cron({self.expression!r}, tz={str(self.tz)!r})"


@dataclasses.dataclass(frozen=True)
class Schedule:
    """One schedule: ``actor_name`` gets a message with ``args`` and ``kwargs`` at every tick.

    ``misfire_grace`` (ms): a tick missed while no worker ran (all stopped, or the process
    suspended) is skipped unless it is at most this old when a worker notices it; then the
    latest such tick runs once. ``0`` skips every missed tick.
    """

    name: str
    actor_name: str
    queue_name: str
    rule: Rule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    misfire_grace: int = 0


_lock = threading.Lock()
_registry: weakref.WeakKeyDictionary[Broker, dict[str, Schedule]] = weakref.WeakKeyDictionary()
_listeners: weakref.WeakKeyDictionary[Broker, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def subscribe(broker: Broker, listener: Callable[[], None]) -> None:
    """Call ``listener()`` (with no lock held, on the declaring thread) each time a schedule
    of ``broker`` is declared, replaced or removed: how a running worker's scheduler learns of
    schedules declared after it started."""
    with _lock:
        _listeners.setdefault(broker, []).append(listener)


def unsubscribe(broker: Broker, listener: Callable[[], None]) -> None:
    """Stop calling ``listener`` (see ``subscribe``)."""
    with _lock:
        listeners = _listeners.get(broker, [])
        if listener in listeners:
            listeners.remove(listener)


def _changed(broker: Broker) -> None:
    with _lock:
        listeners = list(_listeners.get(broker, []))
    for listener in listeners:
        listener()


def schedule(
    actor: Actor[Any, Any],
    rule: Rule,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    *,
    misfire_grace: int = 0,
) -> Schedule:
    """Send ``actor`` a message with ``args``/``kwargs`` at every tick of ``rule``, from the
    workers that consume its queue; returns at once.

    Declaring a schedule again under the same name replaces it (re-running a notebook cell).

    Parameters:
      actor: the actor to send to.
      rule: ``every(ms)`` or ``cron("...", tz=...)``.
      args, kwargs: the arguments of every message; they must be JSON-encodable.
      name: the schedule's name, unique on its broker; by default the actor's name, which is
        also the name the ``periodic=`` option gives. Give each schedule of one actor its own.
      misfire_grace: how old a missed tick may be and still run once, in milliseconds.

    Raises:
      TypeError: ``rule`` is not a rule.
      ValueError: a negative ``misfire_grace``.
    """
    if not isinstance(rule, Rule):
        raise TypeError(
            f"A schedule needs a rule, got {rule!r}; pass nbqueue.every(ms) or "
            f"nbqueue.cron('*/5 * * * *')."
        )
    if misfire_grace < 0:
        raise ValueError(
            f"misfire_grace is in milliseconds and cannot be negative: {misfire_grace}."
        )
    entry = Schedule(
        name=name or actor.actor_name,
        actor_name=actor.actor_name,
        queue_name=actor.queue_name,
        rule=rule,
        args=tuple(args),
        kwargs=dict(kwargs or {}),
        misfire_grace=misfire_grace,
    )
    with _lock:
        _registry.setdefault(actor.broker, {})[entry.name] = entry
    _changed(actor.broker)
    return entry


def unschedule(broker: Broker, name: str) -> bool:
    """Forget the schedule ``name`` on ``broker``: this process's workers stop sending it at
    once. Returns whether there was one."""
    with _lock:
        found = _registry.get(broker, {}).pop(name, None) is not None
    if found:
        _changed(broker)
    return found


def schedules_of(broker: Broker) -> list[Schedule]:
    """Return the schedules declared on ``broker``, by name."""
    with _lock:
        return sorted(_registry.get(broker, {}).values(), key=lambda s: s.name)
