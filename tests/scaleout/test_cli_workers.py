"""CLI worker processes against real Redis and RabbitMQ: they consume what a producer sends,
share load evenly, run each message once, and lose nothing on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._cli import CliWorker, Record, Target, wait_until, worker_env


def start(
    target: Target, tasks: str, tmp_path: Path, *args: str, log: str = "worker.log", **env: str
) -> CliWorker:
    return CliWorker(
        [tasks, "-P", str(tmp_path), *target.cli_args(), *args],
        cwd=tmp_path,
        log=tmp_path / log,
        env=worker_env(**target.env(), **env),
    )


@pytest.mark.timeout(120)
def test_a_cli_worker_runs_what_the_test_sends_and_stores_results_for_connect(
    target: Target, record: Record, tasks: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in target.env().items():  # the notebook side sees the same results store
        monkeypatch.setenv(name, value)
    worker = start(target, tasks, tmp_path, "--threads", "4")
    try:
        worker.wait_ready(1)
        producer = target.producer(connect=True)
        job = target.declare_job(producer)
        job.send_many(range(20))

        import nbqueue

        @nbqueue.actor(queue_name=target.queue, actor_name="add", broker=producer)
        def add(x: int, y: int) -> int:
            raise AssertionError("runs in the CLI worker only")

        # Results written by the CLI worker, read by a connect()-built producer (a notebook).
        message = add.send(2, 3)
        assert message.get_result(block=True, timeout=30000) == 5
        wait_until(lambda: record.finished() == 20, 30, "20 messages to run")
        worker.terminate()
        assert worker.wait(30) == 0, worker.text()
    finally:
        worker.kill()
    assert set(record.runs().values()) == {1}
    log = worker.text()
    assert f"Queue {target.queue!r}: actors add, job." in log
    assert "results in RedisBackend, live status; 1 process(es) x 4 thread(s)." in log
    assert "Worker stopped." in log


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_share_10000_messages_evenly_and_run_each_once(
    target: Target, record: Record, tasks: str, tmp_path: Path
) -> None:
    total = 10_000
    worker = start(target, tasks, tmp_path, "--processes", "2", "--threads", "8")
    try:
        # Both processes consume before anything is sent: otherwise the first to boot could
        # take the whole prefetch window on RabbitMQ.
        worker.wait_ready(2)
        job = target.declare_job(target.producer())
        for start_at in range(0, total, 1000):
            job.send_many(range(start_at, start_at + 1000))
        wait_until(lambda: record.finished() == total, 240, f"{total} messages to run")
        worker.terminate()
        assert worker.wait(60) == 0, worker.text()[-3000:]
    finally:
        worker.kill()

    runs = record.runs()
    assert len(runs) == total
    duplicates = {n: c for n, c in runs.items() if c != 1}
    assert duplicates == {}, f"{len(duplicates)} messages ran more than once"
    counts = sorted(record.by_pid().values())
    print(f"{target.kind}: per-process counts {counts}")
    assert len(counts) == 2 and sum(counts) == total
    # No-op jobs run as fast as each process gets CPU: on a loaded machine (CI shares its two
    # cores) the split follows the scheduler as much as the broker, so the bar is that neither
    # process starves (each ran at least a third of what the other did), not an even split.
    assert counts[0] >= counts[1] / 3, f"unbalanced: {counts}"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigterm_with_work_in_flight_loses_nothing(
    target: Target, record: Record, tasks: str, tmp_path: Path
) -> None:
    blocking, backlog = 16, 200
    first = start(
        target,
        tasks,
        tmp_path,
        *("--processes", "2", "--threads", "8", "--worker-shutdown-timeout", "10000"),
        log="first.log",
        NBQUEUE_QUEUE_PREFETCH="8",
    )
    try:
        first.wait_ready(2)
        job = target.declare_job(target.producer())
        for n in range(blocking):
            job.send(n, block=True)
        # At least one process has all its threads busy; how the rest spread depends on the
        # broker's prefetch (see the report), and the accounting below does not assume it.
        wait_until(lambda: len(record.starts()) >= 8, 60, "8 messages to be running")
        job.send_many(range(blocking, blocking + backlog))
        running = sorted(int(n) for n in record.starts())
        first.terminate()
        # Some running messages finish within --worker-shutdown-timeout; the others are still
        # running when it expires and go back to the broker. The timeout (10 s) is what the
        # released ones have to finish in: far more than they need, even on a loaded machine.
        released = running[: len(running) // 2]
        record.release(*released)
        assert first.wait(60) == 0, first.text()[-3000:]
    finally:
        first.kill()
    started_before = {int(n) for n in record.starts()}
    finished_before = {int(n) for n in record.runs()}
    assert set(released) <= finished_before
    stuck = sorted(started_before - set(released))
    assert stuck, "every running message was released: the test would prove nothing"

    second = start(target, tasks, tmp_path, "--processes", "2", "--threads", "8", log="second.log")
    try:
        second.wait_ready(2)
        record.release(*range(blocking))
        wait_until(
            lambda: record.finished() == blocking + backlog, 120, "every message to have run"
        )
        second.terminate()
        assert second.wait(60) == 0, second.text()[-3000:]
    finally:
        second.kill()

    runs, starts = record.runs(), record.starts()
    assert set(runs) == {str(n) for n in range(blocking + backlog)}, "messages were lost"
    again = sorted(int(n) for n, c in starts.items() if c > 1)
    print(
        f"{target.kind}: running at SIGTERM {len(running)} (of {blocking} sent), finished "
        f"before exit {len(released)}, ran again after restart {len(again)}, "
        f"finished twice {sum(1 for c in runs.values() if c > 1)}"
    )
    # A message still running at the deadline ran again; one that finished did not.
    assert again == [n for n in stuck if n not in finished_before]
    assert all(runs[str(n)] == 1 for n in released)
