from __future__ import annotations

import datetime
import logging

import pytest

import nbqueue
from nbqueue import Actor, Message
from nbqueue.brokers.stub import StubBroker


def test_calling_an_actor_runs_it_now_in_this_thread(stub_broker):
    @nbqueue.actor
    def add(x, y):
        return x + y

    assert isinstance(add, Actor)
    assert add(2, 3) == 5
    assert stub_broker.queue_stats()["default"].ready == 0


def test_send_enqueues_a_message_and_returns_it(stub_broker):
    @nbqueue.actor(queue_name="emails")
    def send_email(recipient, subject, body):
        pass

    message = send_email.send("user@example.com", "Hi", body="Hello")
    assert isinstance(message, Message)
    assert (message.queue_name, message.actor_name) == ("emails", "send_email")
    assert message.args == ("user@example.com", "Hi")
    assert message.kwargs == {"body": "Hello"}
    assert stub_broker.queue_stats()["emails"].ready == 1


def test_decorator_options_are_kept_on_the_actor(stub_broker):
    @nbqueue.actor(
        max_retries=3, min_backoff=1000, priority=10, time_limit=300000, queue_name="high_priority"
    )
    def process_video(video_id):
        pass

    assert process_video.priority == 10
    assert process_video.queue_name == "high_priority"
    assert process_video.options == {"max_retries": 3, "min_backoff": 1000, "time_limit": 300000}
    assert repr(process_video).startswith("Actor(<function")
    assert str(process_video) == "Actor(process_video)"


def test_an_unknown_option_names_it_and_suggests_a_middleware(stub_broker):
    with pytest.raises(ValueError, match=r"undefined: colour\. Did you forget to add a middleware"):

        @nbqueue.actor(colour="red")
        def f():
            pass


@pytest.mark.parametrize("name", ["", "1abc", "has space", "semi;colon"])
def test_invalid_queue_names_are_refused(stub_broker, name):
    with pytest.raises(ValueError, match="Queue name"):

        @nbqueue.actor(queue_name=name)
        def f():
            pass


def test_redeclaring_an_actor_replaces_it_like_rerunning_a_cell(stub_broker, stub_worker):
    backend = _backend(stub_broker)

    @nbqueue.actor
    def job():
        return 1

    first = job

    @nbqueue.actor  # type: ignore[no-redef]  # noqa: F811 - the point of the test
    def job():
        return 2

    assert stub_broker.get_actor("job") is job is not first
    assert job.send().get_result(backend=backend, block=True) == 2


def _backend(broker):
    from nbqueue.results import Results
    from nbqueue.results.backends import StubBackend

    for m in broker.middleware:
        if isinstance(m, Results):
            return m.backend
    backend = StubBackend()
    broker.add_middleware(Results(backend=backend, store_results=True))
    return backend


def test_replacing_an_actor_from_another_module_is_logged(stub_broker, caplog):
    def make(module):
        def dup():
            pass

        dup.__module__ = module
        return dup

    nbqueue.actor(make("one"))
    with caplog.at_level(logging.WARNING, logger="nbqueue"):
        nbqueue.actor(make("two"))
    assert "replaces the one from one" in caplog.text


def test_send_with_options_accepts_milliseconds_or_a_timedelta(stub_broker):
    @nbqueue.actor
    def later():
        pass

    by_ms = later.send_with_options(delay=60000)
    by_td = later.send_with_options(delay=datetime.timedelta(minutes=1))
    for message in (by_ms, by_td):
        assert message.queue_name == "default.DQ"
        assert 59000 <= message.options["eta"] - message.message_timestamp <= 61000
    with pytest.raises(ValueError, match="negative"):
        later.send_with_options(delay=-1)
    with pytest.raises(TypeError, match="milliseconds"):
        later.send_with_options(delay="soon")  # type: ignore[arg-type]


