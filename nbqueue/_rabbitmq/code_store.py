"""The notebook-actor store on RabbitMQ, which has no key-value store: queues hold the data.

Names start with a prefix (``nbqueue`` unless given):

* ``<prefix>.code.<hash>``: a durable queue with ``x-max-length: 1`` holding the signed envelope
  of one version. It is read without consuming it: ``basic_get`` then ``basic_nack(requeue)``.
  While another process holds it for that instant the queue looks empty, so a read retries for
  up to ``READ_RETRY`` seconds before it reports the store as busy;
* ``<prefix>.code.index``: a durable queue of index entries (JSON), ``x-max-length`` bounded,
  read the same way; the newest entry per (queue, actor) wins;
* ``<prefix>.cap.<queue>.<actor>``: an auto-delete capability queue that every worker able to
  run that actor *consumes*. Nothing is ever published to it: its consumer count, read with a
  passive ``queue_declare``, is the number of live capable workers, and RabbitMQ drops the
  consumers of a dead connection by itself, so no heartbeat is needed.

The worker registry (``workers.py``) shares this store's connection and I/O thread (``call``).

pika is not thread-safe: one daemon thread owns this store's connection (two channels: one for
the capability consumers, one for reads and writes, which a 404 may close). Callers hand it work
and wait at most ``timeout`` seconds, the deadline of every call; the thread pumps the
connection between tasks, so heartbeats keep flowing.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]

from ..errors import BrokerError, ConnectionClosed, ConnectionFailed
from ..services import CodeStore, Published
from .io import describe_error

if TYPE_CHECKING:
    from .broker import RabbitmqBroker

__all__ = ["RabbitmqCodeStore"]

logger = logging.getLogger("nbqueue.remote")

#: How long a read of a code queue retries while another process peeks at it, in seconds.
READ_RETRY = 3.0

_T = TypeVar("_T")


class RabbitmqCodeStore(CodeStore):
    """The store of a ``RabbitmqBroker``, on a connection of its own made from the broker's
    connection parameters.

    Parameters:
      prefix: the start of every queue name (tests use their own).
      timeout: the deadline of each call, in seconds.
      index_length: how many index entries the index queue keeps (oldest dropped first).
    """

    def __init__(
        self,
        broker: RabbitmqBroker,
        *,
        prefix: str = "nbqueue",
        timeout: float = 10.0,
        index_length: int = 1000,
    ) -> None:
        self._params = broker._params
        self._where = broker._where
        self._secrets = broker._secrets
        self.prefix = prefix
        self.timeout = timeout
        self.index_length = index_length
        self._tasks: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.Queue()
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connection: Any = None
        #: the channel for reads and writes, used on the I/O thread only
        self.ops: Any = None
        #: counts the connections made, so that users know when to declare again
        self.generation = 0
        self._caps: Any = None
        self._wanted: set[str] = set()
        self._consumers: dict[str, str] = {}  # capability queue -> consumer tag

    # -- names ----------------------------------------------------------------------------------

    def code_queue(self, code_hash: str) -> str:
        return f"{self.prefix}.code.{code_hash}"

    @property
    def index_queue(self) -> str:
        return f"{self.prefix}.code.index"

    def capability_queue(self, queue_name: str, actor_name: str) -> str:
        return f"{self.prefix}.cap.{queue_name}.{actor_name}"

    # -- the contract ---------------------------------------------------------------------------

    def put(self, envelope: bytes, entry: Published) -> None:
        pointer = json.dumps(
            {
                "queue_name": entry.queue_name,
                "actor_name": entry.actor_name,
                "code_hash": entry.code_hash,
                "published_at": entry.published_at,
            }
        ).encode()

        def put() -> None:
            persistent = pika.BasicProperties(delivery_mode=2, content_type="application/json")
            name = self.code_queue(entry.code_hash)
            self.ops.queue_declare(name, durable=True, arguments={"x-max-length": 1})
            self.ops.basic_publish("", name, envelope, persistent, mandatory=True)
            self.ops.queue_declare(
                self.index_queue, durable=True, arguments={"x-max-length": self.index_length}
            )
            self.ops.basic_publish("", self.index_queue, pointer, persistent, mandatory=True)

        self.call(put)

    def get(self, code_hash: str) -> bytes | None:
        name = self.code_queue(code_hash)

        def get() -> bytes | None:
            if self.passive(name) is None:
                return None
            deadline = time.monotonic() + READ_RETRY
            while True:
                method, _properties, body = self.ops.basic_get(name, auto_ack=False)
                if method is not None:
                    self.ops.basic_nack(method.delivery_tag, requeue=True)
                    return bytes(body)
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"The code queue {name!r} stayed empty for {READ_RETRY} s although it "
                        f"exists (busy, or its message was lost); republish the actor."
                    )
                self._connection.process_data_events(time_limit=0.05)

        return self.call(get)

    def peek_all(self, queue_name: str, count: int | None = None) -> list[bytes]:
        """Return the bodies of the messages in ``queue_name`` (at most ``count``; all of them
        when ``None``) and put every one back, in order (one multiple nack). Run it in the
        store's I/O thread (``call``)."""
        bodies: list[bytes] = []
        last = None
        while count is None or len(bodies) < count:
            method, _properties, body = self.ops.basic_get(queue_name, auto_ack=False)
            if method is None:
                break
            last = method.delivery_tag
            bodies.append(bytes(body))
        if last is not None:
            self.ops.basic_nack(last, multiple=True, requeue=True)
        return bodies

    def published(self) -> list[Published]:
        def read() -> list[bytes]:
            declared = self.passive(self.index_queue)
            if declared is None:
                return []
            return self.peek_all(self.index_queue, declared.method.message_count)

        latest: dict[tuple[str, str], Published] = {}
        for body in self.call(read):
            try:
                data = json.loads(body)
                entry = Published(
                    str(data["queue_name"]),
                    str(data["actor_name"]),
                    str(data["code_hash"]),
                    int(data["published_at"]),
                )
            except (ValueError, KeyError, TypeError):
                continue
            key = (entry.queue_name, entry.actor_name)
            if key not in latest or latest[key].published_at <= entry.published_at:
                latest[key] = entry
        return list(latest.values())

    def register(self, worker_id: str, capabilities: set[tuple[str, str]], ttl: int) -> None:
        wanted = {self.capability_queue(q, a) for q, a in capabilities}
        with self._lock:
            changed = wanted != self._wanted
            self._wanted = wanted
        if changed:
            self.call(self._sync_consumers)

    def unregister(self, worker_id: str) -> None:
        with self._lock:
            self._wanted = set()
        if self._consumers:
            self.call(self._sync_consumers)

    def capable(self, queue_name: str, actor_names: Iterable[str], *, exclude: str) -> int:
        names = [self.capability_queue(queue_name, a) for a in actor_names]

        def count() -> int:
            total = 0
            for name in names:
                declared = self.passive(name)
                if declared is not None:
                    # Our own consumer is this worker: it asked because it cannot run the actor.
                    own = 1 if name in self._consumers else 0
                    total += max(0, declared.method.consumer_count - own)
            return total

        return self.call(count)

    def close(self) -> None:
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(self.timeout)

    # -- the I/O thread -------------------------------------------------------------------------

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the I/O thread and return what it returns, within ``timeout`` seconds.

        Raises:
          ConnectionClosed: no answer in time, or the connection failed during ``fn``.
          ConnectionFailed: RabbitMQ could not be reached.
        """
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._run, name="nbqueue-remote-rabbitmq", daemon=True
                )
                self._thread.start()
        self._tasks.put((fn, future))
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(lambda: None)  # wake the loop now
            except Exception:
                pass  # closing; the loop notices within its pump interval
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ConnectionClosed(
                f"RabbitMQ at {self._where} did not answer within {self.timeout} s; check that "
                f"the server is running."
            ) from None

    def passive(self, name: str) -> Any:
        """``queue_declare(passive=True)``, or ``None`` when the queue does not exist (on the
        I/O thread)."""
        try:
            return self.ops.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != 404:
                raise
            self.reopen()
            return None

    def reopen(self) -> None:
        """Replace the read-and-write channel, after the server closed it (on the I/O thread)."""
        self.ops = self._connection.channel()
        self.ops.confirm_delivery()

    def pump(self, seconds: float) -> None:
        """Process the connection's events for up to ``seconds`` (on the I/O thread)."""
        self._connection.process_data_events(time_limit=seconds)

    def _sync_consumers(self) -> None:
        with self._lock:
            wanted = set(self._wanted)
        for name in set(self._consumers) - wanted:
            self._caps.basic_cancel(self._consumers.pop(name))
        for name in sorted(wanted - set(self._consumers)):
            self._caps.queue_declare(name, auto_delete=True)
            self._consumers[name] = self._caps.basic_consume(name, _refuse)

    def _connect(self) -> None:
        self._connection = pika.BlockingConnection(self._params)
        self.generation += 1
        self.ops = self._connection.channel()
        self.ops.confirm_delivery()
        self._caps = self._connection.channel()
        self._consumers = {}
        self._sync_consumers()

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        self._consumers = {}
        if connection is not None:
            try:
                connection.close()
            except Exception:
                pass

    def _run(self) -> None:
        while not self._stopping.is_set():
            if self._connection is None or not self._connection.is_open:
                try:
                    self._connect()
                except Exception as e:
                    self._disconnect()
                    text = describe_error(e, self._secrets)
                    self._fail_pending(
                        ConnectionFailed(
                            f"Could not connect to RabbitMQ at {self._where} ({text}); check "
                            f"that the server is running and that the URL is right."
                        )
                    )
                    self._stopping.wait(1.0)
                    continue
            try:
                self._run_tasks()
                self._connection.process_data_events(time_limit=0.2)
            except Exception as e:
                text = describe_error(e, self._secrets)
                logger.warning(
                    "The notebook-actor store lost RabbitMQ at %s (%s).", self._where, text
                )
                self._disconnect()
        self._fail_pending(ConnectionClosed("The notebook-actor store was closed."))
        self._disconnect()

    def _run_tasks(self) -> None:
        while True:
            try:
                fn, future = self._tasks.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
                text = describe_error(e, self._secrets)
                future.set_exception(
                    ConnectionClosed(f"RabbitMQ at {self._where} failed a store call ({text}).")
                )
                raise ConnectionClosed(text) from None
            except BaseException as e:
                future.set_exception(e)

    def _fail_pending(self, error: BaseException) -> None:
        while True:
            try:
                _fn, future = self._tasks.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(error)


def _refuse(channel: Any, method: Any, _properties: Any, _body: bytes) -> None:
    # Nothing is published to a capability queue; whatever arrives is not ours to keep.
    channel.basic_nack(method.delivery_tag, requeue=False)
