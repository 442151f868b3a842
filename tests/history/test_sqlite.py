from __future__ import annotations

import multiprocessing
import pathlib
from typing import Any

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.common import current_millis
from nbqueue.history import JobQuery, Limits, SQLiteHistory
from nbqueue.live.middleware import transport_for
from nbqueue.results.backends import StubBackend


def _fields(status: str, enqueued_at: int, **extra: Any) -> dict[str, Any]:
    return {
        "status": status,
        "actor_name": "add",
        "queue_name": "default",
        "enqueued_at": enqueued_at,
        **extra,
    }


def _message(message_id: str, *args: Any) -> nbqueue.Message[Any]:
    return nbqueue.Message("default", "add", args, {}, {}, message_id=message_id)


def test_a_memory_broker_records_its_jobs_with_message_output_and_origin(
    tmp_path: pathlib.Path, worker_factory: Any
) -> None:
    store = SQLiteHistory(str(tmp_path / "h.sqlite3"), kernel="k-1", notebook="a/b.ipynb")
    broker = StubBroker()
    broker.add_middleware(nbqueue.results.Results(backend=StubBackend()))
    broker.add_middleware(nbqueue.live.Live())
    assert transport_for(broker).record_to(store)

    @nbqueue.actor(broker=broker, store_results=True)
    def add(x: int, y: int) -> int:
        print("adding", x, y)
        return x + y

    worker_factory(broker)
    message = add.send(2, 3)
    assert broker.get_results_backend().get_result(message, block=True, timeout=10000) == 5
    # the final status is recorded right after the ack, by the worker thread: wait for its write
    assert store.until(
        lambda: (
            (found := store.job(message.message_id)) is not None and found.status == "succeeded"
        ),
        10,
    )
    job = store.job(message.message_id)
    assert job is not None
    assert (job.actor, job.queue, job.args) == ("add", "default", "2, 3")
    assert (job.notebook, job.kernel) == ("a/b.ipynb", "k-1")
    assert job.message is not None and job.message["message_id"] == message.message_id
    assert job.output == "adding 2 3\n"
    assert job.started_at is not None and job.finished_at is not None
    assert job.worker is not None and job.worker.count(":") == 1
    assert [j.id for j in store.jobs(JobQuery(status="succeeded"))] == [message.message_id]
    assert store.jobs(JobQuery(status="failed")) == []
    store.close()


def test_the_count_bound_keeps_the_newest_jobs(tmp_path: pathlib.Path) -> None:
    store = SQLiteHistory(str(tmp_path / "h.sqlite3"), limits=Limits(max_jobs=5))
    now = current_millis()
    for i in range(12):
        store.record(f"id-{i:02}", _fields("enqueued", now + i), _message(f"id-{i:02}", i), None)
    assert store.flush()
    assert store.count() == 5
    assert [j.id for j in store.jobs()] == [f"id-{i:02}" for i in range(11, 6, -1)]
    store.close()


def test_the_age_bound_drops_jobs_enqueued_before_it(tmp_path: pathlib.Path) -> None:
    store = SQLiteHistory(str(tmp_path / "h.sqlite3"), limits=Limits(max_age=60_000))
    now = current_millis()
    store.record("old", _fields("succeeded", now - 120_000), _message("old"), None)
    store.record("new", _fields("succeeded", now), _message("new"), None)
    assert store.flush()
    assert [j.id for j in store.jobs()] == ["new"]
    store.close()


def test_filters_and_id_prefix_search(tmp_path: pathlib.Path) -> None:
    store = SQLiteHistory(str(tmp_path / "h.sqlite3"), notebook="x.ipynb", kernel="k")
    now = current_millis()
    store.record("abc-1", _fields("failed", now, error="ValueError: no"), _message("abc-1"), None)
    store.record(
        "abd-2", {**_fields("running", now + 1), "actor_name": "mul"}, _message("abd-2"), None
    )
    assert store.flush()
    assert [j.id for j in store.jobs(JobQuery(q="abc"))] == ["abc-1"]
    assert [j.id for j in store.jobs(JobQuery(q="ab"))] == ["abd-2", "abc-1"]
    assert [j.id for j in store.jobs(JobQuery(actor="mul"))] == ["abd-2"]
    assert [j.id for j in store.jobs(JobQuery(notebooks=("x.ipynb",)))] == ["abd-2", "abc-1"]
    assert store.jobs(JobQuery(notebooks=("y.ipynb",))) == []
    assert [j.id for j in store.jobs(JobQuery(queue="default", status="failed"))] == ["abc-1"]
    store.close()


def _writer(path: str, prefix: str, count: int, start: Any) -> None:
    store = SQLiteHistory(path, kernel=prefix)
    start.wait(30)
    now = current_millis()
    for i in range(count):
        message_id = f"{prefix}-{i:04}"
        store.record(message_id, _fields("enqueued", now + i), _message(message_id, i), None)
        store.record(message_id, _fields("succeeded", now + i, attempt=1), None, None)
    assert store.flush(60)
    store.close()


def test_two_processes_write_the_same_file_at_once(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "h.sqlite3")
    SQLiteHistory(path).close()  # the schema exists before the writers race
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [context.Process(target=_writer, args=(path, p, 300, start)) for p in ("ka", "kb")]
    for process in writers:
        process.start()
    start.set()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    store = SQLiteHistory(path)
    jobs = store.jobs(JobQuery(limit=1000))
    assert len(jobs) == 600
    assert {j.status for j in jobs} == {"succeeded"}
    assert {j.kernel for j in jobs} == {"ka", "kb"}
    assert store.version() >= 2
    store.close()


def test_commands_reach_the_kernel_that_ran_the_job(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "h.sqlite3")
    kernel = SQLiteHistory(path, kernel="k-9")
    kernel.record("j1", _fields("enqueued", current_millis()), _message("j1"), None)
    assert kernel.flush()
    done: list[tuple[str, str, str | None]] = []
    import threading

    ran = threading.Event()

    def handler(kind: str, job: str, new_id: str | None) -> str:
        done.append((kind, job, new_id))
        ran.set()
        return "ok"

    server = SQLiteHistory(path)
    job = server.job("j1")
    assert job is not None and job.kernel == "k-9"
    seq = server.command("retry", job, "new-id")
    kernel.serve_commands(handler)
    assert ran.wait(10)
    assert done == [("retry", "j1", "new-id")]
    assert kernel.flush()
    assert server.kernel_seen("k-9") is not None
    kernel.close()
    assert server.command_outcome(seq) == "ok"
    assert server.kernel_seen("k-9") is None  # a closed kernel says so
    server.close()
