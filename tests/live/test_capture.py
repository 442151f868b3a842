from __future__ import annotations

import contextlib
import io
import sys
import threading

import nbqueue
from nbqueue.context import set_channel
from nbqueue.live import capture
from nbqueue.live.channel import Channel, get_publisher
from nbqueue.live.memory import MemoryTransport
from nbqueue.live.transport import Write
from tests.live.conftest import follow, text


def _channel(transport: MemoryTransport, message_id: str = "m") -> Channel:
    return Channel(
        get_publisher(transport),
        message_id,
        ttl=60000,
        max_chunk=4096,
        max_pending=100,
        progress_interval=0.1,
    )


def _texts(transport: MemoryTransport, message_id: str = "m") -> list[tuple[str, str]]:
    return [(e.data["stream"], e.data["text"]) for e in transport.read(message_id, 0, block=None)]


def test_writes_go_to_the_running_message_and_everything_else_passes_through(capsys):
    capture.install()
    transport = MemoryTransport()
    channel = _channel(transport)
    set_channel(channel)
    try:
        print("captured")
        print("also captured", file=sys.stderr)
        sys.stdout.writelines(["a", "b\n"])
        sys.stdout.flush()
        other = threading.Thread(target=print, args=("from another thread",))
        other.start()
        other.join()
    finally:
        set_channel(None)
    print("outside")
    channel.close(Write("m", 60000))

    assert _texts(transport) == [
        ("stdout", "captured\n"),
        ("stderr", "also captured\n"),
        ("stdout", "ab\n"),
    ]
    out = capsys.readouterr().out
    assert (
        "from another thread\n" in out
        and "outside\n" in out
        and "captured" not in out.replace("from another thread", "")
    )


def test_install_is_idempotent_and_wraps_a_stream_replaced_later():
    capture.install()
    first = sys.stdout
    capture.install()
    assert sys.stdout is first and isinstance(first, capture.CaptureStream)

    replacement = io.StringIO()  # as ipykernel or redirect_stdout would do
    with contextlib.redirect_stdout(replacement):
        capture.install()
        assert isinstance(sys.stdout, capture.CaptureStream)
        assert sys.stdout.target is replacement
        print("still passes through")
        assert sys.stdout.encoding is None or isinstance(sys.stdout.encoding, str)
    assert replacement.getvalue() == "still passes through\n"


def test_uninstall_restores_the_wrapped_streams():
    capture.install()
    wrapped = sys.stdout
    assert isinstance(wrapped, capture.CaptureStream)
    capture.uninstall()
    assert sys.stdout is wrapped.target
    capture.uninstall()  # nothing to do
    capture.install()


def test_a_closed_channel_passes_late_writes_through(capsys):
    capture.install()
    transport = MemoryTransport()
    channel = _channel(transport)
    channel.close(Write("m", 60000))
    set_channel(channel)
    try:
        print("late")
    finally:
        set_channel(None)
    assert capsys.readouterr().out == "late\n"
    assert _texts(transport) == []


def test_concurrent_messages_never_mix_their_output(live_broker, worker_factory):
    @nbqueue.actor
    def talk(name):
        for i in range(200):
            print(f"{name} {i}")

    @nbqueue.actor
    async def talk_async(name):
        import asyncio

        for i in range(200):
            print(f"{name} {i}")
            await asyncio.sleep(0)

    worker_factory(live_broker, worker_threads=4)
    messages = {
        "a": talk.send("a"),
        "b": talk.send("b"),
        "c": talk_async.send("c"),
        "d": talk_async.send("d"),
    }
    for name, message in messages.items():
        lines = text(follow(message), "stdout").splitlines()
        assert lines == [f"{name} {i}" for i in range(200)]


def test_capture_can_be_turned_off_per_actor(live_broker, worker_factory, capsys):
    @nbqueue.actor(capture_output=False)
    def loud():
        print("to the console")
        nbqueue.stream("to the channel")

    worker_factory(live_broker)
    message = loud.send()
    events = follow(message)
    assert text(events, "stdout") == "" and text(events) == "to the channel"
    assert "to the console" in capsys.readouterr().out
