from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import types
from typing import Any

import pytest

import nbqueue
from nbqueue import Worker
from nbqueue.brokers.stub import StubBroker
from nbqueue.errors import EncodeError
from nbqueue.message import Message
from nbqueue.middleware import Middleware, SkipMessage
from nbqueue.results import (
    Missing,
    ResultBackend,
    ResultError,
    ResultFailure,
    ResultMissing,
    Results,
    ResultTimeout,
)
from nbqueue.results.backends import StubBackend, stub


@pytest.fixture
def backend(stub_broker: StubBroker) -> StubBackend:
    backend = StubBackend()
    stub_broker.add_middleware(Results(backend=backend))
    return backend


def test_results_package_exports_dramatiqs_names() -> None:
    import nbqueue.results as results

    assert sorted(results.__all__) == results.__all__
    assert set(results.__all__) == {
        "Missing",
        "ResultBackend",
        "ResultError",
        "ResultFailure",
        "ResultMissing",
        "ResultTimeout",
        "Results",
    }
    assert issubclass(ResultError, nbqueue.NbqueueError)
    for cls in (ResultFailure, ResultMissing, ResultTimeout):
        assert issubclass(cls, ResultError)
    # Siblings, as in Dramatiq: except ResultMissing must not swallow timeouts.
    assert not issubclass(ResultTimeout, ResultMissing)


def test_results_middleware_needs_a_backend() -> None:
    with pytest.raises(ResultError, match="needs a result backend"):
        Results()


def test_actors_that_store_results_return_them(
    stub_broker: StubBroker, stub_worker: Worker, backend: StubBackend
) -> None:
    @nbqueue.actor(store_results=True)
    def add(x: int, y: int) -> int:
        return x + y

    message = add.send(1, 2)
    assert backend.get_result(message, block=True) == 3
    # Message.get_result finds the global broker's backend by itself.
    assert message.get_result() == 3


def test_a_missing_result_raises_result_missing_without_blocking(
    stub_broker: StubBroker, backend: StubBackend
) -> None:
    @nbqueue.actor(store_results=True)
    def add(x: int, y: int) -> int:
        return x + y

    message = add.send(1, 2)
    with pytest.raises(ResultMissing, match="pass block=True") as info:
        backend.get_result(message)
    assert info.value.message_id == message.message_id
    assert info.value.actor_name == "add"


def test_a_blocking_read_times_out_when_nobody_stores_the_result(
    stub_broker: StubBroker, backend: StubBackend
) -> None:
    @nbqueue.actor(store_results=True)
    def add(x: int, y: int) -> int:
        return x + y

    message = add.send(1, 2)
    start = time.monotonic()
    with pytest.raises(ResultTimeout, match="within 50 ms") as info:
        backend.get_result(message, block=True, timeout=50)
    # Not before the timeout: a lower bound only, which a loaded machine can only make longer.
    assert time.monotonic() - start >= 0.04
    assert info.value.timeout == 50


def test_a_zero_timeout_checks_once(stub_broker: StubBroker, backend: StubBackend) -> None:
    @nbqueue.actor(store_results=True)
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(ResultTimeout):
        backend.get_result(add.send(1, 2), block=True, timeout=0)


def test_result_failure_carries_the_type_name_message_and_traceback(
    stub_broker: StubBroker, stub_worker: Worker, backend: StubBackend
) -> None:
    @nbqueue.actor(store_results=True, max_retries=0)
    def divide(x: int, y: int) -> float:
        return x / y

    message = divide.send(1, 0)
    with pytest.raises(ResultFailure) as info:
        backend.get_result(message, block=True)

    error = info.value
    assert str(error) == "actor raised ZeroDivisionError: division by zero"
    assert error.orig_exc_type == "ZeroDivisionError"
    assert error.orig_exc_msg == "division by zero"
    assert error.traceback is not None
    assert "in divide" in error.traceback
    assert "ZeroDivisionError: division by zero" in error.traceback


def test_failures_are_stored_in_dramatiqs_format(
    stub_broker: StubBroker, stub_worker: Worker, backend: StubBackend
) -> None:
    @nbqueue.actor(store_results=True, max_retries=0)
    def fail() -> None:
        raise KeyError("nope")

    message = fail.send()
    with pytest.raises(ResultFailure):
        backend.get_result(message, block=True)

    stored = json.loads(backend.results[backend.build_message_key(message)][0])
    assert stored["__t"] == "dramatiq.results.Result"
    assert stored["exn"]["type"] == "KeyError"
    assert stored["exn"]["msg"] == "'nope'"
    assert set(stored["exn"]) == {"type", "msg", "tb"}


