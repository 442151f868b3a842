"""Dramatiq's ``broker.connection`` and ``broker.channel``: blocking pika objects per thread.

nbqueue's own sends, consumers and counts never use these; they run on I/O threads of their own
(``io``, ``publisher``, ``consumer``). These exist for the caller: Dramatiq users reach for
``broker.connection`` to check that RabbitMQ is reachable and for ``broker.channel`` to declare
queues or exchanges of their own. pika is not thread-safe, so each thread gets its own
``BlockingConnection`` and channel, opened on first use and kept until ``del
broker.connection`` or ``broker.close()``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]

from ..errors import ConnectionClosed, ConnectionFailed
from ..logging import get_logger
from .io import describe_error

__all__ = ["ThreadConnections"]

logger = get_logger("nbqueue.broker", "RabbitmqBroker")


class ThreadConnections:
    """One blocking pika connection and channel per thread, all closed by ``close()``.

    Opening is bounded by the connection parameters (``socket_timeout``, ``stack_timeout``,
    ``connection_attempts``, ``retry_delay``); once open, a server that stops answering is
    detected by heartbeats, and a resource alarm by ``blocked_connection_timeout``.

    Parameters:
      params: pika connection parameters, one per server to fail over between.
      where: the servers' address with no password, for errors.
      secrets: passwords to scrub from pika's error texts.
      confirm: put each channel in publisher-confirm mode (the broker's ``confirm_delivery``).
    """

    def __init__(
        self, params: Sequence[Any], where: str, secrets: Sequence[str], *, confirm: bool
    ) -> None:
        self._params = list(params)
        self._where = where
        self._secrets = list(secrets)
        self._confirm = confirm
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[Any] = set()  # every thread's connections and channels, for close()

    def connection(self) -> Any:
        """Return this thread's ``pika.BlockingConnection``, opening it when needed.

        A connection that was closed (by ``close()``, the server or a failure) is replaced.

        Raises:
          ConnectionFailed: RabbitMQ could not be reached or refused the credentials.
        """
        connection = getattr(self._local, "connection", None)
        if connection is not None and connection.is_open:
            return connection
        self.discard_connection()
        try:
            connection = pika.BlockingConnection(self._params)
        except (pika.exceptions.AMQPError, OSError) as e:
            # pika's exception may hold the connection parameters: described, never chained.
            raise ConnectionFailed(
                f"Could not connect to RabbitMQ at {self._where} "
                f"({describe_error(e, self._secrets)}); check that the server is running and "
                f"that the URL and credentials are right."
            ) from None
        self._local.connection = connection
        with self._lock:
            self._open.add(connection)
        return connection

    def channel(self) -> Any:
        """Return this thread's channel on its connection, opening both when needed.

        A channel the server closed (after a refused declaration, say) is replaced.

        Raises:
          ConnectionFailed: RabbitMQ could not be reached.
          ConnectionClosed: the connection dropped while the channel was opened.
        """
        channel = getattr(self._local, "channel", None)
        if channel is not None and channel.is_open and channel.connection.is_open:
            return channel
        self.discard_channel()
        connection = self.connection()
        try:
            channel = connection.channel()
            if self._confirm:
                channel.confirm_delivery()
        except (pika.exceptions.AMQPError, OSError) as e:
            self.discard_connection()
            raise ConnectionClosed(
                f"RabbitMQ at {self._where} closed the connection while a channel was opened "
                f"({describe_error(e, self._secrets)}); try again."
            ) from None
        self._local.channel = channel
        with self._lock:
            self._open.add(channel)
        return channel

    def discard_channel(self) -> None:
        """Close this thread's channel, if it has one; the next ``channel()`` opens another."""
        channel = getattr(self._local, "channel", None)
        if channel is None:
            return
        del self._local.channel
        self._close(channel)

    def discard_connection(self) -> None:
        """Close this thread's channel and connection; the next call opens new ones."""
        self.discard_channel()
        connection = getattr(self._local, "connection", None)
        if connection is None:
            return
        del self._local.connection
        self._close(connection)

    def close(self) -> None:
        """Close the channels and connections of every thread (the broker is closing)."""
        with self._lock:
            # Channels first: closing a connection closes its channels without a reply.
            opened = sorted(self._open, key=lambda o: isinstance(o, pika.BlockingConnection))
            self._open.clear()
        for thing in opened:
            self._close(thing, forget=False)

    def _close(self, thing: Any, *, forget: bool = True) -> None:
        if forget:
            with self._lock:
                self._open.discard(thing)
        try:
            if thing.is_open:
                thing.close()
        except Exception:
            # Already closed by the server, or closed from a thread other than its own.
            logger.debug("Error closing %r.", thing, exc_info=True)
