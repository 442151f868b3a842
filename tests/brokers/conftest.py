"""The ``broker`` fixture: the contract suite runs against every broker.

Each real broker has a support module, ``tests/brokers/_<kind>.py``, with
``make_broker(url, namespace)``, ``cleanup(broker, namespace)`` and ``inject_raw(broker,
queue_name, data)``. Every test gets a fresh namespace and cleans only that.
"""

from __future__ import annotations

import heapq
import importlib
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

import nbqueue
from nbqueue.brokers.stub import StubBroker
from tests.conftest import RABBITMQ_URL, REDIS_URL, require_server

BROKERS = [
    pytest.param("stub", id="stub"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
]

_URLS = {"redis": ("Redis", REDIS_URL), "rabbitmq": ("RabbitMQ", RABBITMQ_URL)}


def support(kind: str) -> ModuleType:
    return importlib.import_module(f"tests.brokers._{kind}")


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, namespace: str) -> Iterator[nbqueue.Broker]:
    """The broker contract runs against every broker in BROKERS."""
    kind = request.param
    if kind == "stub":
        broker: nbqueue.Broker = StubBroker()
        broker.emit_after("process_boot")
        nbqueue.set_broker(broker)
        yield broker
        broker.flush_all()
        broker.close()
        return
    name, url = _URLS[kind]
    url = require_server(name, url)
    module = support(kind)
    broker = module.make_broker(url, namespace)
    broker.emit_after("process_boot")
    nbqueue.set_broker(broker)
    try:
        yield broker
    finally:
        module.cleanup(broker, namespace)
        broker.close()


def _inject_stub(broker: StubBroker, queue_name: str, data: bytes) -> None:
    queue = broker._store[queue_name]
    with broker._lock:
        heapq.heappush(queue.entries, (0, next(broker._sequence), data))
        queue.unfinished += 1
        queue.not_empty.notify_all()


@pytest.fixture
def inject_raw() -> Callable[[nbqueue.Broker, str, bytes], None]:
    """Put raw bytes on a queue, bypassing the encoder, as a foreign or broken producer would."""

    def inject(broker: nbqueue.Broker, queue_name: str, data: bytes) -> None:
        if isinstance(broker, StubBroker):
            _inject_stub(broker, queue_name, data)
        else:
            kind = type(broker).__module__.rsplit(".", 1)[-1]
            support(kind).inject_raw(broker, queue_name, data)

    return inject


@pytest.fixture
def redis_broker(redis_url: str, namespace: str) -> Iterator[object]:
    """A RedisBroker under the test's own namespace, booted as a worker process would be."""
    redis_support = support("redis")
    broker = redis_support.make_broker(redis_url, namespace)
    broker.emit_after("process_boot")
    nbqueue.set_broker(broker)
    yield broker
    broker.close()
    redis_support.cleanup(broker, namespace)
