"""What the Jobs sidebar does to a job from its history: cancel, retry, requeue.

The same three steps serve a Redis namespace (called by the Jupyter server, with a broker of
that namespace) and the embedded broker (called in the kernel that ran the job, from the
commands the server leaves in the SQLite history).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..common import q_name
from ..live import abort as _abort
from ..live.middleware import DEFAULT_TTL, transport_for
from ..live.transport import Write
from ..message import Message, generate_unique_id

if TYPE_CHECKING:
    from ..broker import Broker

__all__ = ["ATTEMPT_OPTIONS", "cancel", "copy_for_retry", "requeue", "retry"]

#: Options that belong to one attempt or one broker's bookkeeping, dropped from a retried copy.
ATTEMPT_OPTIONS = frozenset({"eta", "retries", "traceback", "redis_message_id", "scheduled_at"})


def cancel(broker: Broker, message: dict[str, Any]) -> bool:
    """Abort the job: skipped if queued, interrupted if running. False when it had finished."""
    return _abort(Message.from_dict(message), broker=broker)


def copy_for_retry(message: dict[str, Any], new_id: str | None = None) -> Message[Any]:
    """Return a copy of a stored message to send again: a new id, a fresh attempt count."""
    original = Message.from_dict(message)
    options = {k: v for k, v in original.options.items() if k not in ATTEMPT_OPTIONS}
    return Message(
        queue_name=q_name(original.queue_name),
        actor_name=original.actor_name,
        args=original.args,
        kwargs=original.kwargs,
        options=options,
        message_id=new_id or generate_unique_id(),
    )


def retry(broker: Broker, message: dict[str, Any], new_id: str | None = None) -> Message[Any]:
    """Send a copy of the job's message under a new id; return it as enqueued."""
    return broker.enqueue(copy_for_retry(message, new_id))


def requeue(broker: Broker, queue_name: str, message_id: str) -> bool:
    """Move a dead letter back to its queue and mark its live status ``enqueued`` again.

    Returns:
      False when the queue holds no dead letter of that id.

    Raises:
      NotImplementedError: the broker cannot take one letter out of its dead letters.
    """
    message = broker.requeue_dead_letter(queue_name, message_id)
    if message is None:
        return False
    transport = transport_for(broker)
    record = transport.status(message_id)
    # A worker's write (the producer's "initial" never applies over a final status), at the
    # record's own attempt, so the next attempt's writes still apply after it.
    transport.write(
        [
            Write(
                message_id,
                DEFAULT_TTL,
                mode="worker",
                attempt=record.attempt if record is not None else 0,
                fields={"status": "enqueued", "finished_at": "", "error": ""},
                status_event={"status": "enqueued", "by": "requeue"},
            )
        ]
    )
    return True
