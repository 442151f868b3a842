"""The multiprocess directory is emptied once per run, by the first process of the run."""

from __future__ import annotations

import os

from nbqueue._prometheus import store


def test_a_new_run_removes_the_metric_files_of_the_last_one(tmp_path) -> None:
    old = tmp_path / "counter_123.db"
    old.write_bytes(b"x")
    (tmp_path / "queues-123.sock").write_bytes(b"")  # not a metric file: its owner removes it

    assert store.start_run(str(tmp_path), run="100:1")
    assert not old.exists()
    assert (tmp_path / "queues-123.sock").exists()

    # The second worker process of the same run keeps what the first one wrote meanwhile.
    mine = tmp_path / "counter_124.db"
    mine.write_bytes(b"x")
    assert not store.start_run(str(tmp_path), run="100:1")
    assert mine.exists()

    assert store.start_run(str(tmp_path), run="200:5")
    assert not mine.exists()


def test_the_run_is_named_after_this_process_when_it_has_no_supervisor() -> None:
    pid, _, started = store.run_id().partition(":")
    assert int(pid) == os.getpid()
    assert started.isdigit()
