"""Brokers for the notebook-actor tests: ``make_broker()`` returns a new broker on the same
server and namespace each call, as separate processes would have (one for the notebook, one per
worker). RabbitMQ has no namespace, so its store gets the test's namespace as its prefix and
the tests put their actors on a queue named after the namespace."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import nbqueue
from nbqueue.remote.store import set_store
from tests.brokers import _rabbitmq, _redis
from tests.conftest import RABBITMQ_URL, REDIS_URL, require_server

REAL_BROKERS = [
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
]


@pytest.fixture(params=REAL_BROKERS)
def make_broker(
    request: pytest.FixtureRequest, namespace: str
) -> Iterator[Callable[[], nbqueue.Broker]]:
    kind = request.param
    made: list[nbqueue.Broker] = []

    def make() -> nbqueue.Broker:
        broker: nbqueue.Broker
        if kind == "redis":
            broker = _redis.make_broker(require_server("Redis", REDIS_URL), namespace)
        else:
            from nbqueue._rabbitmq.code_store import RabbitmqCodeStore

            broker = _rabbitmq.make_broker(require_server("RabbitMQ", RABBITMQ_URL), namespace)
            set_store(broker, RabbitmqCodeStore(broker, prefix=namespace))
        broker.emit_after("process_boot")
        made.append(broker)
        return broker

    yield make
    if not made:
        return
    if kind == "redis":
        _redis.cleanup(made[0], namespace)  # type: ignore[arg-type]
        for broker in made:
            broker.close()
        return
    from nbqueue.remote.store import store_for

    store = store_for(made[0])
    hashes = [entry.code_hash for entry in store.published()]
    names = [f"{namespace}.code.{h}" for h in hashes] + [f"{namespace}.code.index"]
    for broker in made:
        store_for(broker).close()
        _rabbitmq.cleanup(broker, namespace)  # type: ignore[arg-type]
    _rabbitmq.delete_queues(made[0]._params, names)  # type: ignore[attr-defined]
