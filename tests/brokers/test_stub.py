"""Behaviour specific to the in-memory broker."""

from __future__ import annotations

import pytest

import nbqueue
from nbqueue import Message, QueueNotFound
from nbqueue.brokers.stub import StubBroker
from tests.brokers.recording import Enqueued


def _next(consumer):
    message = next(consumer)
    assert message is not None
    return message


def _message(queue="q", **options):
    return Message(queue_name=queue, actor_name="a", args=(), kwargs={}, options=options)


def test_enqueueing_to_an_undeclared_queue_says_how_to_declare_it():
    broker = StubBroker()
    with pytest.raises(QueueNotFound, match=r"declare an actor on it"):
        broker.enqueue(_message("nowhere"))


def test_a_delayed_enqueue_to_an_undeclared_queue_names_the_queue_to_declare():
    # Fixed: the error named the delay queue, 'nowhere.DQ', as the queue to declare.
    broker = StubBroker()
    with pytest.raises(QueueNotFound, match=r"declare_queue\('nowhere'\)"):
        broker.enqueue(_message("nowhere"), delay=10)


def test_join_re_raises_the_actors_exception_by_default(stub_broker, stub_worker):
    @nbqueue.actor(max_retries=0)
    def fails():
        raise ValueError("bad input")

    fails.send()
    with pytest.raises(ValueError, match="bad input"):
        stub_broker.join("default", timeout=10000)
    stub_broker.join("default", timeout=10000, fail_fast=False)
    stub_broker.flush("default")
    stub_broker.join("default", timeout=10000)


def test_flush_all_empties_dead_letter_lists_in_place(stub_broker, stub_worker):
    @nbqueue.actor(max_retries=0)
    def fails():
        raise ValueError("x")

    fails.send()
    stub_broker.join("default", timeout=10000, fail_fast=False)
    letters = stub_broker.dead_letters_by_queue["default"]
    assert len(letters) == 1 and stub_broker.dead_letters == letters
    stub_broker.flush_all()
    assert letters == [] and stub_broker.dead_letters == []
    assert stub_broker.get_dead_letters("default") == []


def test_a_consumer_never_holds_more_than_its_prefetch():
    broker = StubBroker()
    broker.declare_queue("q")
    for _ in range(5):
        broker.enqueue(_message())
    consumer = broker.consume("q", prefetch=2, timeout=10)
    first, _ = _next(consumer), _next(consumer)
    assert next(consumer) is None
    consumer.ack(first)
    assert next(consumer) is not None
    assert broker.queue_stats()["q"].in_flight == 2


def test_requeued_and_closed_messages_return_to_their_place():
    broker = StubBroker()
    broker.declare_queue("q")
    sent = [broker.enqueue(_message(n=i)) for i in range(3)]
    consumer = broker.consume("q", prefetch=3, timeout=10)
    got = [_next(consumer) for _ in range(3)]
    consumer.requeue(got[:1])
    consumer.close()
    again = broker.consume("q", prefetch=3, timeout=10)
    assert [_next(again).message_id for _ in range(3)] == [m.message_id for m in sent]


def test_acknowledging_twice_is_harmless():
    broker = StubBroker()
    broker.declare_queue("q")
    broker.enqueue(_message())
    broker.enqueue(_message())
    consumer = broker.consume("q", prefetch=2, timeout=10)
    message = _next(consumer)
    consumer.ack(message)
    consumer.ack(message)
    stats = broker.queue_stats()["q"]
    assert (stats.ready, stats.in_flight) == (1, 0)


def test_declaring_a_queue_also_declares_its_delay_queue():
    broker = StubBroker()
    broker.declare_queue("q")
    broker.declare_queue("q")
    assert broker.get_declared_queues() == {"q"}
    assert broker.get_declared_delay_queues() == {"q.DQ"}


def test_middleware_added_or_removed_in_place_still_runs_or_stops(stub_broker):
    seen = []

    class Spy(nbqueue.Middleware):
        def before_enqueue(self, broker, message, delay):
            seen.append(message.message_id)

    stub_broker.declare_queue("q")
    stub_broker.enqueue(_message())
    spy = Spy()
    stub_broker.middleware.append(spy)
    stub_broker.enqueue(_message())
    stub_broker.middleware.remove(spy)
    stub_broker.enqueue(_message())
    stub_broker.add_middleware(spy)
    stub_broker.enqueue(_message())
    stub_broker.remove_middleware(spy)
    stub_broker.enqueue(_message())
    assert len(seen) == 2


def test_on_a_broker_whose_sends_are_complete_a_pipelined_block_runs_as_it_is(stub_broker):
    recorder = Enqueued()
    stub_broker.add_middleware(recorder)
    stub_broker.declare_queue("default")
    with stub_broker.pipelined():
        stub_broker.enqueue(nbqueue.Message("default", "a", (1,), {}, {}))
        assert recorder.seen == [1]
