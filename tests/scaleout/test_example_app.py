"""The mission's complete application (examples/app: config.py, tasks.py, app.py) runs with
``nbqueue tasks`` and 2 worker processes on Redis and on RabbitMQ.

The application uses fixed queue names (emails, orders, default), so each run gets a private
server: a redis-server or a RabbitMQ node of its own, never the shared ones.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ._cli import REPO_ROOT, CliWorker, wait_until, worker_env

APP = REPO_ROOT / "examples" / "app"


def failing_once_seed(order_id: int) -> str:
    """A seed with which the order fails on its first attempt and succeeds on its second."""
    for n in range(10_000):
        seed = str(n)
        first = random.Random(f"{seed}:{order_id}:0").random()
        second = random.Random(f"{seed}:{order_id}:1").random()
        if first < 0.1 <= second:
            return seed
    raise AssertionError("no seed found")


@contextmanager
def private_server(kind: str) -> Iterator[str]:
    if kind == "redis":
        from tests.brokers._redis import private_redis

        with private_redis() as server:
            yield server.url
    else:
        from tests.brokers._rabbitmq import PrivateRabbit

        rabbit = PrivateRabbit()
        try:
            rabbit.start()
            yield rabbit.url
        finally:
            rabbit.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ],
)
def test_the_mission_application_runs_on_two_worker_processes(kind: str, tmp_path: Path) -> None:
    with private_server(kind) as url:
        env = worker_env(NBQUEUE_BROKER_URL=url, APP_SEED=failing_once_seed(12345))
        worker = CliWorker(["tasks", "--processes", "2"], cwd=APP, log=tmp_path / "w.log", env=env)
        try:
            worker.wait_ready(2)
            sent = subprocess.run(
                [sys.executable, "app.py"],
                cwd=APP,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
            assert "Sent 3 jobs" in sent.stdout
            done = [
                "Sending email to customer@example.com: Order Confirmation",
                "Generated the sales report for 2024-01",
                "Order 12345 failed on attempt 1; it will be retried",
                # The retry waits 15-30 s (Retries' default min_backoff) after the 10 s delay.
                "Processed order 12345 on attempt 2",
            ]
            wait_until(lambda: all(line in worker.text() for line in done), 120, f"{done}")
            worker.terminate()
            assert worker.wait(60) == 0, worker.text()[-3000:]
        finally:
            worker.kill()
    log = worker.text()
    assert "Queue 'orders': actors process_order." in log
    assert "Queue 'emails': actors send_email." in log
    assert "Queue 'default': actors generate_report." in log
    assert log.count("Processed order 12345") == 1
    assert log.count("Sending email to") == 1
