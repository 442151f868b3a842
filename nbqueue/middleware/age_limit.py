"""Drop messages that waited in a queue for too long."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import current_millis
from ..logging import get_logger
from .base import Middleware, SkipMessage

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy

__all__ = ["AgeLimit"]


class AgeLimit(Middleware):
    """Dead-letter messages older than their age limit instead of running them.

    A message's age is measured from its ``message_timestamp``, which retries and delays keep, so
    the limit covers the whole life of a message. Expired messages are dead-lettered with the
    reason ``"max_age"``.

    The limit comes from the message's ``max_age`` option, then the actor's, then this default.
    A falsy value (``0`` or ``None``) falls through to the next one, as in Dramatiq.

    Parameters:
      max_age: the default age limit in milliseconds; ``None`` means messages never expire.
    """

    def __init__(self, *, max_age: int | None = None) -> None:
        self.logger = get_logger(__name__, type(self))
        self.max_age = max_age

    @property
    def actor_options(self) -> set[str]:
        return {"max_age"}

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        actor = broker.actor_for(message)
        max_age = message.options.get("max_age") or actor.options.get("max_age", self.max_age)
        if not max_age:
            return

        if current_millis() - message.message_timestamp >= max_age:
            self.logger.warning(
                "Message %s exceeded its age limit of %d ms; it was dead-lettered.",
                message.message_id,
                max_age,
            )
            message.fail(reason="max_age")
            raise SkipMessage(
                f"Message {message.message_id!r} is older than its max_age of {max_age} ms; "
                f"raise max_age if it should still run."
            )
