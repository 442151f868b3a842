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
import weakref
import zoneinfo
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .actor import Actor
    from .broker import Broker

__all__ = ["Rule", "Schedule", "cron", "every", "schedule", "schedules_of", "unschedule"]


class Rule(abc.ABC):
    """When a schedule's ticks fall; every time is in milliseconds since the epoch (UTC)."""

    @abc.abstractmethod
    def after(self, when: int) -> int:
        """Return the first tick strictly after ``when`` (ms since the epoch)."""

    def __str__(self) -> str:
        return repr(self)


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
    return entry


def unschedule(broker: Broker, name: str) -> None:
    """Forget the schedule ``name`` on ``broker`` (its workers stop sending it within 1 s)."""
    with _lock:
        _registry.get(broker, {}).pop(name, None)


def schedules_of(broker: Broker) -> list[Schedule]:
    """Return the schedules declared on ``broker``, by name."""
    with _lock:
        return sorted(_registry.get(broker, {}).values(), key=lambda s: s.name)
