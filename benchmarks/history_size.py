"""How much the job history keeps for N finished jobs: the local SQLite file (file + WAL) and
the Redis keys of one namespace (index, entries, record copies, changes stream).

    python benchmarks/history_size.py [--jobs 10000] [--redis redis://127.0.0.1:6379/15]

Sizes do not depend on the machine's load; the times printed beside them do.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid

import nbqueue
from nbqueue.common import current_millis
from nbqueue.connection import broker_from_url
from nbqueue.history import SQLiteHistory
from nbqueue.live.channel import get_publisher
from nbqueue.live.middleware import transport_for


def sqlite_size(jobs: int) -> None:
    path = os.path.join(tempfile.mkdtemp(), "history.sqlite3")
    store = SQLiteHistory(path, kernel="k", notebook="nb.ipynb")
    now = current_millis()
    started = time.perf_counter()
    for i in range(jobs):
        message = nbqueue.Message("default", "add", (i, i + 1), {}, {})
        base = {"actor_name": "add", "queue_name": "default", "enqueued_at": now + i}
        store.record(message.message_id, {**base, "status": "enqueued"}, message, None)
        done = {**base, "status": "succeeded", "started_at": now + i, "finished_at": now + i + 1}
        store.record(message.message_id, {**done, "attempt": 1, "worker_id": "h:1:w"}, None, "ok\n")
    assert store.flush(300)
    elapsed = time.perf_counter() - started
    store.close()
    size = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
    print(
        f"sqlite: {jobs} jobs ({2 * jobs} status changes) written in "
        f"{elapsed:.2f} s; file + WAL {size / 1e6:.1f} MB"
    )


def redis_size(jobs: int, url: str) -> None:
    namespace = "nbq-bench-" + uuid.uuid4().hex[:8]
    broker = broker_from_url(url, namespace=namespace)
    broker.emit_after("process_boot")

    @nbqueue.actor(broker=broker, queue_name=namespace, store_results=True)
    def add(x: int, y: int) -> int:
        return x + y

    try:
        add.send_many((i, i + 1) for i in range(jobs))
        with nbqueue.Worker(broker, worker_threads=4):
            broker.join(namespace, timeout=600_000)
        get_publisher(transport_for(broker)).flush()
        history = transport_for(broker).history()
        assert history is not None
        client = broker.client  # type: ignore[attr-defined]
        keys = (history.index_key, history.entries_key, history.records_key, history.changes_key)
        size = sum(client.memory_usage(k) or 0 for k in keys)
        print(f"redis: {history.count()} finished jobs in the history, {size / 1e6:.1f} MB")
    finally:
        client = broker.client  # type: ignore[attr-defined]
        for key in client.scan_iter(namespace + "*", count=1000):
            client.delete(key)
        broker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    sqlite_size(args.jobs)
    redis_size(args.jobs, args.redis)


if __name__ == "__main__":
    main()
