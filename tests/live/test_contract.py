"""The live-channel contract, run on memory and on real Redis: ordered events, progress
coalescing, aborts in every state, bounded output, and the agent-like example of issue #5."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest

import nbqueue
from nbqueue.live import MessageStatus
from nbqueue.results import ResultFailure
from tests.live.conftest import follow, record, reports, statuses, text


def test_a_streaming_async_actor_yields_its_events_in_order(live_broker, worker_factory):
    @nbqueue.actor
    async def tokens(n):
        print("starting")
        for i in range(n):
            await asyncio.sleep(0.005)
            yield f"t{i} "
        print("done", file=sys.stderr)

    worker_factory(live_broker)
    message = tokens.send(5)
    events = follow(message)

    assert statuses(events) == ["enqueued", "running", "succeeded"]
    assert [e.offset for e in events] == list(range(1, len(events) + 1))
    assert text(events) == "t0 t1 t2 t3 t4 "
    assert text(events, "stdout") == "starting\n"
    assert text(events, "stderr") == "done\n"
    assert events[-1].status is MessageStatus.succeeded
    assert message.get_result(block=True) == "t0 t1 t2 t3 t4 "
    final = record(message)
    assert final.status is MessageStatus.succeeded and final.attempt == 1
    assert final.offset == events[-1].offset
    assert final.duration is not None and final.duration >= 0


def test_events_resume_from_an_offset_and_work_as_an_async_iterator(live_broker, worker_factory):
    @nbqueue.actor
    def chatty():
        for i in range(3):
            nbqueue.stream({"step": i})

    worker_factory(live_broker)
    message = chatty.send()
    events = follow(message)
    values = [e.data["value"] for e in events if e.kind == "output"]
    assert values == [{"step": 0}, {"step": 1}, {"step": 2}]

    stream = message.events(follow=False)
    first_two = [next(stream), next(stream)]
    assert first_two == events[:2] and stream.offset == 2
    assert list(message.events(offset=stream.offset, follow=False)) == events[2:]

    async def collect():
        return [event async for event in message.events(timeout=5000)]

    assert asyncio.run(collect()) == events


def test_progress_is_coalesced_and_the_last_report_always_arrives(live_broker, worker_factory):
    calls = []

    @nbqueue.actor
    def busy(seconds):
        deadline = time.monotonic() + seconds
        done = 0
        while time.monotonic() < deadline:
            done += 1
            nbqueue.progress(done, total=None, desc="spinning")
        calls.append(done)
        nbqueue.progress(done, total=done, desc="finished")

    worker_factory(live_broker)
    message = busy.send(0.5)
    events = follow(message)

    sent = reports(events)
    assert calls[0] > 1000  # a tight loop...
    assert 2 <= len(sent) <= 0.5 / 0.1 + 3  # ...costs a handful of events
    assert sent[-1].done == calls[0] and sent[-1].desc == "finished"
    assert sent[-1].fraction == 1.0
    assert events[-1].status is MessageStatus.succeeded  # after the last report
    assert record(message).progress == sent[-1]


def _dead_reasons(broker: Any, queue_name: str) -> list[str]:
    return [letter.reason for letter in broker.get_dead_letters(queue_name)]


def _assert_aborted(broker: Any, message: Any, runs: list[Any]) -> None:
    final = record(message)
    assert final.status is MessageStatus.aborted and final.abort_requested
    with pytest.raises(ResultFailure) as failure:
        message.get_result(block=True, timeout=5000)
    assert failure.value.orig_exc_type == "Abort"
    assert _dead_reasons(broker, message.queue_name) == ["aborted"]
    assert len(runs) <= 1  # never retried


def test_aborting_a_queued_message_skips_it(live_broker, worker_factory):
    runs = []

    @nbqueue.actor(max_retries=3, min_backoff=10)
    def job():
        runs.append(1)

    message = job.send()
    assert record(message).status is MessageStatus.enqueued
    assert message.abort() is True
    assert record(message).status is MessageStatus.aborted  # at once, before any worker

    worker = worker_factory(live_broker)
    live_broker.join(job.queue_name, fail_fast=False)
    worker.join()

    assert runs == []
    _assert_aborted(live_broker, message, runs)
    assert statuses(follow(message)) == ["enqueued", "aborted"]
    assert message.abort() is False  # too late now


def test_aborting_a_delayed_message_skips_it_when_due(live_broker, worker_factory):
    runs = []

    @nbqueue.actor(max_retries=3, min_backoff=10)
    def job():
        runs.append(1)

    message = job.send_with_options(delay=300)
    assert record(message).status is MessageStatus.delayed
    assert message.abort() is True
    assert record(message).status is MessageStatus.aborted

    # Started after the abort, so the abort cannot lose a race with the delay on a slow
    # machine; the worker still takes the message from the delay queue when it is due.
    worker = worker_factory(live_broker)
    live_broker.join(job.queue_name, fail_fast=False)
    worker.join()
    assert runs == []
    _assert_aborted(live_broker, message, runs)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_aborting_a_running_message_stops_it_through_its_notification(
    live_broker, worker_factory, flavour, kind, monkeypatch
):
    # The actor would run for an hour (the sync one forever), and on Redis the once-a-second
    # check of abort flags is off: the abort can only arrive through its notification (memory:
    # abort() calls the worker at once; Redis: the XREAD on the aborts stream), so a message
    # that ends aborted shows the prompt path works, with no clock to race.
    if kind == "redis":
        from nbqueue._redis.live import RedisTransport

        monkeypatch.setattr(RedisTransport, "abort_flags", lambda self, ids: [])
    runs: list[str] = []

    if flavour == "sync":

        @nbqueue.actor(actor_name="job", max_retries=3, min_backoff=10)
        def job():
            runs.append("started")
            nbqueue.stream("started")
            try:
                while True:
                    time.sleep(0.01)
            finally:
                runs.append("cleaned up")

    else:

        @nbqueue.actor(actor_name="job", max_retries=3, min_backoff=10)
        async def job():
            runs.append("started")
            nbqueue.stream("started")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                runs.append("cancelled")
                raise

    worker = worker_factory(live_broker)
    message = job.send()
    for event in message.events(timeout=30000):
        if event.kind == "output":
            break  # the actor's own code runs
    assert message.abort() is True
    events = follow(message, timeout=30000)

    assert statuses(events) == ["enqueued", "running", "aborted"]
    assert runs == ["started", "cleaned up" if flavour == "sync" else "cancelled"]
    live_broker.join(job.queue_name, fail_fast=False)
    worker.join()
    _assert_aborted(live_broker, message, ["one run"])
    assert record(message).attempt == 1


def test_ten_thousand_output_lines_keep_memory_bounded(make_broker, worker_factory):
    broker = make_broker(max_events=50, max_chunk=1024)

    @nbqueue.actor
    def flood():
        for i in range(10000):
            print(f"line {i:05d} " + "x" * 88)

    worker_factory(broker)
    message = flood.send()
    events = follow(message, timeout=30000)

    stored = list(message.events(follow=False))
    # Older lines go one of two ways, both announced by a "dropped" event: the store trims them
    # (the reader then puts a "dropped" first), or, when the store falls behind the actor (a
    # loaded machine), the channel drops chunks before writing and says so in the stream.
    dropped = [e for e in stored if e.kind == "dropped"]
    assert dropped and all(e.data["events"] > 0 for e in dropped)
    assert len(stored) <= 50 + 100  # Redis trims streams by whole nodes of 100 entries
    assert sum(len(e.text) for e in stored) <= (50 + 100) * 1024
    tail = text(events, "stdout")
    assert tail.endswith("line 09999 " + "x" * 88 + "\n")
    assert events[-1].status is MessageStatus.succeeded


def test_the_agent_example_streams_reports_progress_and_is_aborted_halfway(
    live_broker, worker_factory
):
    """Issue #5's example: an async actor streams tokens (2 s here, 10 s in the issue) and
    reports progress; another thread aborts it halfway."""
    # Halfway, the answer waits (up to 20 s) at a gate that only the test's cleanup opens: the
    # abort lands while it waits, so it cannot lose a race with the end of the run on a slow
    # machine. Were aborts broken, the run would go on after 20 s and succeed.
    gate = threading.Event()

    @nbqueue.actor(max_retries=5, min_backoff=10)
    async def agent(prompt, n_tokens=40, seconds=2.0):
        for i in range(n_tokens):
            await asyncio.sleep(seconds / n_tokens)
            nbqueue.progress(i + 1, total=n_tokens, desc=f"answering {prompt!r}")
            yield f"tok{i} "
            if i + 1 == n_tokens // 2:
                await asyncio.to_thread(gate.wait, 20)

    worker_factory(live_broker)
    message = agent.send("why?")
    halfway = threading.Event()

    def stop_halfway():
        for event in message.events(timeout=30000):
            progress = event.progress
            if progress is not None and (progress.fraction or 0) >= 0.5:
                halfway.set()
                message.abort()
                return

    stopper = threading.Thread(target=stop_halfway)
    stopper.start()
    try:
        events = follow(message, timeout=40000)
    finally:
        gate.set()
        stopper.join(30)

    assert halfway.is_set()
    assert statuses(events) == ["enqueued", "running", "aborted"]  # it did not run to the end
    tokens = text(events).split()
    assert 20 <= len(tokens) < 40
    assert tokens == [f"tok{i}" for i in range(len(tokens))]
    last = reports(events)[-1].fraction
    assert last is not None and 0.5 <= last < 1.0
    with pytest.raises(ResultFailure, match="Abort"):
        message.get_result(block=True, timeout=5000)
    assert record(message).attempt == 1


@pytest.mark.parametrize("initial_first", [True, False], ids=["enqueued-first", "enqueued-late"])
def test_a_deferred_start_goes_in_order_with_the_last_write(live_broker, initial_first):
    """A write's ``lead`` (a deferred start's status event) lands after the backfill and before
    the write's events, on either store: the log reads enqueued, running, the output, the end,
    whether or not the producer's first write landed before it."""
    from nbqueue.live import transport_for
    from nbqueue.live.transport import Write

    transport = transport_for(live_broker)
    message_id = f"deferred-{initial_first}"
    initial = Write(
        message_id,
        60000,
        mode="initial",
        fields={"status": "enqueued", "actor_name": "a", "queue_name": "q"},
        status_event={"status": "enqueued"},
    )
    last = Write(
        message_id,
        60000,
        [("output", {"text": "hi", "stream": "stdout"})],
        mode="worker",
        attempt=1,
        fields={"status": "succeeded", "attempt": 1, "worker_id": "w", "started_at": 5},
        once={"enqueued_at": 4},
        status_event={"status": "succeeded", "attempt": 1},
        backfill={"status": "enqueued"},
        lead={"status": "running", "attempt": 1, "worker_id": "w"},
    )
    writes = [initial, last] if initial_first else [last, initial]
    transport.write(writes)
    events = transport.read(message_id, 0, block=None)
    order = [str(e.status) if e.kind == "status" else e.kind for e in events]
    assert order == ["enqueued", "running", "output", "succeeded"]
    found = transport.status(message_id)
    assert found is not None and found.status is MessageStatus.succeeded
    assert found.enqueued_at == 4 and found.worker_id == "w" and found.offset == 4
