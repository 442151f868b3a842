from __future__ import annotations

import pytest

from nbqueue.brokers.stub import StubBroker
from nbqueue.live import Live
from nbqueue.live.backends import ResultsCache, find_results, resolve_transport
from nbqueue.live.memory import MemoryTransport, memory_transport_for
from nbqueue.results import Results
from nbqueue.results.backends import StubBackend


def test_a_stub_backend_keeps_the_channel_in_memory():
    backend = StubBackend()
    broker = StubBroker(middleware=[Results(backend=backend), Live()])
    transport = resolve_transport(broker)
    assert isinstance(transport, MemoryTransport)
    assert transport is memory_transport_for(backend)
    assert resolve_transport(StubBroker(middleware=[])) is None


def test_the_results_lookup_follows_changes_to_the_middleware():
    broker = StubBroker(middleware=[])
    cache = ResultsCache()
    assert cache.get(broker) is None
    results = Results(backend=StubBackend())
    broker.add_middleware(results)
    assert cache.get(broker) is results is find_results(broker)


@pytest.mark.redis
def test_redis_channels_use_the_broker_namespace_else_the_backends(redis_url, namespace):
    from nbqueue._redis.live import RedisTransport
    from nbqueue.brokers.redis import RedisBroker
    from nbqueue.results.backends import RedisBackend

    backend = RedisBackend(url=redis_url, namespace=f"{namespace}-results")
    redis_broker = RedisBroker(url=redis_url, namespace=namespace, middleware=[])
    try:
        redis_broker.add_middleware(Results(backend=backend))
        on_redis = resolve_transport(redis_broker)
        assert isinstance(on_redis, RedisTransport) and on_redis.namespace == namespace
        assert on_redis is resolve_transport(redis_broker)  # shared per connection

        elsewhere = resolve_transport(StubBroker(middleware=[Results(backend=backend)]))
        assert isinstance(elsewhere, RedisTransport)
        assert elsewhere.namespace == f"{namespace}-results"

        bare = RedisBroker(url=redis_url, namespace=namespace, middleware=[])
        own = resolve_transport(bare)
        assert isinstance(own, RedisTransport) and own.connection is bare.connection
        bare.close()
    finally:
        redis_broker.close()
        backend.close()
