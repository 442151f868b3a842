"""The exposition server and the queue counts it asks of worker processes at scrape time."""

from __future__ import annotations

import os
import socket

import pytest

import nbqueue
from nbqueue._prometheus.exposition import ExpositionServer
from nbqueue._prometheus.queues import QueueCollector, QueueStatsServer, ask_workers, socket_path
from nbqueue.brokers.stub import StubBroker

from .conftest import scrape


@pytest.fixture
def server(prom_dir: str):
    server = ExpositionServer(
        "127.0.0.1",
        0,
        db_path=prom_dir,
        collectors=[QueueCollector(lambda: ask_workers(prom_dir))],
    )
    thread = server.start()
    yield server
    server.shutdown()
    thread.join(10)


def test_the_server_sums_the_metric_files_and_asks_a_worker_for_the_queues(
    broker, worker_factory, server, namespace
) -> None:
    @nbqueue.actor(broker=broker, queue_name=namespace)
    def add(x, y):
        return x + y

    worker = worker_factory(broker)
    for i in range(10):
        add.send(i, 1)
    broker.join(namespace)
    worker.join()
    worker.pause()
    for i in range(4):
        add.send(i, 2)
    add.send_with_options(args=(0, 0), delay=3_600_000)

    samples = scrape(f"http://127.0.0.1:{server.port}/metrics")
    here = (("actor_name", "add"), ("queue_name", namespace))
    assert samples[("dramatiq_messages_total", here)] == 10
    assert samples[("dramatiq_message_duration_milliseconds_count", here)] == 10

    def queue(state: str) -> float:
        return samples[("nbqueue_queue_messages", (("queue_name", namespace), ("state", state)))]

    # The paused worker has fetched nothing more: the 4 wait in the queue, 1 in the delay queue
    # (held by the worker's consumer or still on the delay queue: delayed either way).
    assert (queue("ready") + queue("in_flight"), queue("delayed"), queue("dead")) == (4, 1, 0)
    worker.resume()


def test_without_a_worker_the_scrape_has_no_queue_counts(server, prom_dir) -> None:
    samples = scrape(f"http://127.0.0.1:{server.port}/")
    assert not [key for key in samples if key[0] == "nbqueue_queue_messages"]


def test_a_stale_socket_is_skipped_and_removed(prom_dir, namespace) -> None:
    broker = StubBroker()
    broker.declare_queue(namespace)
    stale = socket_path(prom_dir, 1)  # bound once, nobody listens any more
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(stale)
    live = QueueStatsServer(broker, prom_dir)
    assert live.start()
    try:
        assert ask_workers(prom_dir) == {
            namespace: {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
        }
        assert not os.path.exists(stale)
    finally:
        live.stop()
        broker.close()
    assert not os.path.exists(live.path)
    assert ask_workers(prom_dir) is None


def test_a_busy_port_raises(server) -> None:
    with pytest.raises(OSError):
        ExpositionServer("127.0.0.1", server.port)
