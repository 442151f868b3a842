"""Feed the result of one actor into the next step of a pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..message import Message
from .base import Middleware

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy

__all__ = ["Pipelines"]


class Pipelines(Middleware):
    """Enqueue the next step of a pipeline when a step succeeds.

    ``pipeline()`` stores the next message, as a dict, in each step's ``pipe_target`` option.
    When a step returns without failing, the next message is enqueued with the step's result
    appended to its arguments, after the next message's ``delay`` option (milliseconds) if it
    has one. The ``pipe_ignore`` option, read from the next message and then from the finished
    step's actor, enqueues it without the result.
    """

    @property
    def actor_options(self) -> set[str]:
        return {"pipe_ignore", "pipe_target"}

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is not None or message.failed:
            return

        target = message.options.get("pipe_target")
        if target is None:
            return

        actor = broker.actor_for(message)
        next_message = Message.from_dict(target)
        if not (next_message.options.get("pipe_ignore") or actor.options.get("pipe_ignore")):
            next_message = next_message.copy(args=(*next_message.args, result))
        broker.enqueue(next_message, delay=next_message.options.get("delay"))
