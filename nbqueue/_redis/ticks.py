"""Schedule tick claims in Redis: one hash per schedule, claimed by a Lua script.

The state of the schedule ``name`` is the hash ``<prefix><name>`` (by default the prefix is
``<namespace>:__nbq__:schedules:``, ``RedisKeys.schedules``) with the fields ``last`` (the last
claimed tick, ms since the epoch), ``next`` (the tick after it) and ``worker`` (who claimed).
``claim_tick.lua`` claims a tick only when it is later than ``last``, and records it in the
same step: one round trip, atomic on the server, so one worker of a fleet wins each tick. The
hash expires ``STATE_TTL`` ms after its next tick, so a removed schedule leaves nothing behind.
"""

from __future__ import annotations

from typing import Any

from ..services import ScheduleState, TickClaims
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
        self._script = load_script(connection.client, "claim_tick")

    def __repr__(self) -> str:
        return f"RedisTickClaims({self.connection.where!r}, prefix={self.prefix!r})"

    def claim(self, name: str, tick: int, next_tick: int, worker_id: str) -> bool:
        """Claim ``tick`` of ``name``; see ``TickClaims.claim``."""
        with self.connection.errors():
            reply: Any = self._script(
                keys=[self.prefix + name], args=[tick, next_tick, worker_id, STATE_TTL]
            )
        return int(reply) == 1

    def state(self, name: str) -> ScheduleState | None:
        """Return the recorded state of ``name``; see ``TickClaims.state``."""
        with self.connection.errors():
            fields: dict[Any, Any] = self.connection.client.hgetall(self.prefix + name)
        values = {as_text(k): as_text(v) for k, v in fields.items()}
        if "last" not in values:
            return None
        return ScheduleState(
            last_run=int(values["last"]),
            next_run=int(values.get("next", values["last"])),
            worker_id=values.get("worker", ""),
        )
