from __future__ import annotations

import threading

from nbqueue.live.channel import Channel, Publisher
from nbqueue.live.memory import MemoryTransport
from nbqueue.live.transport import Write


class GatedTransport(MemoryTransport):
    """A memory transport whose writes wait for a gate: a store that cannot keep up."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gate = threading.Event()
        self.gate.set()
        self.batches = 0

    def write(self, writes):
        self.gate.wait(10)
        self.batches += 1
        return super().write(writes)


def _channel(transport, **options) -> Channel:
    options = {
        "ttl": 60000,
        "max_chunk": 10,
        "max_pending": 100,
        "progress_interval": 0.1,
        **options,
    }
    return Channel(Publisher(transport), "m", **options)


def _events(transport):
    return [(e.kind, e.data) for e in transport.read("m", 0, block=None)]


def _final(status="succeeded"):
    return Write(
        "m",
        60000,
        mode="worker",
        attempt=1,
        fields={"status": status},
        status_event={"status": status},
    )


def test_text_merges_up_to_max_chunk_and_long_writes_are_split():
    transport = GatedTransport()
    transport.gate.clear()  # hold the publisher so that everything is pending together
    channel = _channel(transport)
    channel.output("abc", "stdout")
    channel.output("def", "stdout")
    channel.output("0123456789xyz", "stdout")
    channel.output("err", "stderr")
    channel.value({"value": 1, "stream": "stream"})
    transport.gate.set()
    channel.close(_final())
    texts = [(k, d.get("text", d.get("value"))) for k, d in _events(transport)]
    assert texts[-1] == ("status", None)
    joined = "".join(str(t) for k, t in texts if k == "output")
    assert joined == "abcdef0123456789xyzerr1"
    assert all(len(str(t)) <= 10 for k, t in texts if k == "output")


def test_when_the_store_cannot_keep_up_the_oldest_chunks_are_dropped_with_a_marker():
    transport = GatedTransport()
    channel = _channel(transport, max_pending=5, max_chunk=4)
    transport.gate.clear()
    channel.output("a", "stdout")  # taken by the publisher, which now waits at the gate
    for i in range(100):
        channel.output(f"{i:03d}\n", "stdout")  # 4 characters: one chunk each
    transport.gate.set()
    channel.close(_final())
    events = _events(transport)
    dropped = [d["events"] for k, d in events if k == "dropped"]
    outputs = [d["text"] for k, d in events if k == "output"]
    assert dropped and sum(dropped) + len(outputs) == 101
    assert outputs[-5:] == [f"{i:03d}\n" for i in range(95, 100)]
    assert events[-1] == ("status", {"status": "succeeded"})


def test_progress_is_held_back_then_delivered_and_forced_out_by_close():
    transport = MemoryTransport()
    channel = _channel(transport, progress_interval=0.2)
    channel.progress({"done": 1})  # goes out at once
    assert transport.read("m", 0, block=5)
    for done in range(2, 1000):
        channel.progress({"done": done})  # held back, then only the latest goes out
    transport.read("m", 1, block=2)
    channel.progress({"done": 1000})
    channel.close(_final())
    events = _events(transport)
    progress = [d["done"] for k, d in events if k == "progress"]
    assert progress[0] == 1 and progress[-1] == 1000 and len(progress) <= 4
    assert 999 in progress  # the held-back value arrived on its own, before close
    assert events[-1][0] == "status"
    record = transport.status("m")
    assert record is not None and record.progress is not None and record.progress.done == 1000


def test_close_waits_for_the_publisher_and_keeps_the_order():
    transport = GatedTransport()
    channel = _channel(transport)
    transport.gate.clear()
    channel.output("first", "stdout")
    closer = threading.Thread(target=channel.close, args=(_final(),))
    closer.start()
    closer.join(0.05)
    assert closer.is_alive()  # the publisher holds the channel: close waits for it
    transport.gate.set()
    closer.join(5)
    assert [k for k, _ in _events(transport)] == ["output", "status"]
    assert channel.output("late", "stdout") is False


def test_a_quiet_channel_is_closed_without_the_publisher():
    transport = MemoryTransport()
    publisher = Publisher(transport)
    channel = Channel(
        publisher, "m", ttl=60000, max_chunk=10, max_pending=10, progress_interval=0.1
    )
    channel.close(_final())
    assert not publisher.is_alive()  # never needed
    assert _events(transport) == [("status", {"status": "succeeded"})]


def test_flush_waits_for_submitted_writes():
    transport = GatedTransport()
    publisher = Publisher(transport)
    transport.gate.clear()
    publisher.submit(Write("m", 60000, mode="initial", fields={"status": "enqueued"}))
    publisher.flush(timeout=0.05)
    assert transport.status("m") is None  # still held at the gate
    transport.gate.set()
    publisher.flush()
    record = transport.status("m")
    assert record is not None and record.status == "enqueued"


def test_the_publisher_thread_exits_when_idle_and_comes_back(monkeypatch):
    from nbqueue.live import channel as channel_module

    monkeypatch.setattr(channel_module, "IDLE_EXIT", 0.05)
    transport = MemoryTransport()
    publisher = Publisher(transport)
    publisher.submit(Write("m", 60000, events=[("output", {"text": "a"})]))
    thread = publisher._thread
    assert thread is not None
    thread.join(5)
    assert not publisher.is_alive()
    publisher.submit(Write("m", 60000, events=[("output", {"text": "b"})]))
    publisher.flush()
    assert [e.data["text"] for e in transport.read("m", 0, block=None)] == ["a", "b"]
