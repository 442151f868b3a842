"""Two worker processes of the CLI on a real Redis, their metrics summed by the exposition
server that the CLI starts from the middleware's ``forks``."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nbqueue
from nbqueue.brokers.redis import RedisBroker

from .conftest import free_port, scrape

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(240)]

REPO_ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 1000


@pytest.fixture
def db_dir() -> Iterator[str]:
    # Short, under /tmp: the worker processes' queue-count sockets live in it.
    path = tempfile.mkdtemp(prefix="nbqp-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_tasks(folder: Path, redis_url: str, namespace: str) -> str:
    name = f"prom_tasks_{namespace.replace('-', '_')}"
    (folder / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import time

            import nbqueue
            from nbqueue.brokers.redis import RedisBroker
            from nbqueue.middleware.prometheus import Prometheus

            broker = RedisBroker(url={redis_url!r}, namespace={namespace!r})
            broker.add_middleware(Prometheus())
            nbqueue.set_broker(broker)


            @nbqueue.actor(queue_name={namespace!r})
            def work(i):
                time.sleep(0.002)  # a little work, so that both processes take a share
            """
        )
    )
    return name


def environment(db_dir: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBQUEUE_", "dramatiq_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["NBQUEUE_WORKER_TIMEOUT"] = "100"
    env["dramatiq_prom_db"] = db_dir
    env["dramatiq_prom_host"] = "127.0.0.1"
    env["dramatiq_prom_port"] = str(port)
    return env


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def wait_for(condition, what: str, proc: subprocess.Popen[str], timeout: float = 120.0):
    """Poll another process's side effect until ``condition()`` is truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if value := condition():
                return value
        assert proc.poll() is None, f"the process exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def send_messages(redis_url: str, namespace: str) -> RedisBroker:
    broker = RedisBroker(url=redis_url, namespace=namespace)

    @nbqueue.actor(broker=broker, queue_name=namespace)
    def work(i):
        raise AssertionError("runs on the CLI's worker processes")

    work.send_many(range(MESSAGES))
    return broker


def total(url: str, namespace: str) -> float:
    samples = scrape(url)
    return samples.get(
        ("dramatiq_messages_total", (("actor_name", "work"), ("queue_name", namespace))), 0.0
    )


def check_summed(url: str, namespace: str, db_dir: str, proc: subprocess.Popen[str]) -> None:
    wait_for(lambda: total(url, namespace) == MESSAGES, f"{MESSAGES} messages in the scrape", proc)
    samples = scrape(url)
    here = (("actor_name", "work"), ("queue_name", namespace))
    assert samples[("dramatiq_messages_total", here)] == MESSAGES
    assert samples[("dramatiq_message_duration_milliseconds_count", here)] == MESSAGES
    assert samples[("dramatiq_messages_inprogress", here)] == 0
    assert ("dramatiq_message_errors_total", here) not in samples
    # Both worker processes counted some of them, each in files of its own.
    pids = {Path(name).stem.rsplit("_", 1)[1] for name in glob.glob(f"{db_dir}/counter_*.db")}
    assert len(pids) == 2, f"expected the counters of 2 worker processes, found {pids}"
    queue = {
        state: samples.get(
            ("nbqueue_queue_messages", (("queue_name", namespace), ("state", state)))
        )
        for state in ("ready", "delayed", "in_flight", "dead")
    }
    assert queue == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}


def test_a_two_process_cli_worker_serves_the_summed_counts(
    redis_url: str, namespace: str, tmp_path: Path, db_dir: str
) -> None:
    import redis

    from tests.brokers._redis import delete_namespace

    port = free_port()
    env = environment(db_dir, port)
    name = write_tasks(tmp_path, redis_url, namespace)
    args = [sys.executable, "-m", "nbqueue", "worker", f"{name}:broker"]
    args += ["--processes", "2", "--threads", "2", "-P", str(tmp_path)]
    broker = None
    try:
        with running(args, env, tmp_path) as worker:
            url = f"http://127.0.0.1:{port}/metrics"
            # The CLI starts the middleware's fork once both worker processes booted.
            wait_for(lambda: scrape(url) is not None, "the CLI's exposition server", worker)
            broker = send_messages(redis_url, namespace)
            check_summed(url, namespace, db_dir, worker)
    finally:
        if broker is not None:
            broker.close()
        delete_namespace(redis.Redis.from_url(redis_url), namespace)
