from __future__ import annotations

import asyncio
import time

from nbqueue.live.events import EventStream
from nbqueue.live.memory import MemoryTransport
from nbqueue.live.transport import Write


def _write(transport, *events, status=None):
    write = Write("m", 60000, events=list(events))
    if status:
        write.mode, write.attempt = "worker", 1
        write.fields = {"status": status}
        write.status_event = {"status": status}
    transport.write([write])


def test_following_stops_at_the_timeout_without_raising():
    transport = MemoryTransport()
    _write(transport, ("output", {"text": "a"}), status="running")
    stream = EventStream(transport, "m", timeout=200)
    started = time.monotonic()
    events = list(stream)
    assert [e.kind for e in events] == ["output", "status"]
    assert not stream.finished and stream.offset == 2
    waited = time.monotonic() - started
    assert waited > 0.15  # it followed until the timeout
    assert waited < 30  # a hang guard: 200 ms taken as seconds would be 200 s


def test_following_stops_after_the_final_status():
    transport = MemoryTransport()
    _write(transport, ("output", {"text": "a"}), status="succeeded")
    _write(transport, ("output", {"text": "after the end"}))
    stream = EventStream(transport, "m")
    assert [e.kind for e in stream] == ["output", "status"]
    assert stream.finished
    # Resuming at the end of a finished message stops at once.
    again = EventStream(transport, "m", offset=3)
    assert list(again) == [] and again.finished


def test_a_gap_in_the_offsets_is_reported_as_dropped_events():
    transport = MemoryTransport(max_events=3)
    for i in range(10):
        _write(transport, ("output", {"text": str(i)}))
    events = list(EventStream(transport, "m", follow=False))
    assert (events[0].kind, events[0].data, events[0].offset) == ("dropped", {"events": 7}, 7)
    assert [e.offset for e in events[1:]] == [8, 9, 10]
    assert list(EventStream(transport, "m", offset=9, follow=False))[0].offset == 10


def test_async_iteration_waits_without_blocking_the_loop():
    transport = MemoryTransport()

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, _write, transport, ("output", {"text": "late"}))
        loop.call_later(0.3, lambda: _write(transport, status="succeeded"))
        events = [e async for e in EventStream(transport, "m", timeout=5000)]
        task.cancel()
        return events, ticks

    events, ticks = asyncio.run(main())
    assert [e.kind for e in events] == ["output", "status"]
    assert ticks >= 10  # the loop kept running while the stream waited
