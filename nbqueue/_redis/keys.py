"""Every Redis key nbqueue uses, built in one place.

Dramatiq's keys keep Dramatiq's names (``ns:q``, ``ns:q.msgs``, ``ns:q.XQ``,
``ns:__acks__.<worker>.<queue>``, ``ns:__heartbeats__``); keys only nbqueue writes sit under
``ns:__nbq__:`` (``own_prefix``), so ``redis-cli --scan`` tells them apart: the broker's, the
notebook-actor store's, the live channel's (``live_prefix``), the crash counters'
(``crashes_prefix``), the schedules' (``schedules_prefix``) and the worker registry's
(``ns:__nbq__:workers``, ``ns:__nbq__:workers.expiry``). Queue names cannot contain ``:``, so no queue's keys can collide with
nbqueue's own.
"""

from __future__ import annotations

from ..common import dq_name, q_name

__all__ = [
    "NBQ_PREFIX",
    "WAKE_CAP",
    "WAKE_TTL",
    "RedisKeys",
    "crashes_prefix",
    "history_keys",
    "live_prefix",
    "own_prefix",
    "schedules_prefix",
]

#: The sub-prefix, under a namespace, of every key only nbqueue writes.
NBQ_PREFIX = "__nbq__"

#: Wake-up and drained lists hold at most this many tokens, and expire this long (ms) after
#: the last push: they are hints for blocked readers, not data.
WAKE_CAP, WAKE_TTL = 64, 10000


def own_prefix(namespace: str) -> str:
    """Return the start of every key only nbqueue writes under ``namespace``."""
    return f"{namespace}:{NBQ_PREFIX}:"


def live_prefix(namespace: str) -> str:
    """Return the start of every live-channel key under ``namespace`` (see ``live.py``)."""
    return f"{own_prefix(namespace)}live:"


def history_keys(namespace: str) -> list[str]:
    """Return the job history's keys under ``namespace`` (see ``history.py``): the index (zset
    of message ids by enqueue time), the entries (hash: id -> message JSON and origin), the
    record copies (hash: id -> status record JSON), the version counter and the changes
    stream."""
    index = f"{own_prefix(namespace)}history"
    return [index, index + ":entries", index + ":records", index + ":version", index + ":changes"]


def crashes_prefix(namespace: str) -> str:
    """Return the start of every crash counter's key under ``namespace`` (see ``CrashLimit``)."""
    return f"{own_prefix(namespace)}crashes:"


def schedules_prefix(namespace: str) -> str:
    """Return the start of every schedule's state key under ``namespace``: ``<this><name>`` is
    a hash of its last claimed tick, the next one and the worker that claimed (``ticks.py``)."""
    return f"{own_prefix(namespace)}schedules:"


