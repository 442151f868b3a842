"""Schedules published with notebook actors: ``--notebook-actors`` workers take part in them,
still after the publishing side is gone; republishing without one, or removing it, ends it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import nbqueue
from nbqueue._redis.client import as_text
from nbqueue.brokers.redis import RedisBroker
from nbqueue.middleware import CurrentMessage
from nbqueue.remote import configure_worker, publish_actor
from nbqueue.remote.schedules import RemoteSchedules
from nbqueue.schedules import schedules_of
from nbqueue.worker import Worker
from tests.brokers import _redis
from tests.test_schedules import Runs

SECRET = "schedule-secret"
ROOT = Path(__file__).resolve().parents[2]

#: Runs of the published cell, in this process (the cell imports this module).
RUNS = Runs()

IN_PROCESS_CELL = """
from tests.remote.test_schedules import RUNS

def tick():
    RUNS.record("tick")
"""

WORKER_MODULE = """
import os

import redis

import nbqueue
from nbqueue.brokers.redis import RedisBroker
from nbqueue.middleware import CurrentMessage

URL, NS = os.environ["SCHED_URL"], os.environ["SCHED_NS"]
client = redis.Redis.from_url(URL)
broker = RedisBroker(url=URL, namespace=NS)
broker.add_middleware(CurrentMessage())


class Announce(nbqueue.Middleware):
    def after_worker_boot(self, broker, worker):
        client.rpush(NS + ":test:booted", os.getpid())


broker.add_middleware(Announce())
"""

SUBPROCESS_CELL = """
import os
import redis
from nbqueue.middleware import CurrentMessage

client = redis.Redis.from_url(os.environ["SCHED_URL"])

def tick():
    at = CurrentMessage.get_current_message().options["scheduled_at"]
    client.rpush(os.environ["SCHED_NS"] + ":test:runs", f"{at} {os.getpid()}")
"""


def source_of(fn_source: str) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(fn_source, "<cell>", "exec"), namespace)
    return namespace["tick"]


@pytest.mark.redis
def test_a_notebook_actor_worker_declares_replaces_and_ends_published_schedules(
    redis_url: str, namespace: str
) -> None:
    notebook = RedisBroker(url=redis_url, namespace=namespace)
    remote = RedisBroker(url=redis_url, namespace=namespace)
    remote.add_middleware(CurrentMessage())
    worker = None
    try:
        fn = source_of(IN_PROCESS_CELL)
        actor = publish_actor(
            fn,
            source=IN_PROCESS_CELL,
            secret=SECRET,
            broker=notebook,
            periodic=nbqueue.every(100),
            misfire_grace=1000,
        )
        # Declared on the notebook's side too (listed there), where no worker consumes it.
        (info,) = nbqueue.list_schedules(broker=notebook)
        assert (info.name, info.remote, info.queue_name) == ("tick", True, "notebook")
        queues = configure_worker(remote, notebook_actors=True, secret=SECRET.encode(), queues=None)
        (published,) = [m for m in remote.middleware if isinstance(m, RemoteSchedules)]
        worker = Worker(remote, queues=queues, worker_timeout=100, worker_threads=2)
        worker.start()  # boot reads the index: the schedule is there before the first tick
        (entry,) = schedules_of(remote)
        assert (entry.name, entry.rule, entry.misfire_grace) == ("tick", nbqueue.every(100), 1000)
        assert worker.scheduler is not None
        RUNS.wait_count("tick", 3)
        ticks = RUNS.of("tick")
        assert len(ticks) == len(set(ticks))

        # A newer version with another period replaces it.
        publish_actor(
            fn, source=IN_PROCESS_CELL, secret=SECRET, broker=notebook, periodic=nbqueue.every(200)
        )
        published.refresh()
        (entry,) = schedules_of(remote)
        assert entry.rule == nbqueue.every(200)

        # Removing it from the notebook republishes the actor without it: the worker drops it.
        nbqueue.remove_schedule("tick", broker=notebook, secret=SECRET.encode())
        assert nbqueue.list_schedules(broker=notebook) == []
        assert notebook.actors["tick"] is not actor
        published.refresh()
        assert schedules_of(remote) == []
        assert "tick" in remote.actors  # the actor still runs messages sent to it
    finally:
        if worker is not None:
            worker.stop(timeout=5000)
        _redis.delete_namespace(notebook.client, namespace)
        notebook.close()
        remote.close()


@pytest.fixture
def client(redis_url: str, namespace: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, socket_timeout=10)
    yield connection
    _redis.delete_namespace(connection, namespace)
    connection.close()


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_published_schedule_keeps_running_on_a_cli_worker_after_the_notebook_is_gone(
    tmp_path: Path, redis_url: str, namespace: str, client: redis.Redis
) -> None:
    (tmp_path / "sched_remote.py").write_text(textwrap.dedent(WORKER_MODULE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
    env.update(
        NBQUEUE_SECRET=SECRET,
        NBQUEUE_WORKER_TIMEOUT="100",
        SCHED_URL=redis_url,
        SCHED_NS=namespace,
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]),
    )
    command = [sys.executable, "-m", "nbqueue", "worker", "sched_remote:broker"]
    command += ["--notebook-actors", "--threads", "2"]
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=log, stderr=log, start_new_session=True
    )
    try:
        booted = client.blpop([f"{namespace}:test:booted"], timeout=60)
        assert booted is not None, (tmp_path / "worker.log").read_text()
        # The notebook side: publish, then go away entirely.
        os.environ["SCHED_URL"], os.environ["SCHED_NS"] = redis_url, namespace
        notebook = RedisBroker(url=redis_url, namespace=namespace)
        try:
            publish_actor(
                source_of(SUBPROCESS_CELL),
                source=SUBPROCESS_CELL,
                secret=SECRET,
                broker=notebook,
                periodic=nbqueue.every(500),
            )
        finally:
            notebook.close()
            del os.environ["SCHED_URL"], os.environ["SCHED_NS"]
        runs: list[tuple[int, int]] = []
        while len(runs) < 4:
            item = client.blpop([f"{namespace}:test:runs"], timeout=60)
            assert item is not None, (tmp_path / "worker.log").read_text()
            at, pid = as_text(item[1]).split()
            runs.append((int(at), int(pid)))
        # Pausing from anywhere that reaches the store holds for the worker.
        pauser = RedisBroker(url=redis_url, namespace=namespace)
        try:
            nbqueue.pause_schedule("tick", broker=pauser)
            state = pauser.tick_claims().state("tick")
            assert state is not None and state.paused
        finally:
            pauser.close()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    ticks = [at for at, _ in runs]
    assert len(set(ticks)) == len(ticks) and all(at % 500 == 0 for at in ticks)
    assert {pid for _, pid in runs} == {process.pid}
    text = (tmp_path / "worker.log").read_text()
    assert "Schedule 'tick' of notebook actor 'tick' (every(500)) declared" in text
