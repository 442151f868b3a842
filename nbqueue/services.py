"""What a broker's server offers besides queues, asked for instead of testing types.

Features that need more than queues ask the broker or result backend that talks to the server:

* ``live_transport()``: where the live channel (status, progress, output, abort) is kept;
* ``code_store()``: where notebook actors are published (``nbqueue.remote``);
* ``live_namespace()``: the key namespace a broker wants its live records under;
* ``start_counter()``: where ``CrashLimit`` counts the starts of attempts that never finished;
* ``tick_claims()``: where the workers of a fleet claim the ticks of schedules
  (``nbqueue.scheduler``), so that each tick is sent once;
* ``worker_registry()``: where live workers publish what they are and what they run, on a
  heartbeat (``nbqueue.workers()``, ``nbqueue status``).

``Broker`` and ``ResultBackend`` inherit the no-op answers of ``Services`` (``None``: this
server offers no such thing) and each server's classes override what their server has, in the
spirit of kombu's ``Transport.implements``. Nothing else names servers or compares class names.

``CodeStore`` is the contract of a notebook-actor store; ``MemoryCodeStore`` is the in-memory
broker's, and the server packages (``_redis``, ``_rabbitmq``) implement their own.
``StartCounter`` is the contract of the start counters; ``_redis`` implements it.
``TickClaims`` is the contract of the tick claims; ``MemoryTickClaims`` is the in-memory
broker's, ``_redis`` implements it for Redis brokers and Redis result backends.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    from .live.transport import Transport

__all__ = [
    "ANY_ACTOR",
    "CLAIMED",
    "LOST",
    "PAUSED",
    "Claim",
    "CodeStore",
    "MemoryCodeStore",
    "MemoryTickClaims",
    "MemoryWorkerRegistry",
    "Published",
    "RunningMessage",
    "ScheduleState",
    "Services",
    "StartCounter",
    "TickClaims",
    "WorkerInfo",
    "WorkerRegistry",
    "once",
    "sort_workers",
]

T = TypeVar("T")

_once_lock = threading.Lock()


def once(owner: object, attribute: str, make: Callable[[], T]) -> T:
    """Return ``owner.<attribute>``, set to ``make()`` on first use (thread-safe): the one
    service object of its kind per broker or backend."""
    value: T | None = owner.__dict__.get(attribute)
    if value is None:
        with _once_lock:
            value = owner.__dict__.get(attribute)
            if value is None:
                value = make()
                owner.__dict__[attribute] = value
    return value


class Services:
    """The services a server offers besides queues; every answer defaults to ``None``."""

    def live_transport(
        self, *, namespace: str | None = None, max_events: int = 1000
    ) -> Transport | None:
        """Return the transport of the live channel on this server, or ``None``.

        Parameters:
          namespace: the key namespace to use instead of this object's own.
          max_events: how many events a message's stream keeps.
        """
        return None

    def live_namespace(self) -> str | None:
        """Return the namespace under which this broker's live records are kept, or ``None``
        when it has none of its own (the result backend's is used then)."""
        return None

    def code_store(self) -> CodeStore | None:
        """Return the store of published notebook actors on this server, or ``None``."""
        return None

    def start_counter(self, *, prefix: str | None = None) -> StartCounter | None:
        """Return the start counters on this server (what ``CrashLimit`` needs), or ``None``.

        Parameters:
          prefix: the start of every counter's key instead of the server's default.
        """
        return None

    def tick_claims(self) -> TickClaims | None:
        """Return where the ticks of schedules are claimed on this server, or ``None``."""
        return None

    def worker_registry(self) -> WorkerRegistry | None:
        """Return where live workers are registered on this server, or ``None``."""
        return None


#: The capability of a worker that runs any published notebook actor of a queue.
ANY_ACTOR = "*"


@dataclasses.dataclass(frozen=True)
class Published:
    """An index entry: the latest version of an actor, by content hash (ms timestamps)."""

    queue_name: str
    actor_name: str
    code_hash: str
    published_at: int


class CodeStore(abc.ABC):
    """What the loader, the publisher and the capability registry need from a broker's server.

    Every method that talks to a server has a deadline and raises ``BrokerConnectionError``
    (or ``BrokerError``) when the server does not answer in time.
    """

    @abc.abstractmethod
    def put(self, envelope: bytes, entry: Published) -> None:
        """Store a signed envelope under ``entry.code_hash`` and make it the actor's latest."""

    @abc.abstractmethod
    def get(self, code_hash: str) -> bytes | None:
        """Return the envelope stored under ``code_hash``, or ``None`` when there is none."""

    @abc.abstractmethod
    def published(self) -> list[Published]:
        """Return the latest entry of every published actor."""

    @abc.abstractmethod
    def register(self, worker_id: str, capabilities: set[tuple[str, str]], ttl: int) -> None:
        """Record that ``worker_id`` can run these (queue, actor) pairs for ``ttl`` ms more.

        Called again before the ttl passes (the heartbeat); a worker that stops calling it stops
        counting once the ttl has passed.
        """

    @abc.abstractmethod
    def unregister(self, worker_id: str) -> None:
        """Forget every capability of ``worker_id`` now (a clean shutdown)."""

    @abc.abstractmethod
    def capable(self, queue_name: str, actor_names: Iterable[str], *, exclude: str) -> int:
        """Return how many live workers other than ``exclude`` registered one of these actors
        on ``queue_name``."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the store's connections."""


class MemoryCodeStore(CodeStore):
    """The store of the in-memory broker: shared by everything in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._code: dict[str, bytes] = {}
        self._latest: dict[tuple[str, str], Published] = {}
        self._capabilities: dict[tuple[str, str], dict[str, float]] = {}

    def put(self, envelope: bytes, entry: Published) -> None:
        with self._lock:
            self._code[entry.code_hash] = envelope
            self._latest[(entry.queue_name, entry.actor_name)] = entry

    def get(self, code_hash: str) -> bytes | None:
        with self._lock:
            return self._code.get(code_hash)

    def published(self) -> list[Published]:
        with self._lock:
            return list(self._latest.values())

    def register(self, worker_id: str, capabilities: set[tuple[str, str]], ttl: int) -> None:
        expiry = time.monotonic() + ttl / 1000
        with self._lock:
            for capability in capabilities:
                self._capabilities.setdefault(capability, {})[worker_id] = expiry

    def unregister(self, worker_id: str) -> None:
        with self._lock:
            for workers in self._capabilities.values():
                workers.pop(worker_id, None)

    def capable(self, queue_name: str, actor_names: Iterable[str], *, exclude: str) -> int:
        now = time.monotonic()
        live: set[str] = set()
        with self._lock:
            for actor_name in actor_names:
                workers = self._capabilities.get((queue_name, actor_name), {})
                live |= {w for w, expiry in workers.items() if expiry > now and w != exclude}
        return len(live)


class StartCounter(abc.ABC):
    """Counts the starts of message attempts on a server every worker process shares.

    What ``CrashLimit`` needs to recognise a message that kills its worker: a process that dies
    while running an attempt never finishes it, so its start stays counted. A counter is named
    by the attempt (``"<message id>.<retries>"``) and expires ``ttl`` ms after its last start
    unless it is finished first. Every method that talks to the server has a deadline.
    """

    @abc.abstractmethod
    def count(self, name: str, ttl: int, *, first: bool = False) -> int:
        """Count one start of ``name`` and return its starts so far, this one included.

        Blocks for one round trip, shared with the threads counting at the same moment; the
        deletions queued by ``finish`` go with it.

        Parameters:
          name: the attempt.
          ttl: how long the counter lives from now unless finished, in milliseconds.
          first: count the start only if it is the first one recorded. A reply of 1 means it
            was counted; a reply ``n`` above 1 means ``n - 1`` unfinished starts are recorded
            and this one was not counted (what counting it would have returned).

        Raises:
          TimeoutError: the start could not be sent in time; it was not counted and never will be.
          BrokerConnectionError: the server could not be reached or did not answer in time (the
            start may have been counted).
          BrokerError: the server answered with an error.
        """

    @abc.abstractmethod
    def finish(self, name: str) -> None:
        """Queue the deletion of ``name``'s counter, to go with the next ``count`` or ``flush``;
        returns at once."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Delete ``name``'s counter now (one round trip).

        Raises:
          BrokerConnectionError, BrokerError: as for ``count``.
        """

    @abc.abstractmethod
    def flush(self) -> None:
        """Delete the counters whose deletion ``finish`` queued, now.

        Raises:
          BrokerConnectionError, BrokerError: as for ``count``; the deletions stay queued.
        """

    def close(self) -> None:  # noqa: B027 - optional
        """Release the counter's own connections (not those of a broker it shares); flush first."""


#: What a claim of a tick can answer (``Claim.outcome``).
CLAIMED, LOST, PAUSED = "claimed", "lost", "paused"


@dataclasses.dataclass(frozen=True)
class Claim:
    """The answer to ``TickClaims.claim``; true when the caller must send the tick.

    Attributes:
      outcome: ``"claimed"`` (send it, then ``confirm``), ``"lost"`` (another caller has it,
        or a later tick was claimed) or ``"paused"`` (the schedule is paused in the store).
      taken_over: the tick was claimed before by a caller that did not confirm its send
        within its lease; this caller sends it again, under the same message id.
      retry_at: when lost to a caller that has not confirmed yet, the end of its lease (ms
        since the epoch, the store's clock): asking again after it takes the tick over if it
        is still unconfirmed; ``None`` when there is nothing to wait for.
    """

    outcome: str
    taken_over: bool = False
    retry_at: int | None = None

    def __bool__(self) -> bool:
        return self.outcome == CLAIMED


@dataclasses.dataclass(frozen=True)
class ScheduleState:
    """What the store records of a schedule (times in ms since the epoch).

    Attributes:
      last_run: its last claimed tick (0 when it never ran, e.g. paused before its first).
      next_run: the tick after it.
      worker_id: the worker that claimed the last one.
      message_id: the id of the last tick's message (``tick_message_id``).
      confirmed: whether that message was sent (its claimant confirmed).
      paused: whether the schedule is paused fleet-wide: no tick is claimed while it is.
    """

    last_run: int
    next_run: int
    worker_id: str
    message_id: str = ""
    confirmed: bool = True
    paused: bool = False


class TickClaims(abc.ABC):
    """Claims of schedule ticks in a store every worker of a fleet shares.

    A tick is named by its schedule and its scheduled time (ms since the epoch). A claim
    succeeds for one caller only, and never for a tick before the schedule's last claimed one,
    so a fleet sends each tick once even when its workers disagree on which ticks they missed.

    Sending is two steps: ``claim``, then ``confirm`` once the message is sent. A claim holds
    for ``lease`` ms; a tick whose claimant did not confirm in that time (killed between the
    two) is taken over by the next caller that asks for it, which sends it again under the
    same message id (``tick_message_id``), so a tick is never lost and at worst sent twice as
    one message, as any message may be delivered twice. A paused schedule claims nothing.
    Every method that talks to a server has a deadline.
    """

    @abc.abstractmethod
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
        """Claim ``tick`` of the schedule ``name`` and record it as the last run (one round
        trip); see ``Claim`` for the answers.

        Parameters:
          name: the schedule.
          tick: its scheduled time, in ms since the epoch.
          next_tick: the tick after it (ms), recorded as the next run.
          worker_id: who claims, recorded with the claim.
          message_id: the id of the tick's message, recorded with the claim.
          lease: how long the claim holds without a ``confirm``, in ms.

        Raises:
          BrokerConnectionError: the server could not be reached or did not answer in time
            (the tick may have been claimed).
          BrokerError: the server answered with an error.
        """

    @abc.abstractmethod
    def confirm(self, name: str, tick: int) -> None:
        """Record that the message of ``tick`` was sent: nobody takes the tick over now.

        Raises:
          BrokerConnectionError, BrokerError: as for ``claim``.
        """

    @abc.abstractmethod
    def state(self, name: str) -> ScheduleState | None:
        """Return what the store records of the schedule ``name``, or ``None`` when it never
        ran (or its record expired).

        Raises:
          BrokerConnectionError, BrokerError: as for ``claim``.
        """

    @abc.abstractmethod
    def set_paused(self, name: str, paused: bool) -> None:
        """Pause (or resume) the schedule ``name`` for every worker of the fleet; a paused
        schedule's record does not expire.

        Raises:
          BrokerConnectionError, BrokerError: as for ``claim``.
        """

    @abc.abstractmethod
    def forget(self, name: str) -> None:
        """Delete the record of the schedule ``name`` (a removed schedule): its pause too.

        Raises:
          BrokerConnectionError, BrokerError: as for ``claim``.
        """

    def close(self) -> None:  # noqa: B027 - optional
        """Release the claims' own connections (not those of a broker they share)."""


class MemoryTickClaims(TickClaims):
    """The claims of the in-memory broker: shared by everything in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, ScheduleState] = {}
        #: per schedule: the lease end (ms) of each claimed tick not confirmed yet
        self._pending: dict[str, dict[int, int]] = {}

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
        now = time.time_ns() // 1_000_000
        with self._lock:
            current = self._states.get(name)
            pending = self._pending.setdefault(name, {})
            if current is not None and current.paused:
                return Claim(PAUSED)
            if current is not None and current.last_run >= tick:
                deadline = pending.get(tick)
                if deadline is None:
                    return Claim(LOST)
                if deadline > now:
                    return Claim(LOST, retry_at=deadline)
                pending[tick] = now + lease
                return Claim(CLAIMED, taken_over=True)
            for old in [t for t, end in pending.items() if end + 60000 < now]:
                del pending[old]
            pending[tick] = now + lease
            self._states[name] = ScheduleState(
                tick, next_tick, worker_id, message_id, confirmed=False
            )
            return Claim(CLAIMED)

    def confirm(self, name: str, tick: int) -> None:
        with self._lock:
            self._pending.get(name, {}).pop(tick, None)
            current = self._states.get(name)
            if current is not None and current.last_run == tick:
                self._states[name] = dataclasses.replace(current, confirmed=True)

    def state(self, name: str) -> ScheduleState | None:
        with self._lock:
            return self._states.get(name)

    def set_paused(self, name: str, paused: bool) -> None:
        with self._lock:
            current = self._states.get(name) or ScheduleState(0, 0, "")
            self._states[name] = dataclasses.replace(current, paused=paused)

    def forget(self, name: str) -> None:
        with self._lock:
            self._states.pop(name, None)
            self._pending.pop(name, None)


class RunningMessage(NamedTuple):
    """A message a worker is running now: ``(message id, actor name)``."""

    message_id: str
    actor_name: str


class ScheduleRef(NamedTuple):
    """A schedule a worker takes part in, as its heartbeat publishes it (JSON data only), so
    that a process which declares no schedule (the Jobs sidebar's server, ``nbqueue status``)
    can describe the fleet's.

    Attributes:
      name, actor_name, queue_name, args, kwargs, misfire_grace: the schedule's declaration.
      rule: its rule as ``Rule.spec()`` data (``nbqueue.schedules.rule_from_spec`` rebuilds it).
    """

    name: str
    actor_name: str
    queue_name: str
    rule: dict[str, Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}  # shared default, never mutated (from_dict copies)
    misfire_grace: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = self._asdict()
        data["args"] = list(self.args)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScheduleRef:
        return cls(
            name=str(data["name"]),
            actor_name=str(data["actor_name"]),
            queue_name=str(data["queue_name"]),
            rule=dict(data["rule"]),
            args=tuple(data.get("args", ())),
            kwargs=dict(data.get("kwargs", {})),
            misfire_grace=int(data.get("misfire_grace", 0)),
        )


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """What a live worker publishes about itself on each heartbeat.

    Attributes:
      id: the worker's id (``Worker.worker_id``).
      host: the name of the machine it runs on.
      pid: its process id on that machine.
      processes: how many worker processes the command that started it runs (each publishes
        its own record); 1 for a ``Worker`` started by hand.
      threads: its worker threads (how many actors it may run at once).
      queues: the queues it consumes now, sorted, without their delay queues.
      running: the messages its actors run now, as ``(message id, actor name)``.
      started_at: when it started, in ms since the epoch (its own clock).
      last_seen: its last heartbeat, in ms since the epoch (the server's clock where the
        server has one: Redis; the worker's otherwise).
      ttl: how long the record lives after ``last_seen`` without another heartbeat, in ms.
      schedules: the schedules it takes part in (records of older workers have none).
    """

    id: str
    host: str
    pid: int
    processes: int
    threads: int
    queues: tuple[str, ...]
    running: tuple[RunningMessage, ...]
    started_at: int
    last_seen: int
    ttl: int
    schedules: tuple[ScheduleRef, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data (``running`` as ``[id, actor]`` pairs)."""
        data = dataclasses.asdict(self)
        data["queues"] = list(self.queues)
        data["running"] = [list(pair) for pair in self.running]
        data["schedules"] = [entry.to_dict() for entry in self.schedules]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **changes: Any) -> WorkerInfo:
        """Build a record from ``to_dict()`` data, with ``changes`` overriding fields.

        Raises:
          ValueError, KeyError, TypeError: the data is not such a record.
        """
        fields: dict[str, Any] = {**data, **changes}
        running = tuple(RunningMessage(str(i), str(a)) for i, a in fields["running"])
        queues = fields["queues"]
        if isinstance(queues, str):
            raise TypeError("queues must be a list of names")
        return cls(
            id=str(fields["id"]),
            host=str(fields["host"]),
            pid=int(fields["pid"]),
            processes=int(fields["processes"]),
            threads=int(fields["threads"]),
            queues=tuple(str(q) for q in queues),
            running=running,
            started_at=int(fields["started_at"]),
            last_seen=int(fields["last_seen"]),
            ttl=int(fields["ttl"]),
            schedules=tuple(ScheduleRef.from_dict(s) for s in fields.get("schedules", ())),
        )


class WorkerRegistry(abc.ABC):
    """The live workers of a fleet, each kept by its heartbeats, in a store they all share.

    A worker calls ``beat`` every ``ttl / 3`` ms; a record whose worker stopped beating (a
    killed process) is gone once ``ttl`` ms passed since its last beat, and ``remove`` drops
    one at once (a clean stop). Every method that talks to a server has a deadline.
    """

    @abc.abstractmethod
    def beat(self, info: WorkerInfo) -> None:
        """Publish or refresh ``info`` for ``info.ttl`` ms more (one round trip); the store
        sets ``last_seen`` where it has a clock of its own.

        Raises:
          BrokerConnectionError: the server could not be reached or did not answer in time.
          BrokerError: the server answered with an error.
        """

    @abc.abstractmethod
    def remove(self, worker_id: str) -> None:
        """Drop the record of ``worker_id`` now.

        Raises:
          BrokerConnectionError, BrokerError: as for ``beat``.
        """

    @abc.abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """Return the records of the live workers, sorted by host, pid and id.

        Raises:
          BrokerConnectionError, BrokerError: as for ``beat``.
        """

    def close(self) -> None:  # noqa: B027 - optional
        """Release the registry's own connections (not those of a broker it shares)."""


def sort_workers(records: Iterable[WorkerInfo]) -> list[WorkerInfo]:
    """Return ``records`` in the order ``WorkerRegistry.workers`` promises."""
    return sorted(records, key=lambda info: (info.host, info.pid, info.id))


class MemoryWorkerRegistry(WorkerRegistry):
    """The registry of the in-memory broker: the workers of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, tuple[WorkerInfo, float]] = {}

    def beat(self, info: WorkerInfo) -> None:
        with self._lock:
            self._records[info.id] = (info, time.monotonic() + info.ttl / 1000)

    def remove(self, worker_id: str) -> None:
        with self._lock:
            self._records.pop(worker_id, None)

    def workers(self) -> list[WorkerInfo]:
        now = time.monotonic()
        with self._lock:
            for worker_id in [w for w, (_, expiry) in self._records.items() if expiry <= now]:
                del self._records[worker_id]
            return sort_workers(info for info, _ in self._records.values())
