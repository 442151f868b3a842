"""The arguments of the three queues behind every nbqueue queue, classic or quorum.

Classic queues (the default) carry exactly Dramatiq's arguments. Quorum queues
(``queue_type="quorum"``, RabbitMQ 3.10 or later) are replicated over a cluster's nodes by Raft;
``q`` and ``q.DQ`` then carry only what quorum queues accept on 3.10:

* ``x-queue-type: quorum``; durable, never exclusive or auto-delete (nbqueue never asks for
  either);
* the same dead-lettering to ``q.XQ`` as classic queues, with ``x-dead-letter-strategy:
  at-least-once`` (and the ``x-overflow: reject-publish`` it requires; nothing sets a length
  limit, so it refuses nothing), so a message RabbitMQ dead-letters is kept until ``q.XQ`` has it;
* ``x-delivery-limit``: a message returned to the queue more often than that (its worker died,
  its channel closed, it was requeued at shutdown) is dead-lettered; ``x-death`` then says
  ``delivery_limit``, which ``get_dead_letters()`` reports as the reason;
* no ``x-max-priority``: quorum queues have no priorities on 3.10 (they refuse the argument).

``q.XQ`` is a quorum queue too, with the same ``x-message-ttl`` and no delivery limit (peeking
at dead letters returns them to the queue, which counts as a delivery).
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import BrokerError

__all__ = [
    "DEFAULT_DELIVERY_LIMIT",
    "QUEUE_TYPES",
    "QUEUE_TYPE_ENV",
    "dead_letter_queue_arguments",
    "existing_type",
    "queue_arguments",
    "refused_declaration",
    "resolve_delivery_limit",
    "resolve_queue_type",
]

#: The environment variable that chooses the queue type when neither the keyword nor the URL does.
QUEUE_TYPE_ENV = "NBQUEUE_RABBITMQ_QUEUE_TYPE"

QUEUE_TYPES = ("classic", "quorum")

#: How many times a quorum queue hands a message back out before dead-lettering it.
DEFAULT_DELIVERY_LIMIT = 20

_INEQUIVALENT = re.compile(r"inequivalent arg '([\w-]+)'.*? but current is (.*)")
_VALUE = re.compile(r"^(?:the value )?'([^']*)'")


def resolve_queue_type(given: str | None, from_url: str | None) -> str:
    """Return ``classic`` or ``quorum``: the keyword, else the URL's ``queue_type``, else
    ``$NBQUEUE_RABBITMQ_QUEUE_TYPE``, else ``classic``.

    Raises:
      ValueError: an unknown type, or the keyword and the URL disagree.
    """
    if given is not None and from_url is not None and given.lower() != from_url.lower():
        raise ValueError(
            f"queue_type={given!r} and the URL's queue_type={from_url!r} disagree; give it once."
        )
    source, value = "queue_type", given
    if value is None:
        source, value = "the URL's queue_type", from_url
    if value is None:
        source, value = QUEUE_TYPE_ENV, os.environ.get(QUEUE_TYPE_ENV, "").strip() or None
    if value is None:
        return "classic"
    if value.lower() not in QUEUE_TYPES:
        raise ValueError(
            f"{source} must be 'classic' or 'quorum', got {value!r}; fix it or leave it out for "
            "classic queues."
        )
    return value.lower()


def resolve_delivery_limit(given: int | None, from_url: str | None) -> int | None:
    """Return the delivery limit (``None``: no limit): the URL's ``delivery_limit`` when given,
    else the keyword; 0 means no limit.

    Raises:
      ValueError: not a whole number of at least 0.
    """
    value: Any = given
    if from_url is not None:
        value = None if from_url.strip().lower() in ("", "none") else from_url
    if value is None:
        return None
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = -1
    if limit < 0 or isinstance(value, (bool, float)):
        raise ValueError(
            f"delivery_limit must be a whole number of at least 0 (0 or None: no limit), "
            f"got {value!r}."
        )
    return limit or None


def queue_arguments(
    queue_type: str, dead_letters: str, max_priority: int | None, delivery_limit: int | None
) -> dict[str, Any]:
    """The arguments of ``q`` and ``q.DQ``; ``dead_letters`` is ``q.XQ``."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letters,
    }
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
        arguments["x-dead-letter-strategy"] = "at-least-once"
        arguments["x-overflow"] = "reject-publish"
        if delivery_limit:
            arguments["x-delivery-limit"] = delivery_limit
    elif max_priority:
        arguments["x-max-priority"] = max_priority
    return arguments


def dead_letter_queue_arguments(queue_type: str, ttl: int) -> dict[str, Any]:
    """The arguments of ``q.XQ``: dead letters expire after ``ttl`` milliseconds."""
    arguments: dict[str, Any] = {"x-message-ttl": ttl}
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    return arguments


def existing_type(text: str, queue_type: str) -> str | None:
    """Tell the type of an existing queue from RabbitMQ's 406 text, or ``None`` when it does not.

    RabbitMQ names only the first argument that differs, in an order of its own (``x-overflow``
    and ``x-max-priority`` come before ``x-queue-type``), so the arguments only one type has
    tell the type too.
    """
    match = _INEQUIVALENT.search(text)
    if match is None:
        return None
    argument, current = match.group(1), match.group(2)
    value = _VALUE.search(current)
    if argument == "x-queue-type":
        return "classic" if value is None else value.group(1)
    if queue_type == "quorum":
        # nbqueue's quorum queues always carry these; classic ones may have a priority.
        if argument in ("x-overflow", "x-dead-letter-strategy") and value is None:
            return "classic"
        if argument == "x-max-priority" and value is not None:
            return "classic"
    elif argument in ("x-dead-letter-strategy", "x-delivery-limit") and value is not None:
        return "quorum"
    return None


def refused_declaration(
    name: str,
    canonical: str,
    error: BrokerError,
    queue_type: str,
    max_priority: int | None,
    delivery_limit: int | None,
) -> BrokerError:
    """The error for a declaration RabbitMQ refused with 406: say what differs and what to do."""
    text = str(error)
    existing = existing_type(text, queue_type)
    if existing is not None and existing != queue_type:
        return BrokerError(
            f"Queue {name!r} already exists on RabbitMQ as a {existing} queue, but this broker "
            f"declares {queue_type} queues; use queue_type={existing!r} like the producers and "
            f"workers that made it (Dramatiq's are classic), or drain and delete {canonical!r}, "
            f"'{canonical}.DQ' and '{canonical}.XQ' to switch."
        )
    if queue_type == "quorum":
        return BrokerError(
            f"Queue {name!r} already exists on RabbitMQ with other arguments ({text}); every "
            f"producer and worker must use the same queue_type and delivery_limit (this broker: "
            f"quorum, {delivery_limit}), or delete the queue."
        )
    return BrokerError(
        f"Queue {name!r} already exists on RabbitMQ with other arguments ({text}); every "
        f"producer and worker must use the same max_priority (this broker: {max_priority}) and "
        f"queue_type (this broker: classic), or delete the queue."
    )
