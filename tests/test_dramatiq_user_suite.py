"""A Dramatiq user's own test suite, after ``s/dramatiq/nbqueue/``.

Dramatiq's "Unit Testing" guide has users test their actors on the ``StubBroker``: they read
``broker.queues[name].qsize()`` and ``broker.dead_letters``, call ``flush_all()`` between tests,
``join(queue, fail_fast=...)`` to wait, pause workers, write middleware that fail messages, and
grep their logs for Dramatiq's warnings. These tests use those APIs the way such suites do.
"""

from __future__ import annotations

import logging
import threading

import pytest

import nbqueue
from nbqueue import Message, Middleware, QueueJoinTimeout, Worker
from nbqueue.brokers.stub import StubBroker
from nbqueue.common import current_millis
from nbqueue.middleware import Retries
from nbqueue.results import ResultFailure, Results
from nbqueue.results.backends import StubBackend


class CustomError(Exception):
    pass


def test_sent_messages_wait_on_their_queue_and_delayed_ones_on_its_delay_queue(stub_broker):
    @nbqueue.actor
    def count_words(url):
        pass

    count_words.send("http://example.com")
    count_words.send_with_options(args=("http://example.org",), delay=60_000)

    assert stub_broker.queues["default"].qsize() == 1
    assert stub_broker.queues["default.DQ"].qsize() == 1
    assert not stub_broker.queues["default"].empty()
    assert stub_broker.get_declared_queues() == {"default"}
    assert stub_broker.get_declared_delay_queues() == {"default.DQ"}


def test_a_message_read_off_the_queue_is_the_message_sent(stub_broker):
    @nbqueue.actor
    def add(x, y):
        return x + y

    sent = add.send(1, 2)
    data = stub_broker.queues["default"].get(timeout=1)

    assert Message.decode(data) == sent
    assert stub_broker.queues["default"].qsize() == 0
    # Taken but not done: join waits for it, as for a queue.Queue.
    with pytest.raises(QueueJoinTimeout):
        stub_broker.join("default", timeout=50)
    stub_broker.queues["default"].task_done()
    stub_broker.join("default", timeout=10_000)
    with pytest.raises(ValueError, match="task_done"):
        stub_broker.queues["default"].task_done()


def test_flush_all_empties_every_queue_and_the_dead_letters(stub_broker):
    @nbqueue.actor
    def do_work():
        pass

    do_work.send()
    stub_broker.dead_letters_by_queue[do_work.queue_name].append("dead letter")
    assert stub_broker.queues[do_work.queue_name].qsize() == 1
    assert len(stub_broker.dead_letters) == 1

    stub_broker.flush_all()

    assert stub_broker.queues[do_work.queue_name].qsize() == 0
    assert stub_broker.queues[do_work.queue_name].unfinished_tasks == 0
    assert len(stub_broker.dead_letters) == 0


def test_flush_empties_one_queue(stub_broker):
    @nbqueue.actor
    def a():
        pass

    @nbqueue.actor(queue_name="other")
    def b():
        pass

    a.send()
    b.send()
    stub_broker.flush("default")

    assert stub_broker.queues["default"].qsize() == 0
    assert stub_broker.queues["default"].unfinished_tasks == 0
    assert stub_broker.queues["other"].qsize() == 1
    stub_broker.join("default", timeout=10_000)


def test_join_raises_the_actors_exception_in_the_test_and_fail_fast_false_waits(
    stub_broker, stub_worker
):
    @nbqueue.actor(max_retries=0)
    def do_work():
        raise CustomError("well, that failed")

    message = do_work.send()

    with pytest.raises(CustomError, match="well, that failed"):
        stub_broker.join(do_work.queue_name)
    stub_broker.join(do_work.queue_name, fail_fast=False)
    stub_worker.join()

    [dead] = stub_broker.dead_letters
    assert dead.message_id == message.message_id
    assert isinstance(dead.exception, CustomError)
    assert dead._exception is dead.exception  # the attribute Dramatiq users read
    assert dead.failed


def test_fail_fast_default_false_makes_join_wait_without_raising(worker_factory):
    broker = StubBroker(fail_fast_default=False)
    broker.emit_after("process_boot")

    @nbqueue.actor(broker=broker, max_retries=0)
    def do_work():
        raise CustomError("nope")

    do_work.send()
    worker_factory(broker)
    broker.join(do_work.queue_name, timeout=10_000)
    with pytest.raises(CustomError):
        broker.join(do_work.queue_name, timeout=10_000, fail_fast=True)


def test_join_times_out_while_an_actor_runs(stub_broker, stub_worker):
    started, release = threading.Event(), threading.Event()

    @nbqueue.actor
    def do_work():
        started.set()
        release.wait(30)

    do_work.send()
    assert started.wait(30)
    with pytest.raises(QueueJoinTimeout):
        stub_broker.join(do_work.queue_name, timeout=100)
    release.set()
    stub_broker.join(do_work.queue_name, timeout=10_000)


def test_a_message_skipped_by_its_age_limit_is_not_a_failure_for_join(stub_broker, stub_worker):
    runs = []

    @nbqueue.actor(max_age=100)
    def do_work():
        runs.append(1)

    stale = do_work.message().copy(message_timestamp=current_millis() - 60_000)
    stub_broker.enqueue(stale)

    stub_broker.join(do_work.queue_name)  # fail_fast is on by default: nothing to raise
    stub_worker.join()

    assert runs == []
    assert stub_broker.dead_letters == [stale]
    assert stub_broker.get_dead_letters(do_work.queue_name)[0].reason == "max_age"


