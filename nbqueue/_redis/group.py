"""A group commit for Redis: the commands of many worker threads, sent in one round trip.

A worker thread that must know its write landed before it goes on (a result stored before the
message is acked, a live ``running`` status whose answer says whether an abort came first)
hands its commands to the connection's ``GroupCommit`` and waits. The first thread in sends
every waiting request in one pipeline and hands each its replies; a thread that arrives while
that round trip is out waits for the next one, which the first of them sends. Eight threads
then cost one round trip, not eight, and one thread wakes up on the reply instead of eight (on
a busy process each wake-up waits for the GIL). A lone thread sends at once: latency does not
change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["GroupCommit", "group_commit"]

#: Adds a request's commands to a pipeline.
AddCommands = Callable[[Any], None]

_local = threading.local()


def _event() -> threading.Event:
    # One event per thread, reused: a request waits on its thread's event, and a thread has at
    # most one request out at a time.
    event: threading.Event | None = getattr(_local, "event", None)
    if event is None:
        event = _local.event = threading.Event()
    else:
        event.clear()
    return event


class _Request:
    __slots__ = ("add", "done", "error", "promoted", "replies")

    def __init__(self, add: AddCommands) -> None:
        self.add = add
        self.done = _event()
        self.replies: list[Any] | None = None
        self.error: BaseException | None = None
        self.promoted = False


class GroupCommit:
    """Sends the commands of the threads waiting at the same moment in one pipeline.

    Parameters:
      client: the ``redis.Redis`` client.
      timeout: how long a waiting thread waits for the thread sending its request, in seconds
        (the socket deadline bounds the send itself).
    """

    def __init__(self, client: Any, *, timeout: float = 30.0) -> None:
        self.client = client
        self.timeout = timeout
        self._lock = threading.Lock()
        self._waiting: list[_Request] = []
        self._leading = False

    def execute(self, add: AddCommands) -> list[Any]:
        """Send the commands ``add`` puts into a pipeline, with whatever other threads wait to
        send, and return their replies (an error reply is returned, not raised).

        Raises:
          redis.RedisError: the round trip failed (every request in it gets the error).
          TimeoutError: the thread sending the request did not answer in time.
        """
        request = _Request(add)
        with self._lock:
            self._waiting.append(request)
            leader = not self._leading
            self._leading = True
        if not leader:
            if not request.done.wait(self.timeout):
                with self._lock:
                    if request in self._waiting:  # never taken: withdraw it
                        self._waiting.remove(request)
                        raise TimeoutError("no thread sent this Redis request in time")
                request.done.wait()  # taken: the round trip is out, and has a socket deadline
            if not request.promoted:
                return self._result(request)
        # This thread leads: it sends every waiting request, its own among them, then hands the
        # lead to the first request that arrived meanwhile (which wakes up and sends the next).
        with self._lock:
            batch, self._waiting = self._waiting, []
        try:
            pipe = self.client.pipeline(transaction=False)
            sizes = []
            for r in batch:
                before = len(pipe.command_stack)
                r.add(pipe)
                sizes.append(len(pipe.command_stack) - before)
            replies = pipe.execute(raise_on_error=False)
            start = 0
            for r, size in zip(batch, sizes, strict=True):
                r.replies = replies[start : start + size]
                start += size
        except BaseException as e:
            for r in batch:
                r.error = e
        finally:
            with self._lock:
                if self._waiting:
                    self._waiting[0].promoted = True
                    self._waiting[0].done.set()
                else:
                    self._leading = False
            for r in batch:
                if r is not request:
                    r.done.set()
        return self._result(request)

    @staticmethod
    def _result(request: _Request) -> list[Any]:
        if request.error is not None:
            raise request.error
        assert request.replies is not None
        return request.replies


_groups_lock = threading.Lock()


def group_commit(connection: Any) -> GroupCommit:
    """Return the group commit of a ``RedisConnection`` (kept on it, shared by its users)."""
    group: GroupCommit | None = connection.__dict__.get("_nbq_group")
    if group is None:
        with _groups_lock:
            group = connection.__dict__.get("_nbq_group")
            if group is None:
                group = connection.__dict__["_nbq_group"] = GroupCommit(connection.client)
    return group