def test_a_failure_written_by_dramatiq_is_read_without_a_traceback(
    stub_broker: StubBroker, backend: StubBackend
) -> None:
    message: Message[Any] = Message(
        queue_name="default", actor_name="fail", args=(), kwargs={}, options={}
    )
    dramatiq_value = {"__t": "dramatiq.results.Result", "exn": {"type": "ValueError", "msg": "x"}}
    backend._store(backend.build_message_key(message), dramatiq_value, 1000)

    with pytest.raises(ResultFailure) as info:
        backend.get_result(message)
    assert (info.value.orig_exc_type, info.value.orig_exc_msg) == ("ValueError", "x")
    assert info.value.traceback is None


def test_failures_are_stored_only_once_retries_are_exhausted(
    stub_broker: StubBroker, stub_worker: Worker, backend: StubBackend
) -> None:
    attempts: list[int] = []

    @nbqueue.actor(store_results=True, max_retries=2, min_backoff=1, max_backoff=1)
    def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError(f"attempt {len(attempts)}")
        return len(attempts)

    message = flaky.send()
    assert backend.get_result(message, block=True) == 3

    @nbqueue.actor(store_results=True, max_retries=1, min_backoff=1, max_backoff=1)
    def hopeless() -> None:
        attempts.append(1)
        raise RuntimeError(f"attempt {len(attempts)}")

    attempts.clear()
    with pytest.raises(ResultFailure, match="attempt 2"):
        backend.get_result(hopeless.send(), block=True)
    assert len(attempts) == 2


def test_message_options_override_actor_options_which_override_the_default(
    stub_worker: Worker, stub_broker: StubBroker
) -> None:
    backend = StubBackend()
    stub_broker.add_middleware(Results(backend=backend, store_results=True))

    @nbqueue.actor
    def by_default() -> int:
        return 1

    @nbqueue.actor(store_results=False)
    def opted_out() -> int:
        return 2

    stored = by_default.send()
    not_stored = opted_out.send()
    stored_anyway = opted_out.send_with_options(store_results=True)
    refused = by_default.send_with_options(store_results=False)
    stub_broker.join(by_default.queue_name)
    stub_worker.join()

    assert backend.get_result(stored) == 1
    assert backend.get_result(stored_anyway) == 2
    for message in (not_stored, refused):
        with pytest.raises(ResultMissing):
            backend.get_result(message)


def test_result_ttl_comes_from_the_message_then_the_actor(
    stub_broker: StubBroker, stub_worker: Worker, backend: StubBackend
) -> None:
    @nbqueue.actor(store_results=True, result_ttl=120000)
    def add(x: int, y: int) -> int:
        return x + y

    default_ttl = add.send(1, 2)
    short_ttl = add.send_with_options(args=(2, 3), result_ttl=1000)
    stub_broker.join(add.queue_name)
    stub_worker.join()

    now = time.monotonic()
    long_left, short_left = (
        backend.results[backend.build_message_key(m)][1] - now for m in (default_ttl, short_ttl)
    )
    assert 119 < long_left <= 120
    assert 0.5 < short_left <= 1