def test_the_result_of_a_message_skipped_by_its_age_limit_is_the_skip(stub_broker, stub_worker):
    # As in Dramatiq: the worker stuffs the SkipMessage into the failed message, and Results
    # store it as the message's failure.
    backend = StubBackend()
    stub_broker.add_middleware(Results(backend=backend))

    @nbqueue.actor(max_age=100, store_results=True)
    def do_work():
        return 1

    stale = do_work.message().copy(message_timestamp=current_millis() - 60_000)
    stub_broker.enqueue(stale)
    stub_broker.join(do_work.queue_name)
    stub_worker.join()

    with pytest.raises(ResultFailure) as failure:
        stale.get_result(backend=backend)
    assert failure.value.orig_exc_type == "SkipMessage"


def test_a_paused_worker_runs_nothing_until_it_is_resumed(stub_broker, stub_worker):
    calls = []

    @nbqueue.actor
    def track_call():
        calls.append(1)

    stub_worker.pause()
    track_call.send()
    with pytest.raises(QueueJoinTimeout):
        stub_broker.join(track_call.queue_name, timeout=200)
    assert calls == []

    stub_worker.resume()
    stub_broker.join(track_call.queue_name)
    stub_worker.join()
    assert calls == [1]


def test_a_middleware_that_fails_a_message_keeps_its_actor_from_running(stub_broker, stub_worker):
    class RejectAll(Middleware):
        def before_process_message(self, broker, message):
            message.fail()

    stub_broker.add_middleware(RejectAll())
    calls = []

    @nbqueue.actor
    def do_work():
        calls.append(1)

    message = do_work.send()
    stub_broker.join(do_work.queue_name, fail_fast=False)
    stub_worker.join()

    assert calls == []
    assert stub_broker.dead_letters == [message]
    assert stub_broker.dead_letters[0].failed
    with pytest.raises(Exception, match="dead-lettered"):
        stub_broker.join(do_work.queue_name)


def test_an_exception_a_middleware_stuffs_is_what_join_and_results_see(stub_broker, stub_worker):
    class Forbid(Middleware):
        def before_process_message(self, broker, message):
            message.stuff_exception(PermissionError("not allowed"))
            message.fail()

    backend = StubBackend()
    stub_broker.add_middleware(Results(backend=backend))
    stub_broker.add_middleware(Forbid())

    @nbqueue.actor(store_results=True)
    def do_work():
        return 1

    message = do_work.send()
    with pytest.raises(PermissionError, match="not allowed"):
        stub_broker.join(do_work.queue_name)
    stub_worker.join()

    with pytest.raises(ResultFailure) as failure:
        message.get_result(backend=backend)
    assert failure.value.orig_exc_type == "PermissionError"
    assert failure.value.orig_exc_msg == "not allowed"


def _warnings(caplog, text):
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_a_result_no_results_middleware_keeps_is_warned_about_once_per_actor(
    stub_broker, stub_worker, caplog
):
    @nbqueue.actor
    def add(x, y):
        return x + y

    @nbqueue.actor
    def nothing():
        return None

    caplog.set_level(logging.WARNING)
    for i in range(3):
        add.send(i, i)
    nothing.send()
    stub_broker.join(add.queue_name)
    stub_worker.join()

    [record] = _warnings(caplog, "returned a value")
    assert record.name == "nbqueue.worker.WorkerThread"
    assert "'add'" in record.getMessage() and "Results" in record.getMessage()


def test_results_piped_to_the_next_actor_or_stored_are_not_warned_about(
    stub_broker, stub_worker, caplog
):
    @nbqueue.actor
    def add(x, y):
        return x + y

    seen = []

    @nbqueue.actor
    def keep(total):
        seen.append(total)

    caplog.set_level(logging.WARNING)
    nbqueue.pipeline([add.message(1, 2), keep.message_with_options()]).run()
    stub_broker.join(add.queue_name)
    stub_worker.join()

    assert seen == [3]
    assert _warnings(caplog, "returned a value") == []

    stub_broker.add_middleware(Results(backend=StubBackend()))

    @nbqueue.actor(store_results=True)
    def stored():
        return 1

    @nbqueue.actor
    def not_stored():
        return 2

    stored.send()
    not_stored.send()
    stub_broker.join(stored.queue_name)
    stub_worker.join()
    [record] = _warnings(caplog, "returned a value")
    assert "'not_stored'" in record.getMessage() and "store_results=True" in record.getMessage()


def test_adding_the_same_middleware_type_twice_is_warned_about(stub_broker, caplog):
    caplog.set_level(logging.WARNING)
    stub_broker.add_middleware(Retries(max_retries=3))

    [record] = _warnings(caplog, "A second Retries middleware")
    assert record.name == "nbqueue.broker.StubBroker"
    assert sum(isinstance(m, Retries) for m in stub_broker.middleware) == 2


def test_loggers_are_named_as_in_dramatiq(stub_broker):
    @nbqueue.actor
    def add(x, y):
        return x + y

    assert add.logger.name == f"{__name__}.add"
    assert nbqueue.get_logger("tasks", "add").name == "tasks.add"
    assert nbqueue.get_logger("tasks", StubBroker).name == "tasks.StubBroker"
    assert nbqueue.get_logger("tasks").name == "tasks"
    assert stub_broker.logger.name == "nbqueue.broker.StubBroker"
    worker = Worker(stub_broker)
    assert worker.logger.name == "nbqueue.worker.Worker"
    assert Retries().logger.name == "nbqueue.middleware.retries.Retries"
    assert Results(backend=StubBackend()).logger.name == "nbqueue.results.middleware.Results"
