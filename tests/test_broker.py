"""The broker contract's base classes: what every broker and message proxy has by default."""

from __future__ import annotations

from typing import Any

import pytest

import nbqueue
from nbqueue import Message
from nbqueue.broker import Broker, Consumer, DeadLetter, MessageProxy, PreparedMessage, QueueStats
from nbqueue.errors import EncodeError, MessageTooLarge


class ListBroker(Broker):
    """A third-party broker written against the base class alone: it prepares each message
    with ``prepare_enqueue`` and keeps what it would send in a list."""

    def __init__(self) -> None:
        super().__init__(middleware=[])
        self.sent: list[PreparedMessage] = []

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        prepared = self.prepare_enqueue(message, delay)
        self.sent.append(prepared)
        self.emit_after("enqueue", prepared[0], delay)
        return prepared[0]

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Consumer:
        raise NotImplementedError

    def declare_queue(self, queue_name: str) -> None:
        self.queues[queue_name] = None

    def flush(self, queue_name: str) -> None:
        self.sent.clear()

    def flush_all(self) -> None:
        self.sent.clear()

    def join(self, queue_name: str, *, timeout: int | None = None) -> None:
        pass

    def queue_stats(self) -> dict[str, QueueStats]:
        return {}

    def get_dead_letters(self, queue_name: str, *, limit: int | None = None) -> list[DeadLetter]:
        return []


def _message(queue: str = "q", *args: Any, **options: Any) -> Message[Any]:
    return Message(queue_name=queue, actor_name="a", args=args, kwargs={}, options=options)


def test_a_proxy_exposes_the_stuffed_exception_read_only_until_cleared():
    proxy = MessageProxy(_message())
    seen: list[BaseException | None] = [proxy.exception]
    error = RuntimeError("boom")
    proxy.stuff_exception(error)
    seen.append(proxy.exception)
    with pytest.raises(AttributeError):
        setattr(proxy, "exception", None)  # noqa: B010 - what a caller writing it would do
    seen.append(proxy.exception)
    proxy.clear_exception()
    seen.append(proxy.exception)
    assert seen == [None, error, error, None]


def test_a_broker_without_a_server_has_nothing_to_check_and_does_not_validate_batches():
    broker = ListBroker()
    broker.check_server()  # a no-op, inherited
    assert broker.validates_batches is False
    assert broker.max_message_size is None


def test_send_many_checks_the_batch_itself_on_a_broker_that_does_not_validate_batches():
    broker = ListBroker()

    @nbqueue.actor(broker=broker)
    def takes(x):
        pass

    with pytest.raises(EncodeError, match=r"args\[0\]"):
        takes.send_many([1, 2, {3}])
    assert broker.sent == []  # the actor found the bad item before enqueueing the first
    takes.send_many([1, 2])
    assert [message.args for message, _, _ in broker.sent] == [(1,), (2,)]


def test_prepare_enqueue_keeps_the_queue_name_without_a_delay_and_uses_the_dq_with_one():
    broker = ListBroker()
    message = _message("q.DQ", 1, priority=3)
    now, now_data, now_queue = broker.prepare_enqueue(message)
    assert now is message  # nothing to change: no copy
    assert (now_queue, now_data) == ("q", message.encode())
    later, _, later_queue = broker.prepare_enqueue(message, 0, options={"mine": "x"})
    assert later_queue == later.queue_name == "q.DQ"
    assert list(later.options) == ["priority", "mine", "eta"]
    assert later.options["eta"] >= message.message_timestamp
    assert message.options == {"priority": 3}  # the original is unchanged
    broker.max_message_size = len(now_data) - 1
    with pytest.raises(MessageTooLarge):
        broker.prepare_enqueue(message)