def test_unencodable_results_store_a_failure_that_names_the_actor(
    stub_broker: StubBroker,
    stub_worker: Worker,
    backend: StubBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    @nbqueue.actor(store_results=True)
    def make_set() -> list[Any]:
        return [1, {2}]

    message = make_set.send()
    with pytest.raises(ResultFailure) as info:
        backend.get_result(message, block=True)

    assert info.value.orig_exc_type == "EncodeError"
    assert "'make_set' returned a result that cannot be stored: result[1] has type set" in (
        info.value.orig_exc_msg
    )
    assert "return JSON types" in info.value.orig_exc_msg
    stub_worker.join()
    assert any("make_set" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_store_result_raises_encode_error_for_direct_callers(backend: StubBackend) -> None:
    message: Message[Any] = Message(
        queue_name="default", actor_name="a", args=(), kwargs={}, options={}
    )
    with pytest.raises(EncodeError, match="'a' returned a result that cannot be stored") as info:
        backend.store_result(message, object(), 1000)
    assert "result has type object" in str(info.value)
    assert info.value.path == "result"
    with pytest.raises(ResultFailure):
        backend.get_result(message)


def test_skipped_messages_store_none(stub_broker: StubBroker, backend: StubBackend) -> None:
    class SkipAll(Middleware):
        def before_process_message(self, broker: Any, message: Any) -> None:
            raise SkipMessage()

    stub_broker.add_middleware(SkipAll())
    worker = Worker(stub_broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:

        @nbqueue.actor(store_results=True)
        def add(x: int, y: int) -> int:
            return x + y

        assert backend.get_result(add.send(1, 2), block=True) is None
    finally:
        worker.stop()


def test_messages_for_unknown_actors_that_asked_for_results_fail_at_once(
    stub_broker: StubBroker, stub_worker: Worker, backend: StubBackend
) -> None:
    stub_broker.declare_queue("default")
    message: Message[Any] = Message(
        queue_name="default",
        actor_name="not_declared_here",
        args=(),
        kwargs={},
        options={"store_results": True},
    )
    stub_broker.enqueue(message)

    # An hour: unless the failure is stored, the read does not end within the test.
    with pytest.raises(ResultFailure) as info:
        backend.get_result(message, block=True, timeout=3_600_000)
    assert info.value.orig_exc_type == "ActorNotFound"
    assert "not_declared_here" in info.value.orig_exc_msg


@pytest.mark.parametrize("default", [True, False])
def test_messages_for_unknown_actors_follow_the_middleware_default(
    stub_broker: StubBroker, stub_worker: Worker, default: bool
) -> None:
    backend = StubBackend()
    stub_broker.add_middleware(Results(backend=backend, store_results=default))
    stub_broker.declare_queue("default")
    message: Message[Any] = Message(
        queue_name="default", actor_name="not_declared_here", args=(), kwargs={}, options={}
    )
    stub_broker.enqueue(message)
    stub_broker.join("default", fail_fast=False)
    stub_worker.join()

    if default:
        with pytest.raises(ResultFailure, match="not_declared_here"):
            backend.get_result(message)
    else:
        with pytest.raises(ResultMissing):
            backend.get_result(message)


def test_discarded_results_are_logged_once_per_actor(
    stub_broker: StubBroker,
    stub_worker: Worker,
    backend: StubBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    @nbqueue.actor
    def add(x: int, y: int) -> int:
        return x + y

    @nbqueue.actor
    def nothing() -> None:
        return None

    caplog.set_level(logging.WARNING, logger="nbqueue.results.middleware.Results")
    for i in range(3):
        add.send(i, i)
    nothing.send()
    stub_broker.join(add.queue_name)
    stub_worker.join()

    warnings = [
        r.getMessage() for r in caplog.records if r.name == "nbqueue.results.middleware.Results"
    ]
    assert len(warnings) == 1
    assert "'add'" in warnings[0] and "store_results=True" in warnings[0]


def test_keys_are_dramatiqs_md5_of_the_canonical_queue_name(backend: StubBackend) -> None:
    message: Message[Any] = Message(
        queue_name="default.DQ", actor_name="add", args=(), kwargs={}, options={}, message_id="m1"
    )
    expected = hashlib.md5(b"dramatiq-results:default:add:m1").hexdigest()
    assert backend.build_message_key(message) == expected

    prefixed = StubBackend(namespace="ns", use_namespace_prefix_keys=True)
    assert prefixed.build_message_key(message) == "ns:default:add:m1"


def test_blocking_reads_wake_as_soon_as_the_result_is_stored(
    stub_broker: StubBroker,
    stub_worker: Worker,
    backend: StubBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    woken_by_store: list[bool] = []

    class RecordingCondition(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            notified = super().wait(timeout)
            woken_by_store.append(notified)
            return notified

    monkeypatch.setattr(
        stub, "threading", types.SimpleNamespace(Lock=threading.Lock, Condition=RecordingCondition)
    )

    @nbqueue.actor(store_results=True)
    def echo(x: int) -> int:
        return x

    for i in range(200):  # an hour each: a read that polled or timed out would not end in time
        assert echo.send(i).get_result(block=True, timeout=3_600_000) == i

    # Readers waited (Dramatiq sleeps between polls instead), and every wait was ended by the
    # store's notification, never by its timeout.
    assert woken_by_store
    assert all(woken_by_store)


class DictBackend(ResultBackend):
    """A backend written against Dramatiq's interface: only _get and _store."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, bytes] = {}

    def _get(self, message_key: str) -> Any:
        data = self.data.get(message_key)
        return Missing if data is None else self.encoder.decode(data)

    def _store(self, message_key: str, result: Any, ttl: int) -> None:
        self.data[message_key] = self.encoder.encode(result)


def test_backends_with_only_get_and_store_still_block(
    stub_broker: StubBroker, stub_worker: Worker
) -> None:
    backend = DictBackend()
    stub_broker.add_middleware(Results(backend=backend))

    @nbqueue.actor(store_results=True)
    def add(x: int, y: int) -> int:
        return x + y

    assert backend.get_result(add.send(1, 2), block=True, timeout=5000) == 3
