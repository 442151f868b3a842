"""The Prometheus middleware in this process: a StubBroker, a Worker and a private directory."""

from __future__ import annotations

import dataclasses
import os
import struct
import time

import pytest

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.common import current_millis
from nbqueue.middleware.prometheus import Prometheus


def read(directory: str, name: str, **labels: str) -> float | None:
    """One sample summed over the processes' files, as the exposition server reports it."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    for _ in range(3):
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        try:
            return registry.get_sample_value(name, labels)
        except struct.error:
            continue  # a worker thread was creating its file (empty for an instant)
    raise AssertionError(f"the metric files of {directory} could not be read")


def labels(queue: str, actor: str) -> dict[str, str]:
    return {"queue_name": queue, "actor_name": actor}


def test_counts_after_n_messages(broker, worker_factory, prom_dir, namespace) -> None:
    @nbqueue.actor(broker=broker, queue_name=namespace)
    def add(x, y):
        return x + y

    worker = worker_factory(broker)
    for i in range(25):
        add.send(i, i)
    broker.join(namespace)
    worker.join()

    here = labels(namespace, "add")
    assert read(prom_dir, "dramatiq_messages_total", **here) == 25
    assert read(prom_dir, "dramatiq_message_duration_milliseconds_count", **here) == 25
    assert read(prom_dir, "dramatiq_message_duration_milliseconds_bucket", le="+Inf", **here) == 25
    assert read(prom_dir, "dramatiq_message_errors_total", **here) is None
    assert read(prom_dir, "dramatiq_messages_inprogress", **here) == 0
    assert any(name.startswith("counter_") for name in os.listdir(prom_dir))


def test_the_duration_buckets_are_dramatiqs(broker, worker_factory, prom_dir, namespace) -> None:
    @nbqueue.actor(broker=broker, queue_name=namespace)
    def noop():
        pass

    worker_factory(broker)
    noop.send()
    broker.join(namespace)
    here = labels(namespace, "noop")
    for le in ("5.0", "10.0", "750.0", "30000.0", "900000.0", "+Inf"):
        assert read(prom_dir, "dramatiq_message_duration_milliseconds_bucket", le=le, **here) == 1


def test_a_message_sent_with_a_retries_option_is_not_a_retry(
    broker, worker_factory, prom_dir, namespace
) -> None:
    @nbqueue.actor(broker=broker, queue_name=namespace)
    def requeued():
        pass

    worker = worker_factory(broker)
    # as a requeued dead letter arrives: with the retries it had used, now or after a delay
    requeued.send_with_options(retries=3)
    requeued.send_with_options(retries=3, delay=1)
    broker.join(namespace)
    worker.join()
    assert read(prom_dir, "dramatiq_messages_total", **labels(namespace, "requeued")) == 2
    for queue in (namespace, f"{namespace}.DQ"):
        assert read(prom_dir, "dramatiq_message_retries_total", **labels(queue, "requeued")) is None


def test_failures_retries_and_rejects(broker, worker_factory, prom_dir, namespace) -> None:
    @nbqueue.actor(broker=broker, queue_name=namespace, max_retries=2, min_backoff=1, max_backoff=5)
    def fail():
        raise RuntimeError("boom")

    worker = worker_factory(broker)
    fail.send()
    broker.join(namespace, fail_fast=False)
    worker.join()

    here = labels(namespace, "fail")
    assert read(prom_dir, "dramatiq_messages_total", **here) == 3
    assert read(prom_dir, "dramatiq_message_errors_total", **here) == 3
    assert read(prom_dir, "dramatiq_message_rejects_total", **here) == 1
    # Each retry is counted once, when Retries schedules it on the delay queue, not again when
    # it comes due and moves to its queue.
    assert (
        read(prom_dir, "dramatiq_message_retries_total", **labels(f"{namespace}.DQ", "fail")) == 2
    )
    assert read(prom_dir, "dramatiq_message_retries_total", **here) is None
    assert (
        read(prom_dir, "dramatiq_delayed_messages_inprogress", **labels(f"{namespace}.DQ", "fail"))
        == 0
    )
    assert read(prom_dir, "dramatiq_messages_inprogress", **here) == 0


def test_a_message_skipped_before_the_middleware_ran_counts_without_a_negative_gauge(
    broker, worker_factory, prom_dir, namespace
) -> None:
    @nbqueue.actor(broker=broker, queue_name=namespace)
    def old():
        raise AssertionError("AgeLimit skips this message")

    # AgeLimit comes before Prometheus, so Prometheus's before_process_message never runs.
    message = old.message_with_options(max_age=1000)
    broker.enqueue(dataclasses.replace(message, message_timestamp=current_millis() - 60_000))
    worker_factory(broker)
    broker.join(namespace, fail_fast=False)

    here = labels(namespace, "old")
    assert read(prom_dir, "dramatiq_messages_total", **here) == 1
    assert read(prom_dir, "dramatiq_message_errors_total", **here) is None
    assert read(prom_dir, "dramatiq_message_rejects_total", **here) == 1  # AgeLimit dead-letters
    # Never raised, so never lowered (Dramatiq's hooks would leave it at -1).
    assert (read(prom_dir, "dramatiq_messages_inprogress", **here) or 0) == 0


def test_delayed_messages_are_counted_while_held(
    broker, worker_factory, prom_dir, namespace
) -> None:
    @nbqueue.actor(broker=broker, queue_name=namespace)
    def later():
        pass

    for _ in range(3):
        later.send_with_options(delay=60_000)
    worker = worker_factory(broker)
    dq = labels(f"{namespace}.DQ", "later")
    # The worker's consumer threads pick the messages up: poll, with a deadline.
    deadline = time.monotonic() + 30
    while read(prom_dir, "dramatiq_delayed_messages_inprogress", **dq) != 3:
        assert time.monotonic() < deadline, "the worker did not hold the 3 delayed messages"
        time.sleep(0.02)

    later.send_with_options(delay=1)
    here = labels(namespace, "later")
    # join() would wait for the held ones too: poll for the short one, with a deadline.
    while read(prom_dir, "dramatiq_messages_total", **here) != 1:
        assert time.monotonic() < deadline, "the short delayed message did not run"
        time.sleep(0.02)
    assert read(prom_dir, "dramatiq_delayed_messages_inprogress", **dq) == 3
    assert read(prom_dir, "dramatiq_message_retries_total", **dq) is None

    worker.stop(timeout=5000)
    # A stopped worker holds nothing: its live gauges leave the sums.
    assert not read(prom_dir, "dramatiq_delayed_messages_inprogress", **dq)


def test_the_fork_function_is_the_exposition_server() -> None:
    from nbqueue._prometheus.exposition import run_exposition_server

    (fork,) = Prometheus().forks
    assert fork is run_exposition_server
    assert f"{fork.__module__}:{fork.__qualname__}" == (
        "nbqueue._prometheus.exposition:run_exposition_server"
    )


def test_hooks_before_boot_do_nothing(namespace) -> None:
    broker = StubBroker(middleware=[Prometheus()])

    @nbqueue.actor(broker=broker, queue_name=namespace)
    def add(x, y):
        return x + y

    add.send(1, 2)  # a producer never boots a worker: after_enqueue must not fail
    assert broker.queue_stats()[namespace].ready == 1
    broker.close()


def test_without_prometheus_client_the_error_names_the_extra(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install 'nbqueue\[prometheus\]'"):
        Prometheus()
