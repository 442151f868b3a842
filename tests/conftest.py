from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

import nbqueue
from nbqueue import Worker
from nbqueue.brokers.stub import StubBroker

_ENV_PREFIXES = ("NBQUEUE_", "DRAMATIQ_", "dramatiq_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop broker configuration from the environment for the duration of each test."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) and not name.startswith("NBQUEUE_TEST_"):
            monkeypatch.delenv(name)


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
