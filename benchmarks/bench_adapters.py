"""Adapters: one way to build a broker, a result backend and the two actors per implementation.

An *implementation* is what one column of the table measures:

* ``nbqueue``: nbqueue as users get it. On memory, ``connect("memory://")`` (default middleware
  plus ``AsyncIO``, ``Results(StubBackend, store_results=True)`` and ``Live``); on Redis and
  RabbitMQ, the broker ``connect(url)`` builds plus what ``%nbqueue connect`` adds in a notebook
  (``AsyncIO``, ``Results`` and ``Live``). RabbitMQ publishes with confirms (nbqueue's default).
* ``nbqueue-matched``: nbqueue set up as Dramatiq is by default: the default middleware (the same
  six classes as Dramatiq's) plus ``Results`` on the same kind of backend, and on RabbitMQ
  ``confirm_delivery=False`` (Dramatiq's default).
* ``dramatiq``: Dramatiq 2.x with its default middleware plus ``Results``.

Result backends: ``StubBackend`` on memory and RabbitMQ (the round trip runs in one process),
``RedisBackend`` on Redis. Every child works under its own ``Target.prefix``: Redis keys (broker
and results namespaces) and queue names start with it, and ``cleanup`` deletes only those.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import socket
from typing import Any
from urllib.parse import urlsplit

IMPLEMENTATIONS = ("nbqueue", "nbqueue-matched", "dramatiq")
BROKERS = ("memory", "redis", "rabbitmq")
WORKER_THREADS = 8
#: Both libraries' default ``worker_timeout`` (ms), passed explicitly so that environment
#: variables cannot change it.
WORKER_TIMEOUT_MS = 1000
#: Messages per pipelined round trip in Dramatiq's bulk send on Redis (nbqueue's batch size).
DRAMATIQ_REDIS_BATCH = 1000
SPEC_ENV = "NBQ_BENCH_SPEC"


def library_of(impl: str) -> str:
    """Return the package an implementation imports."""
    return "dramatiq" if impl == "dramatiq" else "nbqueue"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one child works: the broker kind, its URL and a prefix nobody else uses."""

    broker: str
    url: str
    prefix: str

    @property
    def queue(self) -> str:
        return f"{self.prefix}-noop"

    @property
    def rt_queue(self) -> str:
        return f"{self.prefix}-rt"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Target:
        return cls(**json.loads(text))


def redact(url: str) -> str:
    """Return ``url`` without its password."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()
    return url


def check_server(broker: str, url: str) -> str | None:
    """Return why the server of ``broker`` cannot be used, or ``None`` when it answers."""
    if broker == "memory":
        return None
    parts = urlsplit(url)
    port = parts.port or {"redis": 6379, "rediss": 6380, "amqp": 5672, "amqps": 5671}.get(
        parts.scheme, 0
    )
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=2):
            pass
    except OSError as e:
        name = "Redis" if broker == "redis" else "RabbitMQ"
        option = "--redis-url" if broker == "redis" else "--rabbitmq-url"
        return (
            f"{name} is not reachable at {redact(url)} ({e}); skipping the {broker} benchmarks "
            f"(start the server or pass {option})."
        )
    return None


def server_version(broker: str, url: str) -> str | None:
    """Return the server's version, if it is cheap to ask."""
    try:
        if broker == "redis":
            import redis

            client = redis.Redis.from_url(url, socket_timeout=2)
            try:
                return str(client.info("server")["redis_version"])
            finally:
                client.close()
        if broker == "rabbitmq":
            import pika

            connection = pika.BlockingConnection(pika.URLParameters(url))
            try:
                props = connection._impl.server_properties
                version = props.get("version", b"?")
                return version.decode() if isinstance(version, bytes) else str(version)
            finally:
                connection.close()
    except Exception:  # a version is nice to have, never a reason to fail
        return None
    return None


