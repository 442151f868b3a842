from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

import pytest

import nbqueue
from nbqueue.brokers.stub import StubBroker

BROKERS = [pytest.param("stub", id="stub")]


def _make_stub() -> StubBroker:
    broker = StubBroker()
    broker.emit_after("process_boot")
    return broker


FACTORIES: dict[str, Callable[[], nbqueue.Broker]] = {"stub": _make_stub}


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> Iterator[nbqueue.Broker]:
    """The broker contract runs against every broker in BROKERS."""
    broker = FACTORIES[request.param]()
    nbqueue.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.close()


def _inject_stub(broker: StubBroker, queue_name: str, data: bytes) -> None:
    queue = broker._store[queue_name]
    with broker._lock:
        heapq.heappush(queue.entries, (0, next(broker._sequence), data))
        queue.unfinished += 1
        queue.not_empty.notify_all()


@pytest.fixture
def inject_raw() -> Callable[[nbqueue.Broker, str, bytes], None]:
    """Put raw bytes on a queue, bypassing the encoder, as a foreign or broken producer would."""

    def inject(broker: nbqueue.Broker, queue_name: str, data: bytes) -> None:
        if isinstance(broker, StubBroker):
            _inject_stub(broker, queue_name, data)
        else:  # pragma: no cover - each broker adds its own branch
            raise NotImplementedError(type(broker).__name__)

    return inject
