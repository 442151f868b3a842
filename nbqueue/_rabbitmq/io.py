"""The I/O side of the RabbitMQ broker: pika connections, each owned by one I/O thread.

pika is not thread-safe, so every connection lives on a thread of its own that runs pika's
``IOLoop`` for as long as the connection is wanted. Other threads never touch pika: they put work
on a deque and wake the loop (at most one wake-up is pending at a time, so a burst of calls costs
one wake-up). The loop keeps pumping the socket whatever the callers do, so heartbeats flow while
actors run for hours.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pika.exceptions  # type: ignore[import-untyped]
from pika.adapters.select_connection import IOLoop, SelectConnection  # type: ignore[import-untyped]
from pika.adapters.utils import connection_workflow  # type: ignore[import-untyped]

from ..errors import BrokerConnectionError, BrokerError, ConnectionClosed, ConnectionFailed

__all__ = ["Link", "LoopThread", "describe_error"]

logger = logging.getLogger("nbqueue.broker.RabbitmqBroker")


def describe_error(error: BaseException | None, secrets: Sequence[str] = ()) -> str:
    """Describe a pika error in a few words, with any password scrubbed out.

    pika's exceptions may embed connection parameters; nbqueue re-raises its own errors with this
    text and never chains pika's exception, so no password reaches a traceback.
    """
    if error is None:
        return "no reason given"
    if isinstance(error, connection_workflow.AMQPConnectionWorkflowFailed) and error.exceptions:
        error = error.exceptions[-1]
    inner = getattr(error, "exception", None)
    if isinstance(error, connection_workflow.AMQPConnectorException) and inner is not None:
        error = inner
    if isinstance(error, (pika.exceptions.ConnectionClosed, pika.exceptions.ChannelClosed)):
        text = f"{error.reply_code} {error.reply_text}"
    else:
        text = str(error) or type(error).__name__
        text = f"{type(error).__name__}: {text}"
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:500]


class LoopThread:
    """One pika ``IOLoop`` running on a daemon thread.

    Parameters:
      name: the thread's name.
    """

    def __init__(self, name: str) -> None:
        self.loop = IOLoop()
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._wake_pending = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread, soon; safe from any thread."""
        if self._stopped:
            raise ConnectionClosed("The RabbitMQ connection was closed; create a new broker.")
        self._calls.append(fn)
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.add_callback_threadsafe(self._drain)

    @property
    def in_loop(self) -> bool:
        """Whether the caller runs on the loop thread."""
        return threading.current_thread() is self._thread

    def _drain(self) -> None:
        # Reset the flag first: anything appended after this line wakes the loop again.
        self._wake_pending = False
        calls = self._calls
        while calls:
            fn = calls.popleft()
            try:
                fn()
            except Exception:
                logger.exception("Unexpected error on the RabbitMQ I/O thread.")

    def _run(self) -> None:
        try:
            self.loop.start()
        except Exception:
            logger.exception("The RabbitMQ I/O loop failed.")
        finally:
            self._stopped = True

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the loop and wait (bounded) for the thread to end."""
        if self._stopped:
            return
        try:
            self.call(self.loop.stop)
        except Exception:
            return
        self._stopped = True
        if not self.in_loop:
            self._thread.join(timeout)
        if not self._thread.is_alive():
            try:
                self.loop.close()
            except Exception:
                logger.debug("Error closing an I/O loop.", exc_info=True)


class Link:
    """A pika connection that lives on its own ``LoopThread`` and reconnects on demand.

    Subclasses open channels in ``on_open`` and learn of losses in ``on_lost``. Everything but
    ``start_close`` runs on the loop thread.
    """

    def __init__(
        self, params: Sequence[Any], name: str, where: str, secrets: Sequence[str]
    ) -> None:
        self.params = list(params)
        self.where = where
        self.secrets = list(secrets)
        self.io = LoopThread(name)
        self.connection: Any = None
        self.connecting = False
        self.closing = False
        self.blocked: str | None = None
        self.last_error: str | None = None
        self.closed_event = threading.Event()

    def connect(self) -> None:
        if self.connection is not None or self.connecting or self.closing:
            return
        self.connecting = True
        SelectConnection.create_connection(
            self.params, self._on_connected, custom_ioloop=self.io.loop
        )

    def _on_connected(self, result: Any) -> None:
        self.connecting = False
        if isinstance(result, BaseException):
            self.last_error = describe_error(result, self.secrets)
            self.on_connect_failed(
                ConnectionFailed(
                    f"Could not connect to RabbitMQ at {self.where}: {self.last_error}; check "
                    "that the server runs and the URL, user and password are right."
                )
            )
            return
        if self.closing:
            result.close()
            return
        self.connection = result
        self.blocked = None
        result.add_on_close_callback(self._on_connection_closed)
        result.add_on_connection_blocked_callback(self._on_blocked)
        result.add_on_connection_unblocked_callback(self._on_unblocked)
        self.on_open(result)

    def _on_blocked(self, connection: Any, frame: Any) -> None:
        self.blocked = getattr(frame.method, "reason", "") or "resource alarm"
        logger.warning("RabbitMQ blocked publishing on %s: %s.", self.where, self.blocked)

    def _on_unblocked(self, connection: Any, frame: Any) -> None:
        self.blocked = None
        logger.info("RabbitMQ unblocked publishing on %s.", self.where)
        self.on_unblocked()

    def _on_connection_closed(self, connection: Any, reason: BaseException) -> None:
        if connection is not self.connection:
            return
        self.connection = None
        self.blocked = None
        if self.closing:
            self.closed_event.set()
            self.on_lost(ConnectionClosed("The RabbitMQ connection was closed."))
            return
        self.last_error = describe_error(reason, self.secrets)
        logger.warning("Lost the RabbitMQ connection to %s: %s.", self.where, self.last_error)
        self.on_lost(
            ConnectionClosed(
                f"The connection to RabbitMQ at {self.where} dropped: {self.last_error}."
            )
        )

    def start_close(self) -> None:
        """Close the connection and stop the thread; safe from any thread, bounded."""

        def close() -> None:
            self.closing = True
            connection = self.connection
            if connection is not None and connection.is_open:
                try:
                    connection.close()
                    return
                except Exception:
                    logger.debug("Error closing a connection.", exc_info=True)
            self.closed_event.set()

        try:
            self.io.call(close)
        except BrokerError:
            return
        if not self.io.in_loop:
            self.closed_event.wait(2.0)
        self.io.stop()

    # hooks for subclasses
    def on_open(self, connection: Any) -> None:
        """The connection opened."""

    def on_connect_failed(self, error: BrokerConnectionError) -> None:
        """Connecting failed after every attempt."""

    def on_lost(self, error: BrokerConnectionError) -> None:
        """The open connection dropped (or was closed)."""

    def on_unblocked(self) -> None:
        """The server lifted a resource alarm."""
