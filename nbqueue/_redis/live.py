"""The Redis live channel: status records in hashes, events in streams, readable from anywhere.

Keys, under the namespace ``ns`` (the RedisBroker's, else the result backend's)::

    ns:__nbq__:live:<message id>          hash: the status record, plus the event counter
    ns:__nbq__:live:<message id>:events   stream: the events, ids "<offset>-0", XADD MAXLEN ~
    ns:__nbq__:live:aborts                stream: ids of running messages to abort

A message's two keys expire with its result (PEXPIRE on every write). Readers block with
``XREAD BLOCK``, so an event reaches a watcher in another process about as fast as the network
allows. Workers block on the aborts stream in one thread per process, and also check the abort
flags of their running messages about once a second, in case a notification was missed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from ..encoder import compact_json
from ..history.base import Limits
from ..live import transport as _contract
from ..live.channel import CLOSE_TIMEOUT, get_publisher
from ..live.status import LiveEvent, StatusRecord
from ..live.transport import AbortListener, HeldWrite, Transport, Watch, Write
from .client import SOCKET_TIMEOUT, RedisConnection, as_text, load_script
from .group import group_commit
from .keys import history_keys, live_prefix

if TYPE_CHECKING:
    from .history import RedisHistory

__all__ = ["RedisTransport", "RedisWatch", "claim_held", "live_prefix", "shared_transport"]

logger = logging.getLogger("nbqueue.live")

#: How long the aborts stream lives after its last entry, in milliseconds (one day).
ABORTS_TTL = 86400000

#: How many abort notifications the aborts stream keeps (about).
ABORTS_MAXLEN = 1000

#: How often a worker checks the abort flags of its running messages, in seconds.
POLL_INTERVAL = 1.0

#: How many writes one pipeline carries at most (a larger batch takes several round trips).
WRITE_CHUNK = 500
#: How many event streams one ``XREAD BLOCK`` of a watch covers; a watch of more messages
#: blocks on one connection (and thread) per chunk.
WATCH_CHUNK = 1000

#: How many records one round trip of ``statuses()`` reads.
STATUS_CHUNK = 1000


class _Default:
    pass


_DEFAULT = _Default()


def history_entry(sent: tuple[Any, str | None, str | None]) -> str:
    """The history's entry of a message (``Write.history``): its JSON and where it came
    from."""
    message, notebook, kernel = sent
    entry = {"message": message.asdict(), "notebook": notebook, "kernel": kernel}
    return compact_json(entry, checked=True)  # the message's encoder took its data


def _event_json(data: dict[str, Any]) -> str:
    """A status event nbqueue built (strings, integers, None)."""
    return compact_json(data, checked=True)


_dumps = compact_json


def _field(value: Any) -> str:
    return _dumps(value) if isinstance(value, (dict, list)) else str(value)


class RedisTransport(Transport):
    """Keep status records and events in Redis (see the module docstring).

    Parameters:
      connection: the connection of a ``RedisBackend`` or ``RedisBroker``; used, never closed.
      namespace: the key namespace.
      max_events: how many events each message keeps (about: streams are trimmed with ``~``).
    """

    buffered = True
    #: a start write costs the server several times what a take does (live_take.lua)
    defers_start = True

    def __init__(
        self,
        connection: RedisConnection,
        namespace: str,
        *,
        max_events: int = 1000,
        history: Limits | None | _Default = _DEFAULT,
    ) -> None:
        super().__init__(max_events=max_events)
        #: the job history's bounds (``None``: no history), from the environment by default
        self.history_limits = Limits.from_env() if isinstance(history, _Default) else history
        self.history_keys = history_keys(namespace) if self.history_limits else []
        self.connection = connection
        self.client = connection.client
        self.namespace = namespace
        self.prefix = live_prefix(namespace)
        self.aborts_key = self.prefix + "aborts"
        self._write = load_script(self.client, "live_write")
        self._take = load_script(self.client, "live_take")
        self._abort = load_script(self.client, "live_abort")
        self._listeners: list[AbortListener] = []
        self._lock = threading.Lock()
        self._watcher: _AbortWatcher | None = None
        self._held: dict[str, HeldWrite] = {}

    def __repr__(self) -> str:
        return f"RedisTransport({self.connection.where!r}, namespace={self.namespace!r})"

    @property
    def keeps_history(self) -> bool:
        return self.history_limits is not None

    def history(self) -> RedisHistory | None:
        """The job history kept beside the live records (``history.py``), or ``None``."""
        if self.history_limits is None:
            return None
        from .history import RedisHistory  # history.py builds on this module

        return RedisHistory(self)

    def keys(self, message_id: str) -> list[str]:
        """Return the keys a write of a message touches: its record and events, then the job
        history's, when it keeps one."""
        record = self.prefix + message_id
        return [record, record + ":events", *self.history_keys]

    def write_args(self, w: Write) -> list[Any]:
        """The arguments of ``w`` for ``live_write`` (in ``_lib.lua``, which lists them):
        plain strings, no JSON header to decode on the server."""
        limits = self.history_limits
        # Strings throughout: a Lua number becomes a command's argument through printf, and
        # Lua would store a number field as a float.
        args: list[Any] = [
            str(w.ttl),
            str(self.max_events),
            str(int(time.time() * 1000)),
            w.mode,
            str(w.attempt),
            "" if w.status_event is None else _event_json(w.status_event),
            "" if w.progress is None else _dumps(w.progress),
            "" if w.backfill is None else _event_json(w.backfill),
            "" if w.lead is None else _event_json(w.lead),
        ]
        if limits is not None:
            entry = "" if w.history is None else history_entry(w.history)
            args += [w.message_id, str(limits.max_jobs), str(limits.max_age), entry]
        else:
            args += ["", "", "", ""]
        fields = [(k, _field(v)) for k, v in w.fields.items() if v is not None]
        args.append(str(len(fields)))
        for pair in fields:
            args += pair
        once = [(k, _field(v)) for k, v in w.once.items() if v is not None]
        args.append(str(len(once)))
        for pair in once:
            args += pair
        for kind, data in w.events:
            args += [kind, _dumps(data)]
        return args

    def add_write(self, pipe: Any, w: Write) -> None:
        """Add ``w``'s script call to ``pipe`` (a result store's round trip)."""
        keys = self.keys(w.message_id)
        pipe.evalsha(self._write.sha, len(keys), *keys, *self.write_args(w))

    def settle_write(self, w: Write, reply: Any) -> None:
        """Handle the reply to a write sent by ``add_write``: sent again after the server lost
        its scripts, logged (never raised) when it failed."""
        if isinstance(reply, NoScriptError):
            reply = self._write(keys=self.keys(w.message_id), args=self.write_args(w))
        if isinstance(reply, Exception):
            logger.warning(
                "The live channel could not write the status of message %s (%s).",
                w.message_id,
                self.connection.scrub(str(reply)),
            )

    def hold(self, write: Write) -> bool:
        """Hold ``write`` for the result store of this connection (``claim_held``); the
        publisher writes it within a tick when no result store claims it."""
        held = HeldWrite(write)
        with self._lock:
            self._held[write.message_id] = held
        get_publisher(self).submit(held)
        return True

    def release(self, held: HeldWrite) -> None:
        with self._lock:
            if self._held.get(held.write.message_id) is held:
                del self._held[held.write.message_id]

    def take_held(self, message_id: str) -> HeldWrite | None:
        """Remove and return the write held for ``message_id``, if any."""
        with self._lock:
            return self._held.pop(message_id, None)

    def write(self, writes: list[Write]) -> list[int]:
        if len(writes) == 1:
            # A worker's start write waits for its answer (was an abort requested?): worker
            # threads starting at the same moment share one round trip (a group commit).
            w = writes[0]
            return [self._group_call(self._write, self.keys(w.message_id), self.write_args(w))]
        # EVALSHA in a plain pipeline: redis-py's script-aware pipelines ask SCRIPT EXISTS
        # first, which would double the round trips of every batch. A pipeline of at most
        # WRITE_CHUNK writes at a time: the packed commands of a burst of sends (send_many of
        # 20,000, say) would otherwise all sit in memory at once.
        results = []
        for start in range(0, len(writes), WRITE_CHUNK):
            chunk = writes[start : start + WRITE_CHUNK]
            pipe = self.client.pipeline(transaction=False)
            for w in chunk:
                keys = self.keys(w.message_id)
                pipe.evalsha(self._write.sha, len(keys), *keys, *self.write_args(w))
            with self.connection.errors():
                replies = pipe.execute(raise_on_error=False)
                for w, reply in zip(chunk, replies, strict=True):
                    if isinstance(reply, NoScriptError):  # the server lost its scripts
                        reply = self._write(keys=self.keys(w.message_id), args=self.write_args(w))
                    elif isinstance(reply, Exception):
                        raise reply
                    results.append(int(reply))
        return results

    def take(self, message_id: str, attempt: int, ttl: int) -> int:
        return self._group_call(self._take, [self.prefix + message_id], [str(attempt), str(ttl)])

    def _group_call(self, script: Any, keys: list[str], args: list[Any]) -> int:
        """Run one script and return its integer reply, sharing the round trip with the worker
        threads that call at the same moment (a group commit)."""
        sha = script.sha
        with self.connection.errors():
            (reply,) = group_commit(self.connection).execute(
                lambda pipe: pipe.evalsha(sha, len(keys), *keys, *args)
            )
            if isinstance(reply, NoScriptError):  # the server lost its scripts (a restart)
                reply = script(keys=keys, args=args)
            elif isinstance(reply, Exception):
                raise reply
            return int(reply)

    def read(
        self, message_id: str, offset: int, *, block: float | None, count: int = 1000
    ) -> list[LiveEvent]:
        stream = self.keys(message_id)[1]
        block_ms = None
        if block is not None:
            block_ms = int(min(block, self.connection.block_limit) * 1000)
            if block_ms < 1:
                block_ms = None
        with self.connection.errors():
            reply: Any = self.client.xread({stream: f"{offset}-0"}, count=count, block=block_ms)
        events = []
        for _, entries in reply or []:
            for entry_id, raw in entries:
                seq = int(as_text(entry_id, "replace").split("-", 1)[0])
                fields = {as_text(k, "replace"): v for k, v in raw.items()}
                try:
                    data = json.loads(fields.get("d") or "{}")
                except ValueError:
                    data = {}
                stamp = int(fields.get("t") or 0)
                events.append(LiveEvent(seq, as_text(fields.get("k", ""), "replace"), data, stamp))
        return events

    def status(self, message_id: str) -> StatusRecord | None:
        with self.connection.errors():
            fields = self.client.hgetall(self.keys(message_id)[0])
        return StatusRecord.from_fields(message_id, fields) if fields else None

    def statuses(self, message_ids: Sequence[str]) -> list[StatusRecord | None]:
        records: list[StatusRecord | None] = []
        for start in range(0, len(message_ids), STATUS_CHUNK):
            chunk = message_ids[start : start + STATUS_CHUNK]
            pipe = self.client.pipeline(transaction=False)
            for message_id in chunk:
                pipe.hgetall(self.prefix + message_id)
            with self.connection.errors():
                replies = pipe.execute()
            records += [
                StatusRecord.from_fields(m, fields) if fields else None
                for m, fields in zip(chunk, replies, strict=True)
            ]
        return records

    def watch(self, cursors: Mapping[str, int]) -> RedisWatch:
        return RedisWatch(self, cursors)

    def abort(self, message_id: str, *, ttl: int, now: int) -> int:
        event = _dumps({"status": "aborted", "by": "abort()"})
        record, stream, *history = self.keys(message_id)
        keys = [record, stream, self.aborts_key, *history]
        args: list[Any] = [now, ttl, self.max_events, message_id, event, ABORTS_TTL, ABORTS_MAXLEN]
        with self.connection.errors():
            return int(self._abort(keys=keys, args=args))

    def abort_flags(self, message_ids: list[str]) -> list[str]:
        """Return which of ``message_ids`` have an abort requested."""
        if not message_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for message_id in message_ids:
            pipe.hexists(self.prefix + message_id, "abort")
        with self.connection.errors():
            flags = pipe.execute()
        return [m for m, flagged in zip(message_ids, flags, strict=True) if flagged]

    def subscribe(self, listener: AbortListener) -> None:
        newest = self._aborts_newest()  # (outside the lock: a round trip)
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = _AbortWatcher(self, newest)
                self._watcher.start()

    def _aborts_newest(self) -> str | None:
        """The id of the aborts stream's newest entry ("0-0": none), read before the worker
        runs anything, so that no abort requested after its boot is skipped as old; ``None``
        when Redis cannot say now (the watcher asks again, and the flag check covers the
        gap)."""
        try:
            with self.connection.errors():
                newest: Any = self.client.xrevrange(self.aborts_key, count=1)
        except Exception:
            return None
        return as_text(newest[0][0], "replace") if newest else "0-0"

    def unsubscribe(self, listener: AbortListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
            watcher = self._watcher if not self._listeners else None
            if watcher is not None:
                self._watcher = None
        if watcher is not None:
            watcher.stop()

    def listeners(self) -> list[AbortListener]:
        """Return the registered abort listeners."""
        with self._lock:
            return list(self._listeners)

    def close(self) -> None:
        with self._lock:
            watcher, self._watcher = self._watcher, None
            self._listeners.clear()
        if watcher is not None:
            watcher.stop()


class RedisWatch(Watch):
    """Blocks with ``XREAD BLOCK`` on the event streams of many messages at once.

    Up to ``WATCH_CHUNK`` streams, the reader's own thread blocks on one connection of the
    watch's own. Beyond that, one thread per chunk blocks on its own connection and hands what
    it reads to the reader. Every event of a watched message wakes the read (a stream cannot
    be filtered by kind on the server); only messages whose new events include a status change
    are reported. ``reads`` counts the ``XREAD`` calls made.
    """

    def __init__(self, transport: RedisTransport, cursors: Mapping[str, int]) -> None:
        self.transport = transport
        self.block = _contract.WAIT_BLOCK
        self.reads = 0
        self._ids: dict[str, str] = {}  # stream -> message id
        self._cursor: dict[str, str] = {}
        for message_id, offset in cursors.items():
            stream = transport.keys(message_id)[1]
            self._ids[stream] = message_id
            self._cursor[stream] = f"{offset}-0"
        self._active = set(self._ids)
        streams = list(self._ids)
        self._chunks = [
            streams[start : start + WATCH_CHUNK] for start in range(0, len(streams), WATCH_CHUNK)
        ]
        # The connection blocks up to ``block`` seconds: its socket timeout must be longer.
        self._timeout = self.block + (transport.connection.socket_timeout or SOCKET_TIMEOUT)
        self._clients: list[Any] = []
        self._pending: set[str] = set()
        self._condition = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        if len(self._chunks) > 1:
            for chunk in self._chunks:
                client = self._client()
                thread = threading.Thread(
                    target=self._run, args=(client, chunk), name="nbqueue-watch", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def __repr__(self) -> str:
        return f"RedisWatch(messages={len(self._active)}, chunks={len(self._chunks)})"

    def _client(self) -> Any:
        client = self.transport.connection.dedicated(socket_timeout=self._timeout)
        self._clients.append(client)
        return client

    def _read(self, client: Any, chunk: list[str], block: float) -> list[str]:
        streams = {s: self._cursor[s] for s in chunk if s in self._active}
        if not streams:
            return []
        block_ms = max(1, int(min(block, self.block) * 1000))
        self.reads += 1
        with self.transport.connection.errors():
            reply: Any = client.xread(streams, count=100, block=block_ms)
        changed = []
        for stream, entries in reply or []:
            name = as_text(stream, "replace")
            status = False
            for entry_id, fields in entries:
                self._cursor[name] = as_text(entry_id, "replace")
                kind = next((v for k, v in fields.items() if as_text(k, "replace") == "k"), b"")
                status = status or as_text(kind, "replace") == "status"
            if status and name in self._ids:
                changed.append(self._ids[name])
        return changed

    def _run(self, client: Any, chunk: list[str]) -> None:
        while not self._stopping.is_set():
            try:
                changed = self._read(client, chunk, self.block)
            except Exception:
                if self._stopping.is_set():
                    break
                logger.warning(
                    "The live channel could not watch messages in Redis; retrying in a second.",
                    exc_info=True,
                )
                self._stopping.wait(1.0)
                continue
            if not any(s in self._active for s in chunk):
                break
            if changed:
                with self._condition:
                    self._pending.update(changed)
                    self._condition.notify()

    def wait(self, block: float) -> list[str]:
        if not self._threads:
            if not self._clients:
                self._client()
            return self._read(self._clients[0], self._chunks[0] if self._chunks else [], block)
        with self._condition:
            if not self._pending and block > 0:
                self._condition.wait(block)
            changed = list(self._pending)
            self._pending.clear()
        return changed

    def discard(self, message_id: str) -> None:
        self._active.discard(self.transport.keys(message_id)[1])

    def close(self) -> None:
        """Stop the chunk threads (each within its ``XREAD BLOCK``, without waiting for
        them) and close the connections once they are done with them."""
        self._stopping.set()
        self._active.clear()
        if not self._threads:
            for client in self._clients:
                client.close()
            return
        clients, threads = list(self._clients), list(self._threads)

        def close_later() -> None:
            for thread in threads:
                thread.join()
            for client in clients:
                client.close()

        threading.Thread(target=close_later, name="nbqueue-watch-close", daemon=True).start()


class _AbortWatcher(threading.Thread):
    """Blocks on the aborts stream and hands the ids to the listeners (see the module doc)."""

    def __init__(self, transport: RedisTransport, last: str | None = None) -> None:
        super().__init__(name="nbqueue-live-aborts", daemon=True)
        self.transport = transport
        self._last = last  # where reading starts; None: at the newest entry, once connected
        self._stopping = threading.Event()

    def stop(self, timeout: float = 0.0) -> None:
        """Ask the thread to exit; it does within a second (its XREAD BLOCK), and closes its
        connection. Waits up to ``timeout`` seconds for it (by default not at all, so a worker
        stops at once)."""
        self._stopping.set()
        if timeout and self.is_alive() and self is not threading.current_thread():
            self.join(timeout)

    def run(self) -> None:
        transport = self.transport
        client = transport.connection.dedicated()
        block_ms = max(1, int(transport.connection.block_limit * 1000))
        last = self._last
        next_poll = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    if last is None:
                        newest: Any = client.xrevrange(transport.aborts_key, count=1)
                        last = as_text(newest[0][0], "replace") if newest else "0-0"
                    reply: Any = client.xread(
                        {transport.aborts_key: last}, count=100, block=block_ms
                    )
                    ids = []
                    for _, entries in reply or []:
                        for entry_id, fields in entries:
                            last = as_text(entry_id, "replace")
                            ids += [
                                as_text(v, "replace")
                                for k, v in fields.items()
                                if as_text(k, "replace") == "id"
                            ]
                    now = time.monotonic()
                    if now >= next_poll:
                        next_poll = now + POLL_INTERVAL
                        running = [m for lis in transport.listeners() for m in lis.running_ids()]
                        ids += transport.abort_flags(running)
                    for message_id in ids:
                        for listener in transport.listeners():
                            listener.on_abort(message_id)
                except Exception:
                    if self._stopping.is_set():
                        break
                    logger.warning(
                        "The live channel could not read abort requests from Redis; "
                        "retrying in a second.",
                        exc_info=True,
                    )
                    self._stopping.wait(1.0)
        finally:
            client.close()


_shared_lock = threading.Lock()


def shared_transport(
    connection: RedisConnection, namespace: str, *, max_events: int = 1000
) -> RedisTransport:
    """Return the transport of a connection and namespace, shared by every user of the
    connection in this process (kept on the connection, so it goes away with it)."""
    with _shared_lock:
        by_namespace: dict[str, RedisTransport] = connection.__dict__.setdefault("_nbq_live", {})
        transport = by_namespace.get(namespace)
        if transport is None:
            transport = by_namespace[namespace] = RedisTransport(
                connection, namespace, max_events=max_events
            )
        return transport


def claim_held(connection: RedisConnection, message_id: str) -> list[tuple[RedisTransport, Write]]:
    """Return the live writes held for ``message_id`` on ``connection``'s transports, for a
    result store to send first in its round trip.

    A held write the publisher claimed first is waited for (up to ``CLOSE_TIMEOUT``) before this
    returns, so the result the caller stores next is never visible before it.
    """
    by_namespace: dict[str, RedisTransport] = connection.__dict__.get("_nbq_live") or {}
    claimed = []
    for transport in list(by_namespace.values()):
        held = transport.take_held(message_id)
        if held is None:
            continue
        if held.claim():
            claimed.append((transport, held.write))
            held.finish()  # nobody else waits on it: the publisher skips a claimed write
        elif not held.wait(CLOSE_TIMEOUT):
            logger.warning(
                "The live status of message %s was not written within %.0f s; its result may be "
                "visible before it.",
                message_id,
                CLOSE_TIMEOUT,
            )
    return claimed
