from __future__ import annotations

import threading

from nbqueue.live.memory import MemoryTransport, memory_transport_for
from nbqueue.live.transport import ABORTED_NOW, REQUESTED, TOO_LATE, Write
from nbqueue.results.backends import StubBackend


def _status(transport, message_id, status, mode="worker", attempt=1):
    return transport.write(
        [
            Write(
                message_id,
                60000,
                mode=mode,
                attempt=attempt,
                fields={"status": status, "attempt": attempt},
                status_event={"status": status},
            )
        ]
    )[0]


def test_a_blocked_reader_wakes_when_an_event_is_written():
    transport = MemoryTransport()
    got = []
    # Blocking for ten minutes: only the write can end the read before the join gives up.
    reader = threading.Thread(
        target=lambda: got.extend(transport.read("m", 0, block=600)), daemon=True
    )
    reader.start()
    transport.write([Write("m", 60000, events=[("output", {"text": "hi"})])])
    reader.join(30)
    assert [e.data for e in got] == [{"text": "hi"}]


def test_each_message_keeps_its_latest_events_only():
    transport = MemoryTransport(max_events=5)
    for i in range(20):
        transport.write([Write("m", 60000, events=[("output", {"text": str(i)})])])
    events = transport.read("m", 0, block=None)
    assert [e.offset for e in events] == [16, 17, 18, 19, 20]
    assert [e.offset for e in transport.read("m", 18, block=None)] == [19, 20]
    assert transport.read("m", 20, block=None) == []
    assert transport.read("unknown", 0, block=None) == []


def test_records_expire_after_their_ttl():
    transport = MemoryTransport()
    transport.write([Write("m", 0, mode="worker", fields={"status": "running"})])
    assert transport.status("m") is None
    transport.write([Write("n", 60000, mode="worker", fields={"status": "running"})])
    record = transport.status("n")
    assert record is not None and record.status == "running"
    transport._next_sweep = 0
    transport.write([Write("o", 0)])
    assert set(transport._logs) == {"n"}


def test_status_changes_follow_the_transport_rules():
    transport = MemoryTransport()
    assert _status(transport, "m", "running") == 1
    assert _status(transport, "m", "enqueued", mode="initial", attempt=0) == 0  # too late
    assert [e.data["status"] for e in transport.read("m", 0, block=None)] == ["running"]
    written = transport.write(
        [
            Write(
                "n",
                60000,
                mode="start",
                attempt=1,
                fields={"status": "running"},
                status_event={"status": "running"},
                backfill={"status": "enqueued"},
            )
        ]
    )
    assert written == [1]
    assert [e.data["status"] for e in transport.read("n", 0, block=None)] == [
        "enqueued",
        "running",
    ]


class Listener:
    def __init__(self):
        self.aborted = []

    def on_abort(self, message_id):
        self.aborted.append(message_id)

    def running_ids(self):
        return []


def test_aborts_skip_waiting_messages_and_notify_workers_of_running_ones():
    transport = MemoryTransport()
    listener = Listener()
    transport.subscribe(listener)
    _status(transport, "queued", "enqueued", mode="initial", attempt=0)
    _status(transport, "running", "running")
    _status(transport, "done", "succeeded")

    assert transport.abort("queued", ttl=60000, now=1) == ABORTED_NOW
    assert transport.abort("running", ttl=60000, now=1) == REQUESTED
    assert transport.abort("done", ttl=60000, now=1) == TOO_LATE
    assert listener.aborted == ["running"]
    queued = transport.status("queued")
    assert queued is not None and queued.status == "aborted" and queued.abort_requested
    assert _status(transport, "queued", "running", mode="start") == -1  # a worker skips it

    transport.unsubscribe(listener)
    _status(transport, "other", "running")
    transport.abort("other", ttl=60000, now=1)
    assert listener.aborted == ["running"]


def test_every_reader_of_a_backend_shares_its_transport():
    backend = StubBackend()
    assert memory_transport_for(backend) is memory_transport_for(backend)
    assert memory_transport_for(backend) is not memory_transport_for(StubBackend())