def test_callbacks_given_as_actors_are_stored_by_name(stub_broker):
    @nbqueue.actor
    def done(message, result):
        pass

    @nbqueue.actor
    def work():
        pass

    message = work.message_with_options(on_success=done, on_failure="done")
    assert message.options == {"on_success": "done", "on_failure": "done"}
    with pytest.raises(TypeError, match="on_success must be an actor"):
        work.message_with_options(on_success=42)


def test_per_message_priority_is_an_option(stub_broker):
    @nbqueue.actor
    def urgent_task():
        pass

    message = urgent_task.send_with_options(priority=100)
    assert message.options["priority"] == 100
    assert stub_broker.message_priority(message) == 100


def test_async_actors_can_be_called_directly():
    broker = StubBroker()

    @nbqueue.actor(broker=broker)
    async def double(x):
        return 2 * x

    assert double.is_async
    assert double(21) == 42


def test_actors_bind_to_the_global_broker_at_declaration(stub_broker):
    @nbqueue.actor
    def f():
        pass

    assert f.broker is stub_broker
    other = StubBroker()

    @nbqueue.actor(broker=other)
    def g():
        pass

    assert g.broker is other
    assert "g" not in stub_broker.get_declared_actors()


def test_send_many_sends_one_message_per_item(stub_broker, stub_worker):
    seen = []

    @nbqueue.actor
    def record(*args, **kwargs):
        seen.append((args, kwargs))

    messages = record.send_many([(1, 2), {"k": 3}, 4, ({"a": 1},)], priority=3)
    assert [m.options["priority"] for m in messages] == [3, 3, 3, 3]
    stub_broker.join("default", timeout=10000)
    stub_worker.join()
    assert sorted(map(repr, seen)) == sorted(
        map(repr, [((1, 2), {}), ((), {"k": 3}), ((4,), {}), (({"a": 1},), {})])
    )


def test_send_many_sends_nothing_when_one_item_cannot_be_encoded(stub_broker):
    @nbqueue.actor
    def record(x):
        pass

    with pytest.raises(nbqueue.EncodeError, match=r"args\[0\]"):
        record.send_many([1, 2, object()])
    assert stub_broker.queue_stats()["default"].ready == 0


@pytest.mark.parametrize("validates", [False, True])
def test_send_many_encodes_each_message_once_when_the_broker_validates_batches(
    monkeypatch, validates
):
    class Broker(StubBroker):
        validates_batches = validates

    broker = Broker()
    encoded: list[str] = []
    encode = Message.encode

    def counting(self):
        encoded.append(self.message_id)
        return encode(self)

    monkeypatch.setattr(Message, "encode", counting)

    @nbqueue.actor(broker=broker)
    def record(x):
        pass

    messages = record.send_many(range(5))
    assert broker.queue_stats()["default"].ready == 5
    per_message = [encoded.count(m.message_id) for m in messages]
    # the StubBroker encodes each message before any is queued; the actor adds a check of its
    # own only for brokers that do not say they validate a batch first
    assert per_message == [1 if validates else 2] * 5

    encoded.clear()
    with pytest.raises(nbqueue.EncodeError, match=r"args\[0\]"):
        record.send_many([1, 2, object()])
    assert broker.queue_stats()["default"].ready == 5  # nothing of the bad batch was queued


def test_async_generator_actors_return_their_chunks_joined_or_listed():
    broker = StubBroker()

    @nbqueue.actor(broker=broker)
    async def words(n):
        for i in range(n):
            yield f"w{i} "

    @nbqueue.actor(broker=broker)
    async def records(n):
        for i in range(n):
            yield {"i": i}

    assert words.is_async
    assert words(3) == "w0 w1 w2 "  # all str: concatenated
    assert records(2) == [{"i": 0}, {"i": 1}]  # otherwise: the list
    assert words(0) == []


def test_async_generator_actors_are_closed_when_they_fail():
    broker = StubBroker()
    closed = []

    @nbqueue.actor(broker=broker)
    async def broken():
        try:
            yield "a"
            raise ValueError("boom")
        finally:
            closed.append(True)

    with pytest.raises(ValueError, match="boom"):
        broken()
    assert closed == [True]
