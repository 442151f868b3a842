"""Retry failed messages with exponential backoff."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..common import compute_backoff, current_millis
from ..errors import MessageTooLarge, Retry
from ..logging import get_logger
from .base import Middleware

if TYPE_CHECKING:
    from ..actor import Actor
    from ..broker import Broker, MessageProxy

__all__ = ["DEFAULT_MAX_BACKOFF", "DEFAULT_MIN_BACKOFF", "Retries"]

#: The backoff before the first retry, in milliseconds (15 seconds).
DEFAULT_MIN_BACKOFF = 15000

#: The longest backoff, in milliseconds (7 days); brokers do not hold delayed messages longer.
DEFAULT_MAX_BACKOFF = 86400000 * 7

_MISSING = object()


def _option(message: MessageProxy, actor: Actor[Any, Any], name: str, default: Any) -> Any:
    # "Key present" lookup: an explicit 0 (or None) on the message or actor is honoured.
    value = message.options.get(name, _MISSING)
    if value is _MISSING:
        value = actor.options.get(name, default)
    return value


def _throws_matches(exception: BaseException, throws: Any) -> bool:
    candidates = throws if isinstance(throws, (tuple, list)) else (throws,)
    return any(isinstance(c, type) and isinstance(exception, c) for c in candidates)


class Retries(Middleware):
    """Retry messages whose actor raised, waiting longer after each failure.

    Settings come from the message's options, then the actor's, then this middleware; an
    explicit ``max_retries=0`` is honoured and means "never retry". The backoff before retry
    ``n`` (counting from 0) is ``min_backoff * 2**n`` milliseconds, jittered by a factor in
    [1, 2) and capped at ``max_backoff``. Raise ``Retry(delay=ms)`` in an actor to choose the
    delay yourself; the worker does not log ``Retry`` as an error.

    A message that runs out of retries is dead-lettered with the reason
    ``"retries_exhausted"``, and the actor named by ``on_retry_exhausted`` (if any) receives
    ``(message_dict, {"retries": n, "max_retries": m})``. An exception matching the ``throws``
    option (an exception class or a tuple of them) dead-letters the message at once with the
    reason ``"throws"``. A message that another middleware failed first (an aborted one, for
    instance) is not retried.

    Parameters:
      max_retries: how many times a message is retried; ``None`` retries forever.
      min_backoff: the backoff before the first retry, in milliseconds.
      max_backoff: the longest backoff, in milliseconds; never more than 7 days.
      retry_when: ``retry_when(retries_so_far, exception)`` returns whether to retry; when set
        it replaces the ``max_retries`` check.
    """

    def __init__(
        self,
        *,
        max_retries: int | None = 20,
        min_backoff: int = DEFAULT_MIN_BACKOFF,
        max_backoff: int = DEFAULT_MAX_BACKOFF,
        retry_when: Callable[[int, BaseException], bool] | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.max_retries = max_retries
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.retry_when = retry_when

    @property
    def actor_options(self) -> set[str]:
        return {
            "max_retries",
            "min_backoff",
            "max_backoff",
            "retry_when",
            "throws",
            "on_retry_exhausted",
        }

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or message.failed:
            # A message another middleware already failed (e.g. one that Live aborted) is
            # dead-lettered, never retried as well.
            return

        actor = broker.actor_for(message)
        throws = message.options.get("throws") or actor.options.get("throws")
        if throws and _throws_matches(exception, throws):
            self.logger.info(
                "Message %s raised %s, which its actor throws; it was dead-lettered.",
                message.message_id,
                type(exception).__name__,
            )
            message.fail(reason="throws")
            return

        options = message.options
        retries: int = options.setdefault("retries", 0)
        options["retries"] = retries + 1
        options["traceback"] = "".join(
            traceback.format_exception(
                type(exception), exception, exception.__traceback__, limit=30
            )
        )
        options["requeue_timestamp"] = current_millis()

        max_retries = _option(message, actor, "max_retries", self.max_retries)
        retry_when: Callable[[int, BaseException], bool] | None = actor.options.get(
            "retry_when", self.retry_when
        )
        if retry_when is not None:
            give_up = not retry_when(retries, exception)
        else:
            give_up = max_retries is not None and retries >= max_retries
        if give_up:
            self.logger.warning(
                "Message %s failed after %d retries; it was dead-lettered.",
                message.message_id,
                retries,
            )
            message.fail(reason="retries_exhausted")
            target = message.options.get("on_retry_exhausted") or actor.options.get(
                "on_retry_exhausted"
            )
            if target:
                target_name = target if isinstance(target, str) else target.actor_name
                message_data = {**message.asdict(), "options": dict(options)}
                broker.get_actor(target_name).send(
                    message_data, {"retries": retries, "max_retries": max_retries}
                )
            return

        if isinstance(exception, Retry) and exception.delay is not None:
            delay = int(exception.delay)
        else:
            min_backoff = _option(message, actor, "min_backoff", self.min_backoff)
            max_backoff = _option(message, actor, "max_backoff", self.max_backoff)
            max_backoff = min(max_backoff, DEFAULT_MAX_BACKOFF)
            _, backoff = compute_backoff(retries, factor=min_backoff, max_backoff=max_backoff)
            delay = int(backoff)

        self.logger.info("Retrying message %s in %d ms.", message.message_id, delay)
        broker.emit_before("retry", message, delay)
        try:
            broker.enqueue(message.message, delay=delay)
        except MessageTooLarge as e:
            # The retry's options (the traceback) pushed it over the limit: dead-letter it
            # rather than acknowledge a message that was never re-enqueued.
            self.logger.error("Message %s cannot be retried: %s", message.message_id, e)
            message.fail(reason="too_large")
