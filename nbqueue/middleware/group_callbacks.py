"""GroupCallbacks: enqueue a group's completion callbacks once every member has finished."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..message import Message
from ..rate_limits import Barrier
from .base import Middleware

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy
    from ..rate_limits import RateLimiterBackend

__all__ = ["GroupCallbacks"]


class GroupCallbacks(Middleware):
    """Fire the completion callbacks of groups (``group.add_completion_callback``).

    ``group.run()`` creates a barrier for its members; each member that succeeds arrives at it
    without blocking, and the one that arrives last enqueues the callbacks. By default a member
    that fails for good never arrives, so the callbacks do not run.

    Example::

        backend = nbqueue.rate_limits.backends.StubBackend()
        broker.add_middleware(GroupCallbacks(backend))
        g = group([fetch.message(url) for url in urls])
        g.add_completion_callback(report.message())
        g.run()

    Parameters:
      rate_limiter_backend: where group barriers live; every process that runs group members
        must share it.
      barrier_ttl: how long a group barrier lives, in milliseconds (default one day).
      fire_on_failure: also count members that failed for good (retries exhausted, dead-lettered
        or skipped), so the callbacks run when the group is finished rather than succeeded.
    """

    def __init__(
        self,
        rate_limiter_backend: RateLimiterBackend,
        *,
        barrier_ttl: int = 86400000,
        fire_on_failure: bool = False,
    ) -> None:
        self.rate_limiter_backend = rate_limiter_backend
        self.barrier_ttl = barrier_ttl
        self.fire_on_failure = fire_on_failure

    def __repr__(self) -> str:
        return f"GroupCallbacks({self.rate_limiter_backend!r}, barrier_ttl={self.barrier_ttl!r})"

    def _arrive(self, broker: Broker, message: MessageProxy) -> None:
        completion_uuid = message.options.get("group_completion_uuid")
        callbacks = message.options.get("group_completion_callbacks")
        if not completion_uuid or not callbacks:
            return
        barrier = Barrier(self.rate_limiter_backend, completion_uuid, ttl=self.barrier_ttl)
        if barrier.wait(block=False):
            for callback in callbacks:
                broker.enqueue(Message.from_dict(callback))

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """A member succeeded: arrive at its group's barrier."""
        if exception is None and not message.failed:
            self._arrive(broker, message)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """A member was skipped without failing: with ``fire_on_failure``, it arrives."""
        if self.fire_on_failure and not message.failed:
            self._arrive(broker, message)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        """A member failed for good: with ``fire_on_failure``, it arrives."""
        if self.fire_on_failure and message.failed:
            self._arrive(broker, message)
