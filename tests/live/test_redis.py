"""The Redis live channel: its keys, and watching and aborting from other processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import nbqueue
from nbqueue._redis.live import POLL_INTERVAL, RedisTransport, live_prefix
from nbqueue.brokers.stub import StubBroker
from nbqueue.live import Live, MessageStatus, transport_for
from nbqueue.results import Results
from tests.live.conftest import follow, record, statuses, text, wait_for

pytestmark = pytest.mark.redis

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

WATCHER = """
import json, sys, time
import nbqueue
from nbqueue.brokers.redis import RedisBroker
from nbqueue.results import Results
from nbqueue.results.backends import RedisBackend

url, namespace, message_id = sys.argv[1:4]
backend = RedisBackend(url=url, namespace=namespace, use_namespace_prefix_keys=True)
# No Live middleware here: a RedisBackend is enough to watch.
broker = RedisBroker(url=url, namespace=namespace, middleware=[Results(backend=backend)])
print("watching", flush=True)
for event in nbqueue.live.events(message_id, broker=broker, timeout=20000):
    line = {"offset": event.offset, "kind": event.kind, "data": event.data, "at": time.time()}
    print(json.dumps(line), flush=True)
"""

WORKER = """
import sys, time
import nbqueue
from nbqueue.brokers.redis import RedisBroker
from nbqueue.live import Live
from nbqueue.middleware import AsyncIO, default_middleware
from nbqueue.results import Results
from nbqueue.results.backends import RedisBackend

url, namespace = sys.argv[1:3]
if "--no-flag-check" in sys.argv:
    # Aborts then reach this worker through their notification alone.
    from nbqueue._redis.live import RedisTransport

    RedisTransport.abort_flags = lambda self, ids: []
backend = RedisBackend(url=url, namespace=namespace, use_namespace_prefix_keys=True)
middleware = [m() for m in default_middleware]
middleware += [AsyncIO(), Results(backend=backend, store_results=True), Live()]
broker = RedisBroker(url=url, namespace=namespace, middleware=middleware)

@nbqueue.actor(broker=broker, actor_name="spin", max_retries=3, min_backoff=10)
def spin():
    nbqueue.stream("spinning in another process")
    while True:
        time.sleep(0.01)