def _escape_glob(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisKeys:
    """Key names under one namespace, and the ``KEYS`` lists of each Lua script.

    ``queue`` arguments may be a queue or its delay queue (``q.DQ``); dead letters and the
    drained signal always belong to the canonical queue, as in Dramatiq.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._ns = f"{namespace}:"
        self._own = own_prefix(namespace)
        self._acks = f"{namespace}:__acks__."
        #: sorted set: worker id -> last heartbeat (ms)
        self.heartbeats = f"{namespace}:__heartbeats__"
        #: hash: ``queue/actor`` -> JSON index entry of its latest published version
        self.code_index = f"{self._own}code.index"
        #: the start of CrashLimit's counters: ``<this><message id>.<retries>`` -> unfinished
        #: starts of that attempt (see ``counters.py``)
        self.start_counters = crashes_prefix(namespace)
        #: the start of every schedule's state hash (see ``ticks.py``)
        self.schedules = schedules_prefix(namespace)
        #: hash: worker id -> JSON record of a live worker (see ``workers.py``)
        self.workers = f"{self._own}workers"
        #: sorted set: worker id -> when its record expires (ms, server clock)
        self.workers_expiry = f"{self._own}workers.expiry"

    # Dramatiq's keys
    def queue(self, queue: str) -> str:
        """The list of ids of default-priority messages waiting in ``queue``."""
        return self._ns + queue

    def messages(self, queue: str) -> str:
        """The hash of redis message id -> encoded message, waiting or in flight."""
        return f"{self._ns}{queue}.msgs"

    def ack_set(self, worker: str, queue: str) -> str:
        """The set of ids ``worker`` fetched from ``queue`` and has not settled."""
        return f"{self._acks}{worker}.{queue}"

    def ack_set_pattern(self, worker: str) -> str:
        """A SCAN pattern matching every ack set of ``worker``."""
        return _escape_glob(f"{self._acks}{worker}.") + "*"

    def queue_of_ack_set(self, worker: str, key: str) -> str:
        """The queue name an ack set of ``worker`` belongs to."""
        return key[len(f"{self._acks}{worker}.") :]

    def dead(self, queue: str) -> str:
        """The sorted set of dead-lettered ids, scored by when (ms)."""
        return f"{self._ns}{q_name(queue)}.XQ"

    def dead_messages(self, queue: str) -> str:
        """The hash of dead-lettered id -> encoded message."""
        return f"{self._ns}{q_name(queue)}.XQ.msgs"

    # nbqueue's own keys
    def dead_reasons(self, queue: str) -> str:
        """The hash of dead-lettered id -> ``{"reason": ..., "error": ...}`` (JSON)."""
        return f"{self._own}{q_name(queue)}.XQ.why"

    def prioritized(self, queue: str) -> str:
        """The sorted set of ids of messages with a non-zero priority."""
        return f"{self._own}{queue}.prio"

    def scores(self, queue: str) -> str:
        """The hash of id -> score of prioritized messages, kept while they are in flight."""
        return f"{self._own}{queue}.scores"

    def sequence(self, queue: str) -> str:
        """The counter that keeps equal priorities in order."""
        return f"{self._own}{queue}.seq"

    def wake(self, queue: str) -> str:
        """The list of wake-up tokens idle consumers of ``queue`` block on."""
        return f"{self._own}{queue}.wake"

    def drained(self, queue: str) -> str:
        """The list of tokens ``join()`` blocks on, pushed when the queue drains."""
        return f"{self._own}{q_name(queue)}.drained"

    def idle(self, queue: str) -> str:
        """The sorted set of idle consumers of ``queue`` (registration -> deadline, ms)."""
        return f"{self._own}{queue}.idle"

    def inbox(self, worker: str, queue: str) -> str:
        """The list an idle consumer blocks on: messages handed straight to ``worker``."""
        return f"{self._own}{queue}.inbox.{worker}"

    def idle_registration(self, worker: str, queue: str) -> str:
        """What an idle consumer registers: its worker, ack set and inbox (see enqueue.lua)."""
        return f"{worker}\n{self.ack_set(worker, queue)}\n{self.inbox(worker, queue)}"

    def registry(self, worker: str) -> str:
        """The set of queue names ``worker`` has ack sets for."""
        return f"{self._own}queues.{worker}"

    # the notebook-actor store's keys (see code_store.py)
    def code(self, code_hash: str) -> str:
        """The signed envelope of one published version of a notebook actor."""
        return f"{self._own}code:{code_hash}"

    def capabilities(self, queue: str) -> str:
        """The sorted set of ``<worker id>|<actor>`` that can run ``queue``'s notebook actors,
        scored by when each registration expires (ms, server clock)."""
        return f"{self._own}cap:{queue}"

    # groups of keys
    def stored(self, queue: str) -> list[str]:
        """Every key holding waiting messages of ``queue`` (not dead letters, not ack sets)."""
        return [
            self.queue(queue),
            self.messages(queue),
            self.prioritized(queue),
            self.scores(queue),
            self.sequence(queue),
        ]

    def dead_letters(self, queue: str) -> list[str]:
        """KEYS of dead_letters.lua: the .XQ zset and hash, and the reasons."""
        return [self.dead(queue), self.dead_messages(queue), self.dead_reasons(queue)]

    def enqueue(self, queue: str) -> list[str]:
        """KEYS of enqueue.lua."""
        return [
            self.messages(queue),
            self.queue(queue),
            self.prioritized(queue),
            self.scores(queue),
            self.sequence(queue),
            self.wake(queue),
            self.heartbeats,
            self.idle(queue),
        ]

    def fetch(self, queue: str, worker: str) -> list[str]:
        """KEYS of fetch.lua."""
        return [
            self.queue(queue),
            self.messages(queue),
            self.prioritized(queue),
            self.ack_set(worker, queue),
            self.heartbeats,
            self.registry(worker),
            self.idle(queue),
            self.inbox(worker, queue),
        ]

    def _drain_keys(self, queue: str) -> list[str]:
        canonical = q_name(queue)
        return [
            self.messages(canonical),
            self.messages(dq_name(canonical)),
            self.drained(canonical),
        ]

    def ack(self, queue: str, worker: str) -> list[str]:
        """KEYS of ack.lua."""
        return [
            self.ack_set(worker, queue),
            self.messages(queue),
            self.scores(queue),
            *self._drain_keys(queue),
        ]

    def nack(self, queue: str, worker: str) -> list[str]:
        """KEYS of nack.lua."""
        return [
            self.ack_set(worker, queue),
            self.messages(queue),
            self.scores(queue),
            *self.dead_letters(queue),
            *self._drain_keys(queue),
        ]

    def requeue(self, queue: str, worker: str) -> list[str]:
        """KEYS of requeue.lua, for ``worker``'s ack set of ``queue``."""
        return [
            self.ack_set(worker, queue),
            self.messages(queue),
            self.queue(queue),
            self.prioritized(queue),
            self.scores(queue),
            self.wake(queue),
        ]
