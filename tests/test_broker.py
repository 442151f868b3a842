"""The broker contract's base classes: what every broker and message proxy has by default."""

from __future__ import annotations

from typing import Any

import pytest

from nbqueue import Message
from nbqueue.broker import MessageProxy


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
