"""Ports for the private servers tests start, kill and restart."""

from __future__ import annotations

import random
import socket

#: Where ports are looked for when the system's ephemeral range leaves room below it.
LOWEST = 10000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """Return a free TCP port below the system's ephemeral range.

    A port the kernel hands out for ``bind(0)`` lies in the ephemeral range, where outgoing
    connections also take their local ports: a private server killed and restarted on such a
    port can find it taken by some client's connection meanwhile (seen as RabbitMQ's
    ``eaddrinuse`` on a restart under load). Below the range nothing takes it but a listener.
    """
    low = _ephemeral_low()
    if low - LOWEST >= 1000:
        rng = random.Random()
        for _ in range(200):
            port = rng.randrange(LOWEST, low)
            if _bindable(port):
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found
