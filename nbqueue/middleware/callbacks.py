"""Run other actors when a message succeeds or fails."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Middleware

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy

__all__ = ["Callbacks"]


def _callback_name(value: Any) -> str | None:
    # Actor options may hold the actor itself; message options always hold its name.
    if value is None or isinstance(value, str):
        return value
    name = getattr(value, "actor_name", None)
    if isinstance(name, str):
        return name
    raise TypeError(f"A callback must be an actor or an actor name, got {value!r}.")


class Callbacks(Middleware):
    """Send a message to another actor after each attempt at a message, by outcome.

    With the ``on_success`` option (on the message, then the actor) the named actor receives
    ``(message_dict, result)``. With ``on_failure`` it receives ``(message_dict, {"type":
    exception class name, "message": str(exception)})``, after *every* failed attempt, including
    ones the Retries middleware will retry. The callback actor must be declared on the same
    broker; ``send_with_options`` accepts actors as well as names and stores the name.
    """

    @property
    def actor_options(self) -> set[str]:
        return {"on_success", "on_failure"}

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        actor = broker.actor_for(message)
        option = "on_success" if exception is None else "on_failure"
        name = _callback_name(message.options.get(option) or actor.options.get(option))
        if not name:
            return

        # Copy the options: later middleware (Retries) keep changing the live dict.
        message_data = {**message.asdict(), "options": dict(message.options)}
        if exception is None:
            broker.get_actor(name).send(message_data, result)
        else:
            failure = {"type": type(exception).__name__, "message": str(exception)}
            broker.get_actor(name).send(message_data, failure)
