"""RabbitMQ support for the broker tests: brokers on the shared server, and a private node.

The shared server (``NBQUEUE_TEST_RABBITMQ_URL``) is never stopped, purged or reconfigured: each
test uses queues named after its namespace and deletes them. Tests that kill or restart RabbitMQ
start a ``PrivateRabbit`` node with its own node name, ports and data directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Any

import pika

from nbqueue.brokers.rabbitmq import RabbitmqBroker
from tests._ports import free_port

RABBITMQ_BIN = "/usr/lib/rabbitmq/bin"


def make_broker(url: str, namespace: str, **options: Any) -> RabbitmqBroker:
    options.setdefault("max_priority", 10)
    return RabbitmqBroker(url=url, **options)


def cleanup(broker: RabbitmqBroker, namespace: str) -> None:
    """Delete the queues the test declared (only those under its namespace)."""
    names = [q for q in broker.get_declared_queues() if q.startswith(namespace)]
    broker.close()
    if not names:
        return
    delete_queues(broker._params, names)


def delete_queues(params: Any, names: list[str]) -> None:
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        for name in names:
            for suffix in ("", ".DQ", ".XQ"):
                channel.queue_delete(name + suffix)
    finally:
        connection.close()


def inject_raw(broker: RabbitmqBroker, queue_name: str, data: bytes) -> None:
    """Publish raw bytes to a queue, as a foreign or broken producer would."""
    broker._ensure(queue_name)
    broker._republish(data, pika.BasicProperties(delivery_mode=2), queue_name)


class PrivateRabbit:
    """A RabbitMQ node of our own, for tests that stop, kill or restart the server.

    Parameters:
      config: extra lines for its ``rabbitmq.conf`` (e.g. ``consumer_timeout = 5000``).
      advanced: Erlang terms for the ``rabbit`` application, e.g. ``{channel_tick_interval,
        500}`` (RabbitMQ 3.10 checks consumer_timeout on that tick, once a minute by default).
      name: the node name before ``@localhost`` (default: a fresh ``nbqtest<hex>``).
      port, dist_port: its AMQP and Erlang distribution ports (default: free ones).
    """

    def __init__(
        self,
        config: str = "",
        advanced: str = "",
        *,
        name: str | None = None,
        port: int | None = None,
        dist_port: int | None = None,
    ) -> None:
        self.name = name or f"nbqtest{uuid.uuid4().hex[:8]}"
        self.node = f"{self.name}@localhost"
        self.port = port or free_port()
        self.dist_port = dist_port or free_port()
        self.base = tempfile.mkdtemp(prefix="nbq-rabbit-")
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        with open(os.path.join(self.base, "rabbitmq.conf"), "w") as f:
            f.write(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
            f.write("loopback_users = none\n")
            f.write(config)
        with open(os.path.join(self.base, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        with open(os.path.join(self.base, "rabbitmq-env.conf"), "w") as f:
            f.write("")
        with open(os.path.join(self.base, "advanced.config"), "w") as f:
            f.write(f"[{{rabbit, [{advanced}]}}].\n")
        shutil.chown(self.base, "rabbitmq", "rabbitmq")
        for entry in os.listdir(self.base):
            shutil.chown(os.path.join(self.base, entry), "rabbitmq", "rabbitmq")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/var/lib/rabbitmq",
            "RABBITMQ_NODENAME": f"{self.name}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(self.base, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(self.base, "log"),
            "RABBITMQ_CONFIG_FILE": os.path.join(self.base, "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(self.base, "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(self.base, "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.base, "enabled_plugins"),
            "RABBITMQ_PID_FILE": os.path.join(self.base, "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        """Start the node and wait until it accepts AMQP connections."""
        log = open(os.path.join(self.base, "console.log"), "ab")
        self.process = subprocess.Popen(
            [
                "runuser",
                "-u",
                "rabbitmq",
                "--",
                "env",
                *[f"{k}={v}" for k, v in self.env.items()],
                f"{RABBITMQ_BIN}/rabbitmq-server",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"PATH": self.env["PATH"]},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"The private RabbitMQ node exited; see {self.base}.")
            try:
                connection = pika.BlockingConnection(
                    pika.URLParameters(self.url + "?connection_attempts=1&socket_timeout=1")
                )
                connection.close()
                return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError(
            f"The private RabbitMQ node did not start in {timeout} s; see {self.base}."
        )

    def ctl(self, *args: str) -> str:
        """Run ``rabbitmqctl`` against this node (never against the shared one)."""
        result = subprocess.run(
            [
                "runuser",
                "-u",
                "rabbitmq",
                "--",
                "env",
                *[f"{k}={v}" for k, v in self.env.items()],
                f"{RABBITMQ_BIN}/rabbitmqctl",
                "-n",
                self.env["RABBITMQ_NODENAME"],
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def beam_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-f", f"-sname {self.name}@localhost|{self.name}@localhost"],
            capture_output=True,
            text=True,
        ).stdout
        return [int(pid) for pid in out.split()]

    def beam_pid(self) -> int | None:
        """The pid of the node's running Erlang VM, from its pid file; ``None`` before it wrote
        one, or when that pid is no longer this node's (a dead node's pid may be reused)."""
        try:
            with open(self.env["RABBITMQ_PID_FILE"]) as f:
                pid = int(f.read().strip())
            # The VM has this node's environment (its command line does not name the node).
            with open(f"/proc/{pid}/environ", "rb") as f:
                mine = f"RABBITMQ_NODENAME={self.node}\0".encode() in f.read()
        except (OSError, ValueError):
            return None
        return pid if mine else None

    def kill_beam(self) -> int:
        """kill -9 the node's Erlang VM alone (found by its pid file); return its pid."""
        pid = self.beam_pid()
        assert pid is not None, f"{self.node} has no running VM in its pid file ({self.base})"
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill(self) -> None:
        """kill -9 the node (its pid file's process and its whole process group) and wait for
        it to be gone."""
        pid = self.beam_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        self.process = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                time.sleep(0.05)
            except OSError:
                return

    def stop(self) -> None:
        """Kill the node and remove its files."""
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)
