"""A private Redis Sentinel deployment for failover tests: a master, a replica and three
sentinels (quorum 2), on fixed private ports, in a temporary directory.

Sentinel mode is ``redis-server --sentinel``, so Debian's ``redis-server`` package is enough.
Waits block on the sentinels' event channels (``+switch-master``, ``+sentinel``, ``+slave``)
instead of polling.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.brokers._redis import PrivateRedis

#: The private ports of these tests (tests/reliability and tests/brokers may not share them).
MASTER_PORT, REPLICA_PORTS = 6400, (6401, 6402)
SENTINEL_PORTS = (26400, 26401, 26402)
SERVICE = "nbqmaster"


def _client(port: int) -> redis.Redis:
    return redis.Redis(
        port=port, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )


def started(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Return once the process answers on ``port`` (a process announces nothing we can block
    on, so this retries every 10 ms, as ``PrivateRedis.start`` does)."""
    client = _client(port)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.RedisError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"sentinel did not start on port {port}") from None
            time.sleep(0.01)


class PrivateSentinels:
    """Three sentinels watching ``SERVICE`` on ``MASTER_PORT``; each a ``redis-server
    --sentinel`` process with its own config file (sentinels rewrite it)."""

    def __init__(self, down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nbq-sentinel-"))
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in SENTINEL_PORTS)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        # Each sentinel starts knowing its peers and the replicas (the lines sentinels write to
        # their own config), instead of discovering them over several seconds of hellos.
        ids = {port: f"{port:040x}" for port in SENTINEL_PORTS}
        for port in SENTINEL_PORTS:
            config = self.dir / f"sentinel-{port}.conf"
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {self.dir}",
                f"sentinel myid {ids[port]}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {MASTER_PORT} 2",
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {SERVICE} 2",
            ]
            lines += [f"sentinel known-replica {SERVICE} 127.0.0.1 {r}" for r in REPLICA_PORTS]
            lines += [
                f"sentinel known-sentinel {SERVICE} 127.0.0.1 {peer} {ids[peer]}"
                for peer in SENTINEL_PORTS
                if peer != port
            ]
            config.write_text("\n".join(lines) + "\n")
            log = open(self.dir / f"sentinel-{port}.log", "wb")  # noqa: SIM115 - kept open
            self.processes.append(
                subprocess.Popen([binary, str(config), "--sentinel"], stdout=log, stderr=log)
            )
        for port, process in zip(SENTINEL_PORTS, self.processes, strict=True):
            started(port, process)

    def client(self, index: int = 0) -> redis.Redis:
        return _client(SENTINEL_PORTS[index])

    def wait_ready(self, timeout: float = 30) -> None:
        """Return once every sentinel sees the master, the replica and its two peers: only
        then can they agree on a failover."""

        def ready() -> bool:
            for port in SENTINEL_PORTS:
                try:
                    state: Any = _client(port).sentinel_master(SERVICE)
                except redis.RedisError:
                    return False
                if state["num-other-sentinels"] < 2 or state["num-slaves"] < len(REPLICA_PORTS):
                    return False
            return True

        wait_for_event(self, ready, timeout, "the sentinels to see each other and the replica")

    def log(self) -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.dir.glob("*.log"))
        )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for_event(
    sentinels: PrivateSentinels, condition: Callable[[], bool], timeout: float, what: str
) -> None:
    """Wait until ``condition()`` holds, checking it again on each event any sentinel
    publishes (they announce every change of what they see), within ``timeout`` seconds."""
    changed = threading.Event()
    listeners = []
    for port in SENTINEL_PORTS:
        pubsub = _client(port).pubsub()
        pubsub.psubscribe(**{"*": lambda _message: changed.set()})
        listeners.append(pubsub.run_in_thread(sleep_time=0.1, daemon=True))
    try:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}:\n{sentinels.log()[-3000:]}")
            changed.wait(remaining)
            changed.clear()
    finally:
        for thread in listeners:
            thread.stop()
            thread.join(5)


class SwitchWatch:
    """Subscribes to ``+switch-master`` on one sentinel before a fault; ``wait()`` blocks for
    the announcement and returns the new master's port and when it came."""

    def __init__(self, sentinels: PrivateSentinels) -> None:
        self.pubsub = sentinels.client(0).pubsub()
        self.pubsub.subscribe("+switch-master")
        self.pubsub.get_message(timeout=2)  # the subscribe confirmation

    def wait(self, timeout: float) -> tuple[int, float]:
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("no +switch-master within the deadline")
                event: Any = self.pubsub.get_message(timeout=remaining)
                if event and event["type"] == "message":
                    # "<name> <old ip> <old port> <new ip> <new port>"
                    fields = event["data"].split()
                    return int(fields[4]), time.monotonic()
        finally:
            self.pubsub.close()


class Deployment:
    """A master, two replicas in sync with it, and three sentinels that agree on all three.

    Two replicas, so that after a failover the new master still has one: with
    ``min_replicas=1``, sends can resume only then.
    """

    def __init__(self, down_after_ms: int = 1000) -> None:
        # Without a delay, a master sends its first sync at once (Redis waits 5 s by default
        # for more replicas to share it).
        quick = ("--repl-diskless-sync-delay", "0")
        self.master = PrivateRedis(*quick)
        self.replicas = [
            PrivateRedis(*quick, "--replicaof", "127.0.0.1", str(MASTER_PORT))
            for _ in REPLICA_PORTS
        ]
        for server, port in zip(
            [self.master, *self.replicas], (MASTER_PORT, *REPLICA_PORTS), strict=True
        ):
            server.port = port
            server.url = f"redis://127.0.0.1:{port}/0"
        self.sentinels = PrivateSentinels(down_after_ms=down_after_ms)

    @property
    def url(self) -> str:
        return self.sentinels.url

    def start(self) -> None:
        for server in (self.master, *self.replicas):
            server.start()
        wait_for_sync(self.master.port, len(self.replicas))
        self.sentinels.start()
        self.sentinels.wait_ready()

    def stop(self) -> None:
        self.sentinels.stop()
        for server in (*self.replicas, self.master):
            server.stop()


def wait_for_sync(master_port: int, replicas: int, timeout: float = 20) -> None:
    """Return once ``replicas`` replicas of the master on ``master_port`` have a write made
    after they started (``WAIT`` blocks until then: they finished their first sync)."""
    client = redis.Redis(port=master_port, socket_timeout=timeout + 2)
    client.set("nbq-sentinel-test:synced", "1")
    if client.wait(replicas, int(timeout * 1000)) < replicas:
        raise AssertionError(f"the replicas of {master_port} did not sync within {timeout} s")
    client.close()
