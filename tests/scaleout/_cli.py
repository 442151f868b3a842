"""Helpers for the scale-out tests: CLI worker subprocesses, a Redis record of executions, and
brokers in a private namespace (Redis) or under private queue names (RabbitMQ)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from nbqueue import Broker
from nbqueue.connection import broker_from_url

REPO_ROOT = Path(__file__).resolve().parents[2]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll another process's effect until ``condition()`` is true, failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBQUEUE_", "dramatiq_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["NBQUEUE_WORKER_TIMEOUT"] = "100"
    env.update(extra)
    return env


class CliWorker:
    """``python -m nbqueue worker ...`` in a subprocess, its log in a file."""

    def __init__(self, args: list[str], *, cwd: Path, log: Path, env: dict[str, str]) -> None:
        self.log = log
        self._file = open(log, "ab")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nbqueue", "worker", *args],
            cwd=cwd,
            env=env,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, processes: int, timeout: float = 60) -> None:
        """Wait until every worker process logged that it is ready."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited early:\n{self.text()}")
            return self.text().count("Worker is ready") >= processes

        wait_until(ready, timeout, f"{processes} worker process(es) to boot")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._file.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._file.close()


class Record:
    """Executions recorded in Redis by the subprocess's actors, under ``<prefix>:...``."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def runs(self) -> dict[str, int]:
        """message number -> how many times it finished."""
        raw = self.client.hgetall(f"{self.prefix}:runs")
        return {_text(k): int(v) for k, v in raw.items()}

    def starts(self) -> dict[str, int]:
        """message number -> how many times it started."""
        raw = self.client.hgetall(f"{self.prefix}:starts")
        return {_text(k): int(v) for k, v in raw.items()}

    def by_pid(self) -> dict[str, int]:
        raw = self.client.hgetall(f"{self.prefix}:pids")
        return {_text(k): int(v) for k, v in raw.items()}

    def finished(self) -> int:
        return int(self.client.hlen(f"{self.prefix}:runs"))

    def release(self, *numbers: int) -> None:
        if numbers:
            self.client.sadd(f"{self.prefix}:open", *[str(n) for n in numbers])

    def cleanup(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*", count=1000))
        if keys:
            self.client.delete(*keys)
        self.client.close()


def tasks_source(record_url: str, prefix: str, queue: str) -> str:
    """The module the CLI worker imports: ``job(n, block=False)`` records its start and its
    end in Redis; with ``block`` it waits until the test opens its gate."""
    return textwrap.dedent(
        f"""
        import os
        import time

        import redis

        import nbqueue

        RECORD = redis.Redis.from_url({record_url!r})
        PREFIX = {prefix!r}

        @nbqueue.actor(queue_name={queue!r}, actor_name="job", max_retries=0)
        def job(n, block=False):
            if block:
                RECORD.hincrby(PREFIX + ":starts", str(n), 1)
                while not RECORD.sismember(PREFIX + ":open", str(n)):
                    time.sleep(0.02)
            pipe = RECORD.pipeline(transaction=False)
            pipe.hincrby(PREFIX + ":pids", str(os.getpid()), 1)
            pipe.hincrby(PREFIX + ":runs", str(n), 1)
            pipe.execute()

        @nbqueue.actor(queue_name={queue!r}, actor_name="add", store_results=True)
        def add(x, y):
            return x + y
        """
    )


class Target:
    """One broker under test: its URL, the CLI arguments that select it, and a producer."""

    def __init__(self, kind: str, url: str, namespace: str, redis_url: str) -> None:
        self.kind = kind
        self.url = url
        self.namespace = namespace
        self.redis_url = redis_url
        self.queue = namespace
        self.brokers: list[Broker] = []

    def cli_args(self) -> list[str]:
        args = ["--broker", self.url]
        if self.kind == "redis":
            args += ["--namespace", self.namespace]
        return args

    def env(self) -> dict[str, str]:
        """Environment of the workers: an amqp:// worker keeps results in the test's Redis."""
        return {"NBQUEUE_RESULTS_URL": self.redis_url} if self.kind == "rabbitmq" else {}

    def producer(self, *, connect: bool = False) -> Broker:
        """A broker on the same server and queues as the workers; with ``connect`` built as
        ``nbqueue.connect()`` builds it (results and live status), else bare."""
        kwargs: dict[str, Any] = {"namespace": self.namespace} if self.kind == "redis" else {}
        if connect:
            import nbqueue

            broker = nbqueue.connect(self.url, **kwargs)
        else:
            broker = broker_from_url(self.url, **kwargs)
        self.brokers.append(broker)
        return broker

    def declare_job(self, broker: Broker) -> Any:
        import nbqueue

        @nbqueue.actor(queue_name=self.queue, actor_name="job", max_retries=0, broker=broker)
        def job(n: int, block: bool = False) -> None:
            raise AssertionError("runs in the CLI worker only")

        return job

    def cleanup(self) -> None:
        for broker in self.brokers:
            broker.close()
        if self.kind == "redis":
            from tests.brokers._redis import delete_namespace

            client = redis.Redis.from_url(self.url)
            delete_namespace(client, self.namespace)
            client.close()
        else:
            import pika

            from tests.brokers._rabbitmq import delete_queues

            delete_queues(pika.URLParameters(self.url), [self.queue])
