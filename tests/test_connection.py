from __future__ import annotations

import pytest

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.connection import broker_from_url
from nbqueue.errors import BrokerUnavailable


def test_with_nothing_configured_the_global_broker_is_in_memory():
    broker = nbqueue.get_broker()
    assert isinstance(broker, StubBroker)
    assert nbqueue.get_broker() is broker


def test_the_default_broker_runs_async_actors_and_stores_results():
    broker = nbqueue.get_broker()

    @nbqueue.actor
    async def double(x):
        return 2 * x

    worker = nbqueue.Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        assert double.send(21).get_result(block=True, timeout=10000) == 42
    finally:
        worker.stop()


def test_the_environment_variable_selects_the_broker(monkeypatch):
    monkeypatch.setenv("NBQUEUE_BROKER_URL", "memory://")
    assert isinstance(nbqueue.get_broker(), StubBroker)


def test_connect_sets_the_global_broker():
    broker = nbqueue.connect("memory://")
    assert nbqueue.get_broker() is broker


def test_an_unknown_scheme_is_explained_without_the_password():
    with pytest.raises(BrokerUnavailable, match=r"Unknown broker URL scheme 'kafka'") as info:
        broker_from_url("kafka://user:hunter2@host:9092")
    assert "hunter2" not in str(info.value)
    assert "memory://" in str(info.value)


def test_options_for_the_memory_broker_are_refused():
    with pytest.raises(BrokerUnavailable, match="takes no options"):
        broker_from_url("memory://", namespace="x")


def test_the_default_broker_tells_a_waiting_caller_about_an_unknown_actor():
    from nbqueue import Message
    from nbqueue.results import ResultFailure

    broker = nbqueue.get_broker()
    broker.declare_queue("default")
    message = broker.enqueue(
        Message(queue_name="default", actor_name="missing", args=(), kwargs={}, options={})
    )
    with nbqueue.Worker(broker, worker_timeout=100, worker_threads=1):
        with pytest.raises(ResultFailure, match="missing"):
            message.get_result(block=True, timeout=10000)
