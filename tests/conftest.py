from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

import nbqueue
from nbqueue import Worker
from nbqueue.brokers.stub import StubBroker
from nbqueue.common import redact_url

_ENV_PREFIXES = ("NBQUEUE_", "DRAMATIQ_", "dramatiq_")

REDIS_URL = os.environ.get("NBQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
RABBITMQ_URL = os.environ.get("NBQUEUE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
MEMCACHED_SERVER = os.environ.get("NBQUEUE_TEST_MEMCACHED_SERVER", "127.0.0.1:11211")

_reachable: dict[str, str | None] = {}


def require_server(name: str, url: str) -> str:
    """Return ``url`` if its server answers on TCP; skip the test on a laptop, fail it in CI.

    A skipped broker suite in CI would hide a broken install step, so ``CI`` turns the skip into
    a failure.
    """
    if name not in _reachable:
        parts = urlsplit(url)
        default_port = {
            "redis": 6379,
            "rediss": 6380,
            "amqp": 5672,
            "amqps": 5671,
            "memcached": 11211,
        }.get(parts.scheme, 0)
        try:
            with socket.create_connection(
                (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2
            ):
                _reachable[name] = None
        except OSError as e:
            _reachable[name] = f"{name} is not reachable at {redact_url(url)}: {e}"
    problem = _reachable[name]
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}; CI must run the {name} suite (is the server started?)")
        pytest.skip(problem)
    return url


@pytest.fixture
def redis_url() -> str:
    return require_server("Redis", REDIS_URL)


@pytest.fixture
def rabbitmq_url() -> str:
    return require_server("RabbitMQ", RABBITMQ_URL)


@pytest.fixture
def memcached_server() -> str:
    """The ``host:port`` of the test memcached (``NBQUEUE_TEST_MEMCACHED_SERVER``)."""
    require_server("memcached", f"memcached://{MEMCACHED_SERVER}")
    return MEMCACHED_SERVER


@pytest.fixture(autouse=True)
def clean_environ(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Drop broker configuration from the environment for the duration of each test; the
    local job history goes to a file of the test's own, never the user's."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) and not name.startswith("NBQUEUE_TEST_"):
            monkeypatch.delenv(name)
    history = tmp_path_factory.mktemp("history") / "history.sqlite3"
    monkeypatch.setenv("NBQUEUE_HISTORY_PATH", str(history))


@pytest.fixture(autouse=True)
def reset_global_broker() -> Iterator[None]:
    """Each test starts with no global broker and leaves none behind."""
    from nbqueue import broker as broker_module

    previous = broker_module.global_broker
    broker_module.global_broker = None
    yield
    broker_module.global_broker = previous


@pytest.fixture
def namespace() -> str:
    """A fresh name for queues and keys, so that tests never share state."""
    return f"nbq-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def stub_broker() -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    nbqueue.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def worker_factory() -> Iterator[Callable[..., Worker]]:
    """Make started workers with short timeouts; every one is stopped at teardown."""
    workers: list[Worker] = []

    def make(broker: nbqueue.Broker, **kwargs: object) -> Worker:
        kwargs.setdefault("worker_timeout", 100)
        kwargs.setdefault("worker_threads", 2)
        worker = Worker(broker, **kwargs)  # type: ignore[arg-type]
        worker.start()
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop(timeout=5000)


@pytest.fixture
def stub_worker(stub_broker: StubBroker, worker_factory: Callable[..., Worker]) -> Worker:
    return worker_factory(stub_broker)
