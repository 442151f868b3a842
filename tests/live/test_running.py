from __future__ import annotations

import os
import socket
import threading
import time

from nbqueue.errors import Abort
from nbqueue.live.running import DONE, RUNNING, RunningTable, summary, worker_id


def test_summaries_are_one_bounded_line():
    assert summary(None) == ""
    assert summary(ValueError("boom")) == "ValueError: boom"
    long = summary(RuntimeError("x" * 1000))
    assert len(long) == 500 and long.endswith("...")

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    assert summary(Unprintable()) == "Unprintable"


def test_worker_ids_name_the_host_and_process():
    assert worker_id() == f"{socket.gethostname()}:{os.getpid()}"


def test_an_abort_while_starting_is_remembered_and_one_while_running_interrupts():
    table = RunningTable()
    running = table.start("m", attempt=1, started_at=0, ttl=1000)
    assert table.mine("m") is running and table.mine("other") is None
    table.on_abort("m")
    assert running.abort_requested and not running.aborted
    assert table.running_ids() == ["m"]

    interrupted = []
    ready = threading.Event()

    def spin():
        table.start("n", attempt=1, started_at=0, ttl=1000).state = RUNNING
        ready.set()
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.001)
        except Abort:
            interrupted.append(True)

    thread = threading.Thread(target=spin)
    thread.start()
    ready.wait(5)
    table.on_abort("n")
    table.on_abort("n")  # a second request does not raise again
    thread.join(5)
    assert interrupted == [True]


def test_a_done_message_is_never_interrupted_and_is_forgotten():
    table = RunningTable()
    running = table.start("m", attempt=1, started_at=0, ttl=1000)
    running.state = DONE
    table.on_abort("m")  # would raise in this thread if it interrupted
    assert not running.aborted and table.running_ids() == []
    assert table.forget("m") is running and table.forget("m") is None
    table.on_abort("unknown")


def test_prune_drops_done_messages():
    table = RunningTable()
    table.start("m", attempt=1, started_at=0, ttl=1000).state = DONE
    table.start("n", attempt=1, started_at=0, ttl=1000)
    table.prune()
    assert table.running_ids() == ["n"]
    assert table._by_id.keys() == {"n"}
