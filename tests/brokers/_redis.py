"""Redis support for the broker tests: brokers in a fresh namespace, raw injection, and private
redis-server processes for tests that kill or pause the server.

Tests never FLUSHALL or FLUSHDB: each deletes only its own namespace's keys.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from nbqueue.brokers.redis import RedisBroker
from tests._ports import free_port


def make_broker(url: str, namespace: str, **options: object) -> RedisBroker:
    """Return a broker on ``url`` whose keys all start with ``namespace``."""
    return RedisBroker(url=url, namespace=namespace, **options)  # type: ignore[arg-type]


def delete_namespace(client: redis.Redis, namespace: str) -> int:
    """Delete every key starting with ``namespace`` (SCAN, never KEYS or FLUSHDB)."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{namespace}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.delete(*batch)
            batch.clear()
    if batch:
        deleted += client.delete(*batch)
    return deleted


def cleanup(broker: RedisBroker, namespace: str) -> None:
    """Delete the test's keys."""
    delete_namespace(broker.client, namespace)


def inject_raw(broker: RedisBroker, queue_name: str, data: bytes) -> str:
    """Store raw bytes as a message, as a foreign or broken producer would; return its id."""
    rid = str(uuid.uuid4())
    pipe = broker.client.pipeline()
    pipe.hset(broker.keys.messages(queue_name), rid, data)
    pipe.rpush(broker.keys.queue(queue_name), rid)
    pipe.execute()
    return rid


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RecoveryWatch:
    """Records a broker's maintenance passes by the Redis server's clock, and what they recover.

    Each pass of the broker's tick script heartbeats with the server's time (``now_ms()``, from
    TIME) and returns the workers whose last heartbeat is older than ``heartbeat_timeout``; the
    broker then recovers each of them. The watch wraps both, so a test can check by the
    server's clock, not its own, on which pass a dead worker was recovered: load delays passes
    but cannot move a recovery to a later pass than the first one after the expiry.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        #: one entry per maintenance pass: (the pass's server time in ms, dead workers returned)
        self.passes: list[tuple[int, list[str]]] = []
        #: one entry per recovery: (index of its pass, worker, its last heartbeat in server ms
        #: as the recovery found it, messages requeued)
        self.recoveries: list[tuple[int, str, int, int]] = []
        #: set once a recovery returned: the requeued messages can run (and a test move on)
        #: before the recovering thread has finished and recorded it
        self.recovered = threading.Event()
        tick, recover = broker.scripts["tick"], broker.service.recover

        def watched_tick(*, keys: list[str], args: list[Any]) -> Any:
            dead = tick(keys=keys, args=args)
            if int(args[3]) > 0:  # _beat() heartbeats alone, asking for no dead workers
                # The pass's own heartbeat score is its server time; only this thread writes it.
                at = broker.client.zscore(broker.keys.heartbeats, broker.broker_id)
                self.passes.append((int(at or 0), [_text(worker) for worker in dead]))
            return dead

        def watched_recover(worker: str) -> int:
            last = broker.client.zscore(broker.keys.heartbeats, worker)
            moved = recover(worker)
            self.recoveries.append((len(self.passes) - 1, worker, int(last or 0), moved))
            self.recovered.set()
            return moved

        broker.scripts["tick"] = watched_tick  # type: ignore[assignment]
        broker.service.recover = watched_recover

    def recovery_of(self, worker: str) -> tuple[int, int, int]:
        """Return (pass index, last heartbeat in server ms, messages requeued) of the one
        recovery of ``worker``, failing the test if there was none or more than one."""
        assert self.recovered.wait(30), f"{worker} was never recovered"
        found = [(i, last, moved) for i, w, last, moved in self.recoveries if w == worker]
        assert len(found) == 1, f"{worker} was recovered {len(found)} times: {self.recoveries}"
        return found[0]

    def first_pass_after(self, deadline_ms: int) -> int:
        """Return the index of the first pass whose server time is at or after ``deadline_ms``
        (-1 if none was)."""
        return next((i for i, (at, _) in enumerate(self.passes) if at >= deadline_ms), -1)


class PrivateRedis:
    """A redis-server of our own, on a free port, that a test may kill, pause or restart."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="nbq-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        command += ["--save", "", "--appendonly", "no", *self.args]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(
            port=self.port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),  # redis-py's default retries back off for seconds
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except (redis.AuthenticationError, redis.ResponseError):
                break  # up, and asking for a password
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.01)
            finally:
                client.close()

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def pause(self) -> None:
        """SIGSTOP the server and return once it is stopped (a signal is delivered a moment
        after ``kill()`` returns; a command sent in that moment would still be answered)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        os.waitpid(self.process.pid, os.WUNTRACED)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGCONT)
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_redis(*args: str) -> Iterator[PrivateRedis]:
    """Run a private redis-server with extra arguments (later ones win over the defaults)."""
    server = PrivateRedis(*args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


VICTIM = """
import sys, time
import nbqueue
from nbqueue.brokers.redis import RedisBroker

url, namespace, heartbeat_timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
broker = RedisBroker(url=url, namespace=namespace, heartbeat_timeout=heartbeat_timeout)

@nbqueue.actor(queue_name=namespace, actor_name="job", broker=broker)
def job(i=None):
    broker.client.rpush(namespace + ":started", str(i))
    time.sleep(60)

nbqueue.Worker(broker, worker_threads=2, worker_timeout=100).start()
time.sleep(120)
"""


def start_victim(
    url: str, namespace: str, *, heartbeat_timeout: int = 2000, prefetch: int = 10
) -> subprocess.Popen[bytes]:
    """Start an nbqueue worker process whose actor ``job`` blocks for a minute after pushing
    its argument to ``<namespace>:started``: a worker to kill -9 while it holds messages."""
    env = {
        **os.environ,
        "NBQUEUE_QUEUE_PREFETCH": str(prefetch),
        "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    }
    command = [sys.executable, "-c", VICTIM, url, namespace, str(heartbeat_timeout)]
    return subprocess.Popen(command, env=env)


def wait_until(condition: Callable[[], object], timeout: float = 20, what: str = "") -> None:
    """Poll another process's effect until ``condition()`` is true, failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)
