"""The memcached client of both memcached backends: TTLs in memcached's unit, deadlines, pools
and errors."""

from __future__ import annotations

import threading
from typing import Any

import pylibmc
import pytest

from nbqueue.errors import ConnectionClosed, ConnectionFailed
from nbqueue.message import Message
from nbqueue.rate_limits.backends import MemcachedBackend as LimitsBackend
from nbqueue.results.backends import MemcachedBackend
from tests._memcached import forget, free_port, private_memcached


def make_message() -> Message[Any]:
    return Message(queue_name="default", actor_name="add", args=(), kwargs={}, options={})


def test_ttls_round_up_to_seconds_and_never_expire_early() -> None:
    from nbqueue._memcached.client import expiry

    # memcached's clock ticks once a second: n lives between n - 1 and n seconds.
    assert expiry(600_000) == 601
    assert expiry(1000) == 2
    assert expiry(1) == 2  # Dramatiq's int(1 / 1000) is 0: "never expire"
    assert expiry(0) == 1
    # Past 30 days memcached reads a Unix timestamp.
    thirty_days = 30 * 24 * 3600
    assert expiry((thirty_days - 1) * 1000) == thirty_days
    assert expiry(thirty_days * 1000, now=1_700_000_000) == 1_700_000_000 + thirty_days + 1


def test_every_client_has_deadlines_unless_told_otherwise() -> None:
    backend = MemcachedBackend(servers=["127.0.0.1:11211"], behaviors={"_poll_timeout": 250})
    limits = LimitsBackend(servers=["127.0.0.1:11211"])
    try:
        with backend.connection.client() as client:
            assert client.behaviors["connect_timeout"] == 3000  # ms
            assert client.behaviors["receive_timeout"] == 3_000_000  # µs
            assert client.behaviors["_poll_timeout"] == 250  # the caller's wins
        with limits.connection.client() as client:
            assert client.behaviors["_poll_timeout"] == 3000
            assert client.behaviors["cas"]  # what compare-and-swap needs
    finally:
        backend.close()
        limits.close()


def test_an_unreachable_server_fails_with_a_clear_error() -> None:
    server = f"127.0.0.1:{free_port()}"  # nothing listens there
    backend = MemcachedBackend(servers=[server])
    limits = LimitsBackend(servers=[server])
    try:
        with pytest.raises(ConnectionFailed, match=f"Could not reach memcached at {server}"):
            backend.get_result(make_message())
        with pytest.raises(ConnectionFailed, match="check that the server is running"):
            limits.add("k", 1, 1000)
    finally:
        backend.close()
        limits.close()


@pytest.mark.memcached
def test_a_paused_server_fails_calls_at_their_deadline() -> None:
    with private_memcached() as server:
        backend = MemcachedBackend(
            servers=[server.server],
            behaviors={"_poll_timeout": 300, "receive_timeout": 300_000, "send_timeout": 300_000},
        )
        try:
            message = make_message()
            backend.store_result(message, 1, 10_000)
            server.pause()
            with pytest.raises(ConnectionClosed, match="did not answer in time"):
                backend.store_result(message, 2, 10_000)
            # pylibmc now skips the server for its retry_timeout; a blocking read says so
            # instead of polling until its own timeout (an hour).
            with pytest.raises(
                ConnectionFailed, match=f"Could not reach memcached at {server.server}"
            ):
                backend.get_result(message, block=True, timeout=3_600_000)
        finally:
            backend.close()


def test_a_caller_waits_a_bounded_time_for_a_free_client(monkeypatch) -> None:
    from nbqueue._memcached import client as module

    monkeypatch.setattr(module, "POOL_TIMEOUT", 0.05)
    backend = MemcachedBackend(servers=["127.0.0.1:11211"], pool_size=1)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with backend.connection.client():
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(ConnectionClosed, match="pass a larger pool_size="):
            with backend.connection.client():
                pass  # pragma: no cover
    finally:
        release.set()
        holder.join(30)
        backend.close()


@pytest.mark.memcached
@pytest.mark.parametrize("kind", ["ClientPool", "ThreadMappedPool"])
def test_a_given_pool_is_used_as_is(memcached_server, kind) -> None:
    client = pylibmc.Client([memcached_server], behaviors={"cas": True})
    if kind == "ClientPool":
        pool = pylibmc.ClientPool(client, 2)
    else:
        pool = pylibmc.ThreadMappedPool(client)
    backend = MemcachedBackend(pool=pool)
    limits = LimitsBackend(pool=pool)
    message = make_message()
    key = backend.build_message_key(message)
    try:
        assert backend.pool is pool and limits.pool is pool
        if kind == "ClientPool":
            assert repr(backend) == f"MemcachedBackend({memcached_server!r}, namespace=" + (
                "'dramatiq-results')"
            )
        backend.store_result(message, "via a given pool", 10_000)
        assert client.get(key) == b'"via a given pool"'
        assert limits.incr(f"{key}:n", 1, 1, 10_000)
        backend.close()  # a given pool stays connected
        assert backend.get_result(message) == "via a given pool"
    finally:
        forget(memcached_server, [key, f"{key}:n"])


def test_reprs_name_the_servers_and_never_a_password() -> None:
    backend = MemcachedBackend(
        servers=["127.0.0.1:11211"], binary=True, username="u", password="hunter2"
    )
    limits = LimitsBackend(servers="127.0.0.1:11211")
    try:
        assert repr(backend) == "MemcachedBackend('127.0.0.1:11211', namespace='dramatiq-results')"
        assert repr(limits) == "MemcachedBackend('127.0.0.1:11211')"
        assert backend.connection.scrub("auth failed for hunter2") == "auth failed for ***"
    finally:
        backend.close()
        limits.close()


def test_a_pool_needs_a_client() -> None:
    with pytest.raises(ValueError, match="pool_size must be at least 1"):
        MemcachedBackend(pool_size=0)


def test_a_given_pool_without_compare_and_swap_is_refused_for_rate_limits() -> None:
    pool = pylibmc.ClientPool(pylibmc.Client(["127.0.0.1:11211"]), 1)
    with pytest.raises(ValueError, match=r"behaviors=\{'cas': True\}"):
        LimitsBackend(pool=pool)
    MemcachedBackend(pool=pool)  # results need no compare-and-swap