def cleanup(target: Target) -> int:
    """Delete the Redis keys or RabbitMQ queues of ``target``; return how many were deleted."""
    if target.broker == "redis":
        import redis

        client = redis.Redis.from_url(target.url)
        try:
            keys = list(client.scan_iter(match=f"{target.prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
            return len(keys)
        finally:
            client.close()
    if target.broker == "rabbitmq":
        import pika

        deleted = 0
        connection = pika.BlockingConnection(pika.URLParameters(target.url))
        try:
            for queue in (target.queue, target.rt_queue):
                for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                    channel = connection.channel()
                    try:
                        # RabbitMQ deletes a missing queue without complaint: ask first, to count
                        channel.queue_declare(name, passive=True)
                        channel.queue_delete(name)
                        deleted += 1
                    except pika.exceptions.ChannelClosedByBroker:
                        pass  # never declared, or already deleted
                    finally:
                        if channel.is_open:
                            channel.close()
        finally:
            connection.close()
        return deleted
    return 0


def _noop(*args: Any) -> None:
    """Do nothing."""


def _echo(value: Any) -> Any:
    """Return the argument, so that it is stored as the result."""
    return value


class Adapter:
    """One implementation on one broker: the broker, the result backend and two actors.

    ``bench_noop`` (queue ``target.queue``) does nothing; ``bench_echo`` (``target.rt_queue``)
    returns its argument with ``store_results=True``.
    """

    def __init__(self, impl: str, target: Target) -> None:
        self.impl = impl
        self.target = target
        self.library = library_of(impl)
        self.lib: Any = importlib.import_module(self.library)
        build = getattr(self, f"_build_{self.library}_{target.broker}")
        self.broker, self.backend = build()
        self.lib.set_broker(self.broker)
        self.noop = self.lib.actor(
            _noop, actor_name="bench_noop", queue_name=target.queue, broker=self.broker
        )
        self.echo = self.lib.actor(
            _echo,
            actor_name="bench_echo",
            queue_name=target.rt_queue,
            broker=self.broker,
            store_results=True,
        )

    @property
    def default(self) -> bool:
        return self.impl == "nbqueue"

    # -- nbqueue ---------------------------------------------------------------------------------

    def _nbqueue_extras(self, broker: Any, backend: Any) -> Any:
        """Add ``Results`` (and, as users get it, ``AsyncIO`` and ``Live``); return the backend."""
        from nbqueue.middleware import AsyncIO
        from nbqueue.results import Results

        if self.default:
            broker.add_middleware(AsyncIO())
        broker.add_middleware(Results(backend=backend))
        if self.default:
            from nbqueue.live import Live

            broker.add_middleware(Live())
        return backend

    def _build_nbqueue_memory(self) -> tuple[Any, Any]:
        from nbqueue.brokers.stub import StubBroker
        from nbqueue.connection import broker_from_url
        from nbqueue.results import Results
        from nbqueue.results.backends import StubBackend

        if self.default:
            broker = broker_from_url("memory://")
            results = next(m for m in broker.middleware if isinstance(m, Results))
            return broker, results.backend
        broker = StubBroker()
        backend = StubBackend()
        broker.add_middleware(Results(backend=backend))
        return broker, backend

    def _build_nbqueue_redis(self) -> tuple[Any, Any]:
        from nbqueue.brokers.redis import RedisBroker
        from nbqueue.results.backends import RedisBackend

        broker = RedisBroker(self.target.url, namespace=self.target.prefix)
        backend = RedisBackend(url=self.target.url, namespace=f"{self.target.prefix}-results")
        return broker, self._nbqueue_extras(broker, backend)

    def _build_nbqueue_rabbitmq(self) -> tuple[Any, Any]:
        from nbqueue.brokers.rabbitmq import RabbitmqBroker
        from nbqueue.results.backends import StubBackend

        broker = RabbitmqBroker(self.target.url, confirm_delivery=self.default)
        return broker, self._nbqueue_extras(broker, StubBackend())

    # -- dramatiq --------------------------------------------------------------------------------

    def _build_dramatiq_memory(self) -> tuple[Any, Any]:
        from dramatiq.brokers.stub import StubBroker
        from dramatiq.results import Results
        from dramatiq.results.backends import StubBackend

        broker, backend = StubBroker(), StubBackend()
        broker.add_middleware(Results(backend=backend))
        return broker, backend

    def _build_dramatiq_redis(self) -> tuple[Any, Any]:
        from dramatiq.brokers.redis import RedisBroker
        from dramatiq.results import Results
        from dramatiq.results.backends import RedisBackend

        broker = RedisBroker(url=self.target.url, namespace=self.target.prefix)
        backend = RedisBackend(url=self.target.url, namespace=f"{self.target.prefix}-results")
        broker.add_middleware(Results(backend=backend))
        return broker, backend

    def _build_dramatiq_rabbitmq(self) -> tuple[Any, Any]:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
        from dramatiq.results import Results
        from dramatiq.results.backends import StubBackend

        broker, backend = RabbitmqBroker(url=self.target.url), StubBackend()
        broker.add_middleware(Results(backend=backend))
        return broker, backend

    # -- operations ------------------------------------------------------------------------------

    def middleware_names(self) -> list[str]:
        """Return the class names of the broker's middleware, in order."""
        return [type(m).__name__ for m in self.broker.middleware]

    def worker(self) -> Any:
        """Return a new, unstarted worker with 8 threads and the default timeout."""
        return self.lib.Worker(
            self.broker, worker_threads=WORKER_THREADS, worker_timeout=WORKER_TIMEOUT_MS
        )

    def send_bulk(self, count: int) -> None:
        """Send ``count`` no-op messages the fastest way each library offers.

        nbqueue: ``actor.send_many(range(count))``. Dramatiq has no bulk send: on Redis its
        enqueue script is called through a redis-py pipeline, 1,000 messages per round trip (the
        same batch size as nbqueue's); elsewhere ``broker.enqueue`` in a loop.
        """
        if self.library == "nbqueue":
            self.noop.send_many(range(count))
        elif self.target.broker == "redis":
            self._dramatiq_redis_bulk(count)
        else:
            enqueue, message = self.broker.enqueue, self.noop.message
            for i in range(count):
                enqueue(message(i))

    def _dramatiq_redis_bulk(self, count: int) -> None:
        from uuid import uuid4

        from dramatiq.common import current_millis

        broker = self.broker
        script, keys = broker.scripts["dispatch"], [broker.namespace]
        message = self.noop.message
        unpack = broker._max_unpack_size()
        for start in range(0, count, DRAMATIQ_REDIS_BATCH):
            pipe = broker.client.pipeline(transaction=False)
            sent = []
            for i in range(start, min(count, start + DRAMATIQ_REDIS_BATCH)):
                m = message(i).copy(options={"redis_message_id": str(uuid4())})
                broker.emit_before("enqueue", m, None)
                args = [
                    "enqueue", current_millis(), m.queue_name, broker.broker_id,
                    broker.heartbeat_timeout, broker.dead_message_ttl,
                    broker._should_do_maintenance("enqueue"), unpack,
                    m.options["redis_message_id"], m.encode(),
                ]  # fmt: skip
                script(keys=keys, args=args, client=pipe)
                sent.append(m)
            pipe.execute()
            for m in sent:
                broker.emit_after("enqueue", m, None)

    def join(self, queue: str) -> None:
        """Block until ``queue`` is drained (Dramatiq's polling joins tuned to poll often)."""
        if self.library == "dramatiq" and self.target.broker == "rabbitmq":
            # the default (10 empty polls 100 ms apart) would add a second to every drain
            self.broker.join(queue, min_successes=2, idle_time=20)
        elif self.library == "dramatiq" and self.target.broker == "redis":
            self.broker.join(queue, interval=10)
        else:
            self.broker.join(queue)

    def pending(self, queue: str) -> int:
        """Return how many messages of ``queue`` are not processed yet, as seen from outside.

        On RabbitMQ only ready and delayed messages are counted (a queue's unacknowledged count
        is not in the AMQP declare reply), so up to the workers' prefetch may still be running.
        """
        if self.library == "nbqueue":
            if self.target.broker == "redis":
                return int(self.broker._pending(queue))
            stats = self.broker.queue_stats()[queue]
            in_flight = stats.in_flight if self.target.broker == "redis" else 0
            return int(stats.ready + stats.delayed + (in_flight or 0))
        if self.target.broker == "redis":
            return int(self.broker.do_qsize(queue))
        ready, delayed, _dead = self.broker.get_queue_message_counts(queue)
        return int(ready + delayed)

    def settle(self) -> None:
        """Wait until the sends made so far have done all their work: nbqueue's live channel
        writes a message's ``enqueued`` status from a background thread on Redis, after
        ``send()`` returned. A send workload's clock stops after this; a processing workload's
        starts after it, so that the pre-load's status writes are not counted as processing."""
        if self.library != "nbqueue":
            return
        from nbqueue.live import Live
        from nbqueue.live.channel import get_publisher

        for middleware in self.broker.middleware:
            if isinstance(middleware, Live):
                transport = middleware.transport(self.broker)
                if transport.buffered:
                    get_publisher(transport).flush(timeout=120.0)

    def flush(self) -> None:
        """Drop every waiting message."""
        self.broker.flush_all()

    def version(self) -> str:
        """Return the library's version."""
        return str(getattr(self.lib, "__version__", "?"))

    def close(self) -> None:
        """Release the broker's resources."""
        self.broker.close()


def app_from_environment() -> Adapter:
    """Build the adapter a CLI worker process imports, from ``NBQ_BENCH_SPEC``."""
    spec = json.loads(os.environ[SPEC_ENV])
    return Adapter(spec["impl"], Target(**spec["target"]))
