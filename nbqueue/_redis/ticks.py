"""Schedule tick claims in Redis: one hash per schedule, claimed by a Lua script.

The state of the schedule ``name`` is the hash ``<prefix><name>`` (by default the prefix is
``<namespace>:__nbq__:schedules:``, ``RedisKeys.schedules``) with the fields ``last`` (the last
claimed tick, ms since the epoch), ``next`` (the tick after it), ``worker`` (who claimed),
``message`` (the id of the tick's message), ``paused``, and ``p:<tick>`` for each claim not
confirmed yet: until when it holds (by the Redis server's clock).
``claim_tick.lua`` claims a tick only when it is later than ``last``, or takes ``last`` over
(or an earlier pending one) when its claimant did not confirm it before its lease ended, and records it in the same step:
one round trip, atomic on the server, so one worker of a fleet wins each tick.
``confirm_tick.lua`` records the send; ``pause_schedule.lua`` sets or clears ``paused``, which
makes ``claim_tick.lua`` refuse every tick. The hash expires ``STATE_TTL`` ms after its next
tick (never while paused), so a removed schedule leaves nothing behind.
"""

from __future__ import annotations

from typing import Any

from ..services import CLAIMED, LOST, PAUSED, Claim, ScheduleState, TickClaims
from .client import RedisConnection, as_text, load_script

__all__ = ["STATE_TTL", "RedisTickClaims"]

#: How long a schedule's state outlives its next tick, in milliseconds (7 days).
STATE_TTL = 7 * 24 * 3600 * 1000


class RedisTickClaims(TickClaims):
    """Tick claims under ``prefix``, on a Redis connection it shares with its owner (a broker or
    a result backend) and never closes; each call has the connection's deadline."""

    def __init__(self, connection: RedisConnection, prefix: str) -> None:
        self.connection = connection
        self.prefix = prefix
        self._claim = load_script(connection.client, "claim_tick")
        self._confirm = load_script(connection.client, "confirm_tick")
        self._pause = load_script(connection.client, "pause_schedule")

    def __repr__(self) -> str:
        return f"RedisTickClaims({self.connection.where!r}, prefix={self.prefix!r})"

    def claim(
        self,
        name: str,
        tick: int,
        next_tick: int,
        worker_id: str,
        *,
        message_id: str = "",
        lease: int = 5000,
    ) -> Claim:
        """Claim ``tick`` of ``name``; see ``TickClaims.claim``."""
        with self.connection.errors():
            reply: Any = self._claim(
                keys=[self.prefix + name],
                args=[tick, next_tick, worker_id, STATE_TTL, message_id, lease],
            )
        outcome, lease_end = int(reply[0]), int(reply[1])
        if outcome == -1:
            return Claim(PAUSED)
        if outcome == 0:
            return Claim(LOST, retry_at=lease_end or None)
        return Claim(CLAIMED, taken_over=outcome == 2)

    def confirm(self, name: str, tick: int) -> None:
        """Record the send of ``tick``; see ``TickClaims.confirm``."""
        with self.connection.errors():
            self._confirm(keys=[self.prefix + name], args=[tick])

    def set_paused(self, name: str, paused: bool) -> None:
        """Pause or resume ``name`` fleet-wide; see ``TickClaims.set_paused``."""
        with self.connection.errors():
            self._pause(keys=[self.prefix + name], args=[1 if paused else 0, STATE_TTL])

    def forget(self, name: str) -> None:
        """Delete the record of ``name``; see ``TickClaims.forget``."""
        with self.connection.errors():
            self.connection.client.delete(self.prefix + name)

    def state(self, name: str) -> ScheduleState | None:
        """Return the recorded state of ``name``; see ``TickClaims.state``."""
        with self.connection.errors():
            fields: dict[Any, Any] = self.connection.client.hgetall(self.prefix + name)
        values = {as_text(k): as_text(v) for k, v in fields.items()}
        if "last" not in values and "paused" not in values:
            return None
        last = int(values.get("last", 0))
        return ScheduleState(
            last_run=last,
            next_run=int(values.get("next", last)),
            worker_id=values.get("worker", ""),
            message_id=values.get("message", ""),
            confirmed=f"p:{last}" not in values,
            paused="paused" in values,
        )
