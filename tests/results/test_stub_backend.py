from __future__ import annotations

import sys
import threading
import types
from typing import Any

import pytest

from nbqueue.message import Message
from nbqueue.results import Missing, ResultFailure, ResultTimeout
from nbqueue.results.backends import StubBackend, stub


def make_message(actor_name: str = "add") -> Message[Any]:
    return Message(queue_name="default", actor_name=actor_name, args=(), kwargs={}, options={})


def test_results_round_trip_through_the_encoder() -> None:
    backend = StubBackend()
    message = make_message()
    backend.store_result(message, {"total": [1, 2.5, None]}, 1000)

    assert backend.get_result(message) == {"total": [1, 2.5, None]}
    assert backend.results[backend.build_message_key(message)][0] == b'{"total":[1,2.5,null]}'


def test_results_expire_after_their_ttl_in_milliseconds() -> None:
    backend = StubBackend()
    expired, kept = make_message(), make_message()
    backend.store_result(expired, 1, 0)
    backend.store_result(kept, 2, 60000)

    assert backend._get(backend.build_message_key(expired)) is Missing
    assert backend.build_message_key(expired) not in backend.results
    assert backend.get_result(kept) == 2


def test_each_instance_has_its_own_storage() -> None:
    message = make_message()
    first, second = StubBackend(), StubBackend()
    first.store_result(message, 1, 1000)

    assert first._get(first.build_message_key(message)) == 1
    assert second._get(second.build_message_key(message)) is Missing


def test_exceptions_are_stored_as_data() -> None:
    backend = StubBackend()
    message = make_message()

    class PrivateError(Exception):
        pass

    try:
        raise PrivateError("secret sauce")
    except PrivateError as e:
        backend.store_exception(message, e, 1000)

    with pytest.raises(ResultFailure) as info:
        backend.get_result(message)
    assert info.value.orig_exc_type == "PrivateError"
    assert info.value.orig_exc_msg == "secret sauce"
    assert info.value.traceback is not None and "PrivateError: secret sauce" in info.value.traceback


def test_exceptions_with_a_broken_str_are_still_stored() -> None:
    backend = StubBackend()
    message = make_message()

    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    backend.store_exception(message, Broken(), 1000)
    with pytest.raises(ResultFailure, match="unprintable Broken"):
        backend.get_result(message)


def test_a_blocked_reader_wakes_when_another_thread_stores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waiting = threading.Event()
    waits: list[float | None] = []
    notified: list[str] = []

    class RecordingCondition(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            waiting.set()  # the reader holds the backend's lock until wait() releases it
            return super().wait(timeout)

        def notify_all(self) -> None:
            notified.append("notify_all")
            super().notify_all()

    monkeypatch.setattr(
        stub, "threading", types.SimpleNamespace(Lock=threading.Lock, Condition=RecordingCondition)
    )
    backend = StubBackend()
    message = make_message()
    received: list[int] = []

    def reader() -> None:  # an hour: only the store can end this wait within the test
        received.append(backend.get_result(message, block=True, timeout=3_600_000))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    waiting.wait()
    backend.store_result(message, 42, 3_600_000)  # blocks until the reader waits, lock released
    assert notified == ["notify_all"]  # the store woke the reader
    thread.join()

    # One wait, which the store ended: the reader neither polled nor ran out its timeout.
    assert received == [42]
    assert len(waits) == 1
    assert backend._waiters == {}


def test_every_reader_of_a_key_wakes() -> None:
    backend = StubBackend()
    message = make_message()
    results: list[int] = []
    lock = threading.Lock()

    def reader() -> None:
        value = backend.get_result(message, block=True, timeout=3_600_000)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=reader) for _ in range(5)]
    for thread in threads:
        thread.start()
    backend.store_result(message, 7, 3_600_000)  # readers that start late must still find it
    for thread in threads:
        thread.join()

    assert results == [7] * 5


def test_a_reader_of_another_key_keeps_waiting() -> None:
    backend = StubBackend()
    with pytest.raises(ResultTimeout):
        waiting = make_message("other")
        backend.store_result(make_message(), 1, 1000)
        backend.get_result(waiting, block=True, timeout=30)


def test_redis_backend_names_the_extra_when_redis_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nbqueue.results.backends as backends

    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"pip install 'nbqueue\[redis\]'"):
        backends.RedisBackend  # noqa: B018
    with pytest.raises(AttributeError):
        backends.NoSuchBackend  # noqa: B018
    assert "RedisBackend" in dir(backends)
