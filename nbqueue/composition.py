"""Composition: ``pipeline`` runs messages one after another, ``group`` runs them side by side.

Both need a result backend to report on their progress (``completed``, ``get_results``); they
use the one of their own broker, not the global broker's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Union

from .broker import get_broker
from .message import Message
from .middleware.group_callbacks import GroupCallbacks
from .rate_limits import Barrier
from .results import ResultMissing

if TYPE_CHECKING:
    from .broker import Broker
    from .results import ResultBackend

__all__ = ["group", "pipeline"]


def _remaining(deadline: float | None, timeout: int | None) -> int | None:
    """The timeout left before ``deadline``, in milliseconds (``timeout`` when no deadline)."""
    if deadline is None:
        return timeout
    return max(0, int((deadline - time.monotonic()) * 1000))


def _deadline(timeout: int | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout / 1000


class pipeline:  # noqa: N801 - Dramatiq's name
    """Chain messages: each one's result is appended to the arguments of the next.

    ``message_a | message_b`` builds one too. Each message is copied and gets the next one, as a
    dict, in its ``pipe_target`` option; the ``Pipelines`` middleware enqueues it. An actor
    declared with ``pipe_ignore=True`` (or a message with that option) receives no result.

    Parameters:
      children: messages and pipelines; pipelines are flattened into this one.
      broker: where to run it; defaults to the global broker.

    Raises:
      TypeError: a child is not a message or a pipeline (groups cannot be chained).
    """

    messages: list[Message[Any]]

    def __init__(
        self, children: Iterable[Message[Any] | pipeline], *, broker: Broker | None = None
    ) -> None:
        self.broker = broker or get_broker()
        messages: list[Message[Any]] = []
        self.messages = messages
        for child in children:
            if isinstance(child, pipeline):
                messages.extend(message.copy() for message in child.messages)
            elif isinstance(child, Message):
                messages.append(child.copy())
            else:
                raise TypeError(
                    f"A pipeline takes messages and pipelines, got {child!r}; build messages "
                    f"with actor.message(...) (groups cannot be part of a pipeline)."
                )
        for message, next_message in zip(messages, messages[1:], strict=False):
            message.options["pipe_target"] = next_message.asdict()

    def __len__(self) -> int:
        """The number of messages in the pipeline."""
        return len(self.messages)

    def __or__(self, other: Message[Any] | pipeline) -> pipeline:
        """Return a new pipeline with ``other`` appended, on the same broker."""
        return type(self)([*self.messages, other], broker=self.broker)

    def __str__(self) -> str:
        return "pipeline([{}])".format(", ".join(str(m) for m in self.messages))

    __repr__ = __str__

    def _backend(self) -> ResultBackend:
        return self.broker.get_results_backend()

    def _last(self) -> Message[Any]:
        if not self.messages:
            raise ValueError("This pipeline is empty; give it at least one message.")
        return self.messages[-1]

    @property
    def completed(self) -> bool:
        """Whether the last message has a result. Always False if its actor stores none.

        Raises:
          RuntimeError: the broker has no Results middleware.
        """
        try:
            self._last().get_result(backend=self._backend())
        except ResultMissing:
            return False
        return True

    @property
    def completed_count(self) -> int:
        """How many messages, counted from the first, have a result.

        Messages whose actors do not store results are never counted.

        Raises:
          RuntimeError: the broker has no Results middleware.
        """
        backend = self._backend()
        count = 0
        for message in self.messages:
            try:
                message.get_result(backend=backend)
            except ResultMissing:
                break
            count += 1
        return count

    def run(self, *, delay: int | None = None) -> pipeline:
        """Enqueue the first message; the rest follow as each one succeeds.

        Parameters:
          delay: wait at least this many milliseconds before starting; when the first
            message has a ``delay`` option too, the larger one wins.

        Returns:
          This pipeline.

        Raises:
          ValueError: the pipeline is empty.
        """
        if not self.messages:
            raise ValueError("This pipeline is empty; give it at least one message.")
        first = self.messages[0]
        self.broker.enqueue(first, delay=max(delay or 0, first.options.get("delay") or 0) or None)
        return self

    def get_result(self, *, block: bool = False, timeout: int | None = None) -> Any:
        """Return the result of the last message, which is the result of the pipeline.

        Parameters:
          block: wait for it.
          timeout: how long to wait, in milliseconds (default 10 seconds).

        Raises:
          ResultMissing: ``block`` is False and the result is not there.
          ResultTimeout: the result did not arrive in time.
          ResultFailure: the last actor failed.
          RuntimeError: the broker has no Results middleware.
        """
        return self._last().get_result(backend=self._backend(), block=block, timeout=timeout)

    def get_results(self, *, block: bool = False, timeout: int | None = None) -> Iterator[Any]:
        """Yield the result of each message, in order.

        Parameters:
          block: wait for each result.
          timeout: one deadline, in milliseconds, for all the results together; when None,
            each result may take the default 10 seconds.

        Raises:
          ResultMissing: ``block`` is False and a result is not there.
          ResultTimeout: the results did not all arrive in time.
          ResultFailure: an actor failed.
          RuntimeError: the broker has no Results middleware.
        """
        backend = self._backend()
        deadline = _deadline(timeout)
        for message in self.messages:
            yield message.get_result(
                backend=backend, block=block, timeout=_remaining(deadline, timeout)
            )


#: What a group may contain.
GroupChild = Union[Message[Any], "group", pipeline]


class group:  # noqa: N801 - Dramatiq's name
    """Run messages, pipelines and groups in parallel.

    Parameters:
      children: the members; a pipeline counts as one member, its result being its last one.
      broker: where to run it; defaults to the global broker.

    Raises:
      TypeError: a child is not a message, a pipeline or a group.
    """

    def __init__(self, children: Iterable[GroupChild], *, broker: Broker | None = None) -> None:
        self.children: list[GroupChild] = list(children)
        for child in self.children:
            if not isinstance(child, (Message, group, pipeline)):
                raise TypeError(
                    f"A group takes messages, pipelines and groups, got {child!r}; build "
                    f"messages with actor.message(...)."
                )
        self.broker = broker or get_broker()
        self.completion_callbacks: list[dict[str, Any]] = []

    def __len__(self) -> int:
        """The number of members."""
        return len(self.children)

    def __str__(self) -> str:
        return "group([{}])".format(", ".join(str(c) for c in self.children))

    __repr__ = __str__

    def add_completion_callback(self, message: Message[Any]) -> None:
        """Enqueue ``message`` once every member of the group has succeeded.

        Several callbacks may be added. Running the group then needs the ``GroupCallbacks``
        middleware on the broker, and the group must not contain groups.
        """
        self.completion_callbacks.append(message.asdict())

    def _backend(self) -> ResultBackend:
        return self.broker.get_results_backend()

    @property
    def completed(self) -> bool:
        """Whether every member has a result. Members that store no results never count.

        Raises:
          RuntimeError: the broker has no Results middleware.
        """
        return self.completed_count == len(self)

    @property
    def completed_count(self) -> int:
        """How many members, counted from the first, have a result.

        Raises:
          RuntimeError: the broker has no Results middleware.
        """
        count = 0
        for child in self.children:
            try:
                if isinstance(child, group):
                    list(child.get_results())
                elif isinstance(child, pipeline):
                    child.get_result()
                else:
                    child.get_result(backend=self._backend())
            except ResultMissing:
                break
            count += 1
        return count

    def run(self, *, delay: int | None = None) -> group:
        """Enqueue every member.

        With completion callbacks, a fresh barrier is created for this run and each member (the
        last message of each pipeline) carries it, so the member that finishes last enqueues the
        callbacks.

        Parameters:
          delay: delay every member by this many milliseconds.

        Returns:
          This group.

        Raises:
          RuntimeError: there are completion callbacks and the broker has no ``GroupCallbacks``.
          NotImplementedError: there are completion callbacks and the group contains a group.
        """
        children: list[GroupChild] = self.children
        if self.completion_callbacks:
            children = self._with_barrier()
            if not children:
                # Nobody will ever reach the barrier of an empty group: it is complete now.
                for callback in self.completion_callbacks:
                    self.broker.enqueue(Message.from_dict(callback))
                return self
        for child in children:
            if isinstance(child, (group, pipeline)):
                child.run(delay=delay)
            else:
                self.broker.enqueue(child, delay=delay)
        return self

    def _with_barrier(self) -> list[GroupChild]:
        for middleware in self.broker.middleware:
            if isinstance(middleware, GroupCallbacks):
                break
        else:
            raise RuntimeError(
                "Group completion callbacks need the GroupCallbacks middleware; add it with "
                "broker.add_middleware(GroupCallbacks(rate_limiter_backend)). Did you forget "
                "to set it up?"
            )
        if any(isinstance(child, group) for child in self.children):
            raise NotImplementedError(
                "Completion callbacks are not supported on groups that contain groups; "
                "flatten the inner groups into this one."
            )
        if not self.children:
            return []
        # A new barrier on every run: re-running the group must not share the old one.
        completion_uuid = str(uuid.uuid4())
        barrier = Barrier(
            middleware.rate_limiter_backend, completion_uuid, ttl=middleware.barrier_ttl
        )
        barrier.create(len(self.children))
        options = {
            "group_completion_uuid": completion_uuid,
            "group_completion_callbacks": self.completion_callbacks,
        }
        children: list[GroupChild] = []
        for child in self.children:
            if isinstance(child, pipeline):
                messages = child.messages[:]
                messages[-1] = messages[-1].copy(options=options)
                children.append(pipeline(messages, broker=child.broker))
            else:
                assert isinstance(child, Message)
                children.append(child.copy(options=options))
        return children

    def get_results(self, *, block: bool = False, timeout: int | None = None) -> Iterator[Any]:
        """Yield each member's result, in order: a list for a group, the last result for a
        pipeline.

        Parameters:
          block: wait for each result.
          timeout: one deadline, in milliseconds, for all the results together; when None,
            each result may take the default 10 seconds.

        Raises:
          ResultMissing: ``block`` is False and a result is not there.
          ResultTimeout: the results did not all arrive in time.
          ResultFailure: a member failed.
          RuntimeError: the broker has no Results middleware.
        """
        deadline = _deadline(timeout)
        for child in self.children:
            remaining = _remaining(deadline, timeout)
            if isinstance(child, group):
                yield list(child.get_results(block=block, timeout=remaining))
            elif isinstance(child, pipeline):
                yield child.get_result(block=block, timeout=remaining)
            else:
                yield child.get_result(backend=self._backend(), block=block, timeout=remaining)

    def wait(self, *, timeout: int | None = None) -> None:
        """Block until every member has a result.

        Parameters:
          timeout: one deadline for all of them, in milliseconds; when None, each result may
            take the default 10 seconds.

        Raises:
          ResultTimeout: the results did not all arrive in time.
          ResultFailure: a member failed.
        """
        for _ in self.get_results(block=True, timeout=timeout):
            pass
