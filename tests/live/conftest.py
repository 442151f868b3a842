"""Fixtures for the live-channel tests: a broker with Live on memory or on real Redis.

Each Redis test gets a fresh namespace (broker keys, result keys and live keys all start with
it) and deletes only that namespace's keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.live import Live, LiveEvent, MessageStatus, Progress, StatusRecord
from nbqueue.middleware import AsyncIO, default_middleware
from nbqueue.results import Results
from nbqueue.results.backends import StubBackend

KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]


def _middleware(backend: Any, **live: Any) -> list[nbqueue.Middleware]:
    return [
        *(m() for m in default_middleware),
        AsyncIO(),
        Results(backend=backend, store_results=True),
        Live(**live),
    ]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_broker(
    kind: str, request: pytest.FixtureRequest, namespace: str
) -> Iterator[Callable[..., nbqueue.Broker]]:
    """Make the global broker, on memory or Redis, with Live(**options) as its last middleware."""
    made: list[nbqueue.Broker] = []

    def make(**live: Any) -> nbqueue.Broker:
        broker: nbqueue.Broker
        if kind == "memory":
            broker = StubBroker(middleware=_middleware(StubBackend(), **live))
        else:
            from nbqueue.brokers.redis import RedisBroker
            from nbqueue.results.backends import RedisBackend

            url = request.getfixturevalue("redis_url")
            backend = RedisBackend(url=url, namespace=namespace, use_namespace_prefix_keys=True)
            broker = RedisBroker(
                url=url, namespace=namespace, middleware=_middleware(backend, **live)
            )
        broker.emit_after("process_boot")
        nbqueue.set_broker(broker)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        if kind == "redis":
            from tests.brokers._redis import delete_namespace

            delete_namespace(broker.client, namespace)  # type: ignore[attr-defined]
            for middleware in broker.middleware:
                if isinstance(middleware, Results):
                    middleware.backend.close()  # type: ignore[attr-defined]
        broker.close()


@pytest.fixture
def live_broker(make_broker: Callable[..., nbqueue.Broker]) -> nbqueue.Broker:
    return make_broker()


def follow(message: Any, timeout: int | None = None, **kwargs: Any) -> list[LiveEvent]:
    """Return a message's events until it finishes (by default however long that takes: the
    pytest timeout catches a message that never does)."""
    stream = message.events(timeout=timeout, **kwargs)
    events = list(stream)
    assert stream.finished, f"message did not finish in {timeout} ms: {events}"
    return events


def wait_for(message: Any, status: MessageStatus, timeout: int | None = None) -> list[LiveEvent]:
    """Follow a message's events until one says ``status``; return them."""
    seen = []
    for event in message.events(timeout=timeout):
        seen.append(event)
        if event.status is status:
            return seen
    raise AssertionError(f"{message} never reached {status}: {seen}")


def statuses(events: list[LiveEvent]) -> list[str]:
    return [str(e.status) for e in events if e.kind == "status"]


def text(events: list[LiveEvent], stream: str = "stream") -> str:
    return "".join(
        e.data["text"] for e in events if e.kind == "output" and e.data.get("stream") == stream
    )


def record(message: Any) -> StatusRecord:
    """Return a message's status record, which must exist."""
    found = message.status()
    assert found is not None, f"{message} has no status record"
    return found


def reports(events: list[LiveEvent]) -> list[Progress]:
    return [e.progress for e in events if e.progress is not None]