worker = nbqueue.Worker(broker, worker_timeout=100, worker_threads=2)
worker.start()
print("ready", flush=True)
sys.stdin.read()
worker.stop(timeout=5000)
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.fixture(params=["redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_keys_sit_under_the_namespace_and_expire_with_the_result(live_broker, worker_factory):
    @nbqueue.actor(result_ttl=60000)
    def job():
        nbqueue.stream("x")

    worker_factory(live_broker)
    message = job.send()
    follow(message)
    client = live_broker.client
    prefix = live_prefix(live_broker.namespace)
    keys = sorted(k.decode() for k in client.scan_iter(match=prefix + "*"))
    assert keys == [prefix + message.message_id, prefix + message.message_id + ":events"]
    for key in keys:
        assert 0 < client.pttl(key) <= 60000
    assert prefix.startswith(f"{live_broker.namespace}:__nbq__:live:")


def test_a_watcher_in_another_process_sees_the_stream_of_a_job_run_here(
    live_broker, worker_factory, redis_url, namespace, processes
):
    @nbqueue.actor
    async def tokens(n):
        for i in range(n):
            await asyncio.sleep(0.02)
            nbqueue.progress(i + 1, total=n)
            yield f"t{i} "

    message = tokens.message(10)
    watcher = _spawn(WATCHER, redis_url, namespace, message.message_id)
    processes.append(watcher)
    assert watcher.stdout is not None
    assert watcher.stdout.readline().strip() == "watching"

    worker_factory(live_broker)
    live_broker.enqueue(message)
    here = follow(message)
    out, _ = watcher.communicate(timeout=30)

    lines = [json.loads(line) for line in out.splitlines()]
    assert [(e["offset"], e["kind"], e["data"]) for e in lines] == [
        (e.offset, e.kind, e.data) for e in here
    ]
    assert text(here) == "".join(f"t{i} " for i in range(10))
    assert statuses(here) == ["enqueued", "running", "succeeded"]


def test_an_abort_reaches_a_worker_in_another_process_through_its_notification(
    live_broker, redis_url, namespace, processes
):
    # The other worker's check of abort flags is off and its actor spins forever: the abort
    # can only arrive through the aborts stream it blocks on, so no clock is needed to tell
    # the prompt path from the once-a-second check.
    @nbqueue.actor(actor_name="spin", max_retries=3, min_backoff=10)
    def spin():
        raise AssertionError("runs in the other process only")

    worker = _spawn(WORKER, redis_url, namespace, "--no-flag-check")
    processes.append(worker)
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "ready"

    message = spin.send()
    for event in message.events(timeout=30000):
        if event.kind == "output":
            break  # the actor's own code runs, over there
    assert message.abort() is True
    events = follow(message, timeout=30000)

    assert statuses(events) == ["enqueued", "running", "aborted"]
    assert text(events) == "spinning in another process"
    assert record(message).attempt == 1
    live_broker.join(spin.queue_name, timeout=10000)
    assert [d.reason for d in live_broker.get_dead_letters(spin.queue_name)] == ["aborted"]
    worker.communicate("", timeout=30)
    assert worker.returncode == 0


def test_a_missed_abort_notification_is_caught_by_the_next_flag_check(
    live_broker, worker_factory, monkeypatch
):
    # Flags are checked once a second (POLL_INTERVAL); what is checked here without a clock is
    # that the first check made after the flag was set catches it.
    assert POLL_INTERVAL == 1.0

    @nbqueue.actor(max_retries=0)
    def spin():
        nbqueue.stream("go")
        while True:
            time.sleep(0.01)

    worker_factory(live_broker)
    message = spin.send()
    wait_for(message, MessageStatus.running)
    transport = transport_for(live_broker)
    assert isinstance(transport, RedisTransport)
    checks, flagged = [], threading.Event()
    abort_flags = transport.abort_flags

    def watched_abort_flags(message_ids):
        after_the_flag = flagged.is_set()
        found = abort_flags(message_ids)
        checks.append((after_the_flag, message.message_id in found))
        return found

    monkeypatch.setattr(transport, "abort_flags", watched_abort_flags)
    # Set the flag as abort() does, but send no notification.
    live_broker.client.hset(transport.keys(message.message_id)[0], "abort", "1")
    flagged.set()

    events = follow(message, timeout=30000)
    assert statuses(events)[-1] == "aborted"
    assert [found for after_the_flag, found in checks if after_the_flag][:1] == [True], checks


def test_with_another_broker_the_redis_result_backend_carries_the_channel(
    redis_url, namespace, worker_factory
):
    # As with a RabbitMQ broker: the configured result backend decides where the channel is.
    from nbqueue.results.backends import RedisBackend
    from tests.brokers._redis import delete_namespace

    backend = RedisBackend(url=redis_url, namespace=namespace, use_namespace_prefix_keys=True)
    broker = StubBroker(middleware=[Results(backend=backend, store_results=True), Live()])
    nbqueue.set_broker(broker)
    try:

        @nbqueue.actor
        def job():
            print("hello from a stub broker")

        worker_factory(broker)
        message = job.send()
        events = follow(message)
        transport = transport_for(broker)
        assert isinstance(transport, RedisTransport) and transport.namespace == namespace
        keys = list(backend.client.scan_iter(match=live_prefix(namespace) + "*"))
        assert len(keys) == 2

        # A reader elsewhere needs only the backend.
        reader = StubBroker(middleware=[Results(backend=backend)])
        seen: Any = list(message.events(broker=reader, follow=False))
        assert seen == events and text(seen, "stdout") == "hello from a stub broker\n"
    finally:
        delete_namespace(backend.client, namespace)
        backend.close()


def test_whoever_sees_a_result_sees_every_event_the_job_wrote_and_its_final_status(
    live_broker, worker_factory, redis_url, namespace
):
    """1,000 jobs that print and return, one at a time: right after another client's
    get_result returned, that client's read of the events holds the output and the final status.

    The reader has a connection and a transport of its own, so no flush of this process's
    publisher helps it: what it reads is what Redis holds."""
    from nbqueue._redis.client import RedisConnection
    from nbqueue.results.backends import RedisBackend

    @nbqueue.actor(store_results=True)
    def job(i):
        print(f"line {i}")
        return i

    worker_factory(live_broker, worker_threads=4)
    results = RedisBackend(url=redis_url, namespace=namespace, use_namespace_prefix_keys=True)
    reader = RedisTransport(RedisConnection(redis_url), live_broker.namespace)
    wrong = []
    for i in range(1000):
        message = job.send(i)
        assert results.get_result(message, block=True, timeout=60000) == i
        events = reader.read(message.message_id, 0, block=None)
        if text(events, "stdout") != f"line {i}\n" or statuses(events)[-1:] != ["succeeded"]:
            wrong.append((i, text(events, "stdout"), statuses(events)))
    results.close()
    reader.connection.close()
    assert wrong == []


def test_a_burst_of_sends_is_written_in_pipelines_of_bounded_size(
    live_broker, worker_factory, monkeypatch
):
    import nbqueue._redis.live as redis_live
    from nbqueue.live.channel import get_publisher

    monkeypatch.setattr(redis_live, "WRITE_CHUNK", 7)

    @nbqueue.actor(store_results=True)
    def double(i):
        return 2 * i

    transport = transport_for(live_broker)
    assert isinstance(transport, RedisTransport)
    sizes = []  # commands per pipeline executed while the burst is written
    real_pipeline = transport.client.pipeline

    def pipeline(*args, **kwargs):
        pipe = real_pipeline(*args, **kwargs)
        execute = pipe.execute

        def counted(*a, **k):
            sizes.append(len(pipe.command_stack))
            return execute(*a, **k)

        pipe.execute = counted
        return pipe

    monkeypatch.setattr(transport.client, "pipeline", pipeline)
    messages = double.send_many(range(23))
    get_publisher(transport).flush()
    monkeypatch.undo()
    assert sum(sizes) >= 23 and max(sizes) <= 7, sizes
    ids = [m.message_id for m in messages]
    assert [r and r.status for r in transport.statuses(ids)] == [MessageStatus.enqueued] * 23
    worker_factory(live_broker)
    assert [m.get_result(block=True, timeout=10000) for m in messages] == list(range(0, 46, 2))
    get_publisher(transport).flush()
    assert {r and r.status for r in transport.statuses(ids)} == {MessageStatus.succeeded}


def _writes_of(transport: RedisTransport, monkeypatch: Any) -> list[tuple[str, str, Any, Any]]:
    """Record every live write the transport makes (to the store or in a result's script), as
    (message id, mode, deferred start's status, status event's status)."""
    seen: list[tuple[str, str, Any, Any]] = []
    write_args = transport.write_args

    def recorded(w: Any) -> list[Any]:
        status = (w.status_event or {}).get("status")
        seen.append((w.message_id, w.mode, (w.lead or {}).get("status"), status))
        return write_args(w)

    monkeypatch.setattr(transport, "write_args", recorded)
    return seen


def test_a_job_that_ends_within_the_hold_writes_running_with_its_end(
    live_broker, worker_factory, monkeypatch
):
    # The hold made endless: the job's end is sure to come first, however loaded the machine.
    monkeypatch.setattr("nbqueue.live.middleware.START_HOLD", 3600.0)

    @nbqueue.actor(store_results=True)
    def double(i):
        return 2 * i

    transport = transport_for(live_broker)
    assert isinstance(transport, RedisTransport) and transport.defers_start
    writes = _writes_of(transport, monkeypatch)
    worker_factory(live_broker)
    message = double.send(21)
    assert message.get_result(block=True, timeout=30000) == 42
    events = follow(message)  # (which flushes this process's publisher first)
    assert statuses(events) == ["enqueued", "running", "succeeded"]

    mine = Counter(w[1:] for w in writes if w[0] == message.message_id)
    # the producer's (from its publisher, which may land second) and one write with the start
    # and the end (the result's script)
    assert mine == Counter([("initial", None, "enqueued"), ("worker", "running", "succeeded")])
    found = record(message)
    assert found.attempt == 1 and found.worker_id and found.started_at and found.finished_at
    fields = live_broker.client.hgetall(transport.keys(message.message_id)[0])
    assert fields[b"taken"] == b""  # an abort() now finds it finished, not taken


def test_a_job_that_outlives_the_hold_shows_running_while_it_runs(
    live_broker, worker_factory, monkeypatch
):
    monkeypatch.setattr("nbqueue.live.middleware.START_HOLD", 0.0)
    release = threading.Event()

    @nbqueue.actor
    def wait():
        assert release.wait(30)

    transport = transport_for(live_broker)
    assert isinstance(transport, RedisTransport)
    writes = _writes_of(transport, monkeypatch)
    worker_factory(live_broker)
    message = wait.send()
    # followed without this process's flush(): the publisher wrote "running" on its own
    reader = RedisTransport(transport.connection, transport.namespace)
    offset, seen = 0, []
    while "running" not in seen:
        events = reader.read(message.message_id, offset, block=10.0)
        assert events, f"no running status while the job runs: {seen}"
        offset = events[-1].offset
        seen += [str(e.status) for e in events if e.kind == "status"]
    release.set()
    assert statuses(follow(message)) == ["enqueued", "running", "succeeded"]
    mine = [w[1:] for w in writes if w[0] == message.message_id and w[1] == "worker"]
    assert mine == [("worker", None, "running"), ("worker", None, "succeeded")]


def test_a_reader_in_the_workers_process_sees_a_held_start(
    live_broker, worker_factory, monkeypatch
):
    monkeypatch.setattr("nbqueue.live.middleware.START_HOLD", 3600.0)
    started, release = threading.Event(), threading.Event()

    @nbqueue.actor
    def wait():
        started.set()
        assert release.wait(30)

    worker_factory(live_broker)
    message = wait.send()
    assert started.wait(30)
    try:
        assert record(message).status is MessageStatus.running  # status() flushes the publisher
    finally:
        release.set()
    assert statuses(follow(message)) == ["enqueued", "running", "succeeded"]


def test_output_follows_a_held_start(live_broker, worker_factory, monkeypatch):
    monkeypatch.setattr("nbqueue.live.middleware.START_HOLD", 3600.0)
    release = threading.Event()

    @nbqueue.actor
    def talk():
        print("first line")
        assert release.wait(30)
        print("second line")

    worker_factory(live_broker)
    message = talk.send()
    reader = RedisTransport(live_broker.connection, live_broker.namespace)
    offset, events = 0, []
    while not any(e.kind == "output" for e in events):
        more = reader.read(message.message_id, offset, block=10.0)
        assert more, f"no output while the job runs: {events}"
        offset, events = more[-1].offset, events + more
    release.set()
    kinds = [e.kind if e.kind != "status" else str(e.status) for e in follow(message)]
    assert kinds == ["enqueued", "running", "output", "output", "succeeded"]


def test_a_taken_message_is_aborted_through_its_worker(
    live_broker, worker_factory, monkeypatch, redis_url
):
    """Between a worker's take and its (held) running write, the record still says enqueued:
    abort() must ask the worker, not mark the message aborted while it runs. The reader has a
    transport of its own, so no flush of this process's publisher writes the start first; the
    flag check is off, so the abort arrives through its notification."""
    from nbqueue._redis.client import RedisConnection
    from nbqueue.live.channel import get_publisher
    from nbqueue.live.transport import REQUESTED

    monkeypatch.setattr("nbqueue.live.middleware.START_HOLD", 3600.0)
    monkeypatch.setattr(RedisTransport, "abort_flags", lambda self, ids: [])
    runs: list[str] = []
    started = threading.Event()

    @nbqueue.actor(max_retries=3, min_backoff=10)
    def spin():
        runs.append("started")
        started.set()
        try:
            while True:
                time.sleep(0.01)
        finally:
            runs.append("cleaned up")

    message = spin.send()
    get_publisher(transport_for(live_broker)).flush()  # "enqueued" is written before the take
    worker_factory(live_broker)
    assert started.wait(30)
    reader = RedisTransport(RedisConnection(redis_url), live_broker.namespace)
    try:
        found = reader.status(message.message_id)
        assert found is not None and found.status is MessageStatus.enqueued
        now = int(time.time() * 1000)
        assert reader.abort(message.message_id, ttl=60000, now=now) == REQUESTED
    finally:
        reader.connection.close()
    events = follow(message, timeout=30000)
    assert statuses(events) == ["enqueued", "running", "aborted"]
    assert runs == ["started", "cleaned up"]
    live_broker.join(spin.queue_name, fail_fast=False)
    assert [d.reason for d in live_broker.get_dead_letters(spin.queue_name)] == ["aborted"]
