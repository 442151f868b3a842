"""memcached support for the tests: raw reads beside the backends, remaining TTLs, and private
memcached processes for tests that pause the server.

Tests never flush_all: each deletes the keys it wrote, and the rest expire within a minute.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pylibmc
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raw_client(server: str) -> Any:
    """A plain pylibmc client on ``server``, as another program would have."""
    return pylibmc.Client([server], behaviors={"cas": True, "_poll_timeout": 3000})


def forget(server: str, keys: Iterable[str]) -> None:
    """Delete ``keys`` (what a test wrote), never anything else."""
    client = raw_client(server)
    try:
        for key in keys:
            client.delete(key)
    finally:
        client.disconnect_all()


def remaining_ttl(server: str, key: str) -> int:
    """The seconds ``key`` has left (-1: no expiry), read with memcached's meta get (``mg``),
    which pylibmc does not speak.

    Raises:
      KeyError: the key is not stored.
    """
    host, _, port = server.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"mg {key} t\r\n".encode())
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            assert chunk, "memcached closed the connection"
            reply += chunk
    words = reply.decode().split()
    if words[0] == "EN":
        raise KeyError(key)
    assert words[0] == "HD", reply
    (ttl,) = [int(w[1:]) for w in words[1:] if w.startswith("t")]
    return ttl


class PrivateMemcached:
    """A memcached of our own, on a free port, that a test may pause."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("memcached") or "/usr/bin/memcached"
        if not os.path.exists(binary):
            message = "memcached is not installed (apt-get install memcached)"
            if os.environ.get("CI"):
                pytest.fail(f"{message}; CI must run the memcached suite")
            pytest.skip(message)
        command = [binary, "-l", "127.0.0.1", "-p", str(self.port), "-m", "16", "-U", "0"]
        if os.geteuid() == 0:
            command += ["-u", "root"]  # memcached refuses to run as root without it
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"version\r\n")
                    if sock.recv(64).startswith(b"VERSION"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"memcached did not start on port {self.port}")
            time.sleep(0.01)

    def pause(self) -> None:
        """SIGSTOP the server and return once it is stopped."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        os.waitpid(self.process.pid, os.WUNTRACED)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)


@contextmanager
def private_memcached() -> Iterator[PrivateMemcached]:
    """Run a private memcached on a free port."""
    server = PrivateMemcached()
    server.start()
    try:
        yield server
    finally:
        server.stop()
