"""The worker registry: every Worker publishes its record on a heartbeat, a clean stop removes
it, and the record of a killed worker process expires by its ttl, on every broker."""

from __future__ import annotations

import os
import pathlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

import nbqueue
from nbqueue import Worker
from nbqueue.brokers.stub import StubBroker
from nbqueue.remote import configure_worker
from nbqueue.services import RunningMessage, WorkerInfo
from tests._fleet import DEADLINE, Beats, CliWorker, find
from tests.brokers import _rabbitmq, _redis
from tests.conftest import RABBITMQ_URL, REDIS_URL, require_server

ALL_BROKERS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
]
REAL_BROKERS = ALL_BROKERS[1:]


@pytest.fixture
def fleet_broker(request: pytest.FixtureRequest, namespace: str) -> Iterator[nbqueue.Broker]:
    """A broker of the parametrized kind on the test's namespace, with a ``Beats`` counter."""
    kind = request.param
    broker: nbqueue.Broker
    if kind == "memory":
        broker = StubBroker()
    elif kind == "redis":
        broker = _redis.make_broker(require_server("Redis", REDIS_URL), namespace)
    else:
        # As a broker built from the URL (the CLI workers'), so they agree on the queues.
        url = require_server("RabbitMQ", RABBITMQ_URL)
        broker = _rabbitmq.make_broker(url, namespace, max_priority=None)
    broker.add_middleware(Beats())
    broker.emit_after("process_boot")
    yield broker
    if kind == "redis":
        _redis.cleanup(broker, namespace)  # type: ignore[arg-type]
        broker.close()
    elif kind == "rabbitmq":
        _rabbitmq.cleanup(broker, namespace)  # type: ignore[arg-type]
    else:
        broker.close()


def beats_of(broker: nbqueue.Broker) -> Beats:
    [beats] = [m for m in broker.middleware if isinstance(m, Beats)]
    return beats


def cli_args(kind: str, namespace: str) -> list[str]:
    """The broker options of a CLI worker (or ``nbqueue status``) on the test's namespace."""
    if kind == "redis":
        return ["--broker", REDIS_URL, "--namespace", namespace]
    return ["--broker", RABBITMQ_URL]


@pytest.mark.parametrize("fleet_broker", ALL_BROKERS, indirect=True)
def test_a_running_worker_is_listed_with_the_messages_it_runs_until_it_stops(
    fleet_broker: nbqueue.Broker, namespace: str, worker_factory: Callable[..., Worker]
) -> None:
    broker = fleet_broker
    beats = beats_of(broker)
    started, release = threading.Event(), threading.Event()

    @nbqueue.actor(broker=broker, queue_name=namespace)
    def hold() -> None:
        started.set()
        release.wait(DEADLINE)

    worker = worker_factory(broker, queues=[namespace], worker_threads=2, heartbeat_ttl=3000)
    try:
        message = hold.send()
        assert started.wait(DEADLINE)
        beats.wait(2)  # the second one snapshot the worker after the actor started
        info = find(nbqueue.workers(broker), worker_id=worker.worker_id)
        assert isinstance(info, WorkerInfo)
        assert info.running == (RunningMessage(message.message_id, "hold"),)
        assert info.running[0] == (message.message_id, "hold")
        assert (info.host, info.pid) == (socket.gethostname(), os.getpid())
        assert (info.processes, info.threads, info.queues) == (1, 2, (namespace,))
        assert info.ttl == 3000
        assert worker.started_at is not None and info.started_at == worker.started_at
        assert info.last_seen >= info.started_at - 1000  # Redis stamps by its own clock
        data = info.to_dict()
        assert data["running"] == [[message.message_id, "hold"]]
        assert WorkerInfo.from_dict(data) == info
    finally:
        release.set()
    broker.join(namespace)
    worker.join(int(DEADLINE * 1000))
    beats.wait(2)
    info = find(nbqueue.workers(broker), worker_id=worker.worker_id)
    assert info is not None and info.running == ()

    worker.stop()
    assert find(nbqueue.workers(broker), worker_id=worker.worker_id) is None


@pytest.mark.parametrize("fleet_broker", REAL_BROKERS, indirect=True)
def test_a_worker_process_is_listed_then_removed_at_once_by_a_clean_stop(
    fleet_broker: nbqueue.Broker,
    namespace: str,
    request: pytest.FixtureRequest,
    tmp_path: pathlib.Path,
    worker_factory: Callable[..., Worker],
) -> None:
    broker = fleet_broker
    kind = request.node.callspec.params["fleet_broker"]
    broker.declare_queue(namespace)
    witness = worker_factory(broker, queues=[namespace], heartbeat_ttl=300)
    args = [*cli_args(kind, namespace), "-Q", namespace, "--threads", "3", "--processes", "2"]
    cli = CliWorker(tmp_path, namespace, args).start()
    try:
        # Two worker processes under one supervisor: each publishes its own record.
        def both() -> list[WorkerInfo]:
            return [
                info
                for info in nbqueue.workers(broker)
                if namespace in info.queues and info.id != witness.worker_id
            ]

        assert beats_of(broker).until(lambda: len(both()) == 2, beats=300), both()
        for info in both():
            assert (info.processes, info.threads, info.queues) == (2, 3, (namespace,))
            assert info.host == socket.gethostname() and info.pid != cli.pid
        assert cli.stop() == 0, "".join(cli.lines)
        # No wait: the stop removed both records before the processes exited.
        assert both() == []
        assert find(nbqueue.workers(broker), worker_id=witness.worker_id) is not None
    finally:
        cli.kill()


@pytest.mark.parametrize("fleet_broker", REAL_BROKERS, indirect=True)
def test_the_record_of_a_killed_worker_process_expires_by_its_ttl(
    fleet_broker: nbqueue.Broker,
    namespace: str,
    request: pytest.FixtureRequest,
    tmp_path: pathlib.Path,
    worker_factory: Callable[..., Worker],
) -> None:
    broker = fleet_broker
    kind = request.node.callspec.params["fleet_broker"]
    broker.declare_queue(namespace)
    # The witness beats every 100 ms: its beats are the clock the test waits on.
    witness = worker_factory(broker, queues=[namespace], heartbeat_ttl=300)
    beats = beats_of(broker)
    args = [*cli_args(kind, namespace), "-Q", namespace, "--threads", "2"]
    cli = CliWorker(tmp_path, namespace, [*args, "--heartbeat-ttl", "1500"]).start()
    try:
        assert beats.until(
            lambda: find(nbqueue.workers(broker), pid=cli.pid) is not None, beats=300
        )
        info = find(nbqueue.workers(broker), pid=cli.pid)
        assert info is not None
        assert (info.processes, info.threads, info.queues, info.ttl) == (1, 2, (namespace,), 1500)
    finally:
        cli.kill()  # SIGKILL: no clean stop, the record stays until its ttl passes
    # 1500 ms is 15 witness beats at least; allow 20 times that on a loaded machine.
    assert beats.until(lambda: find(nbqueue.workers(broker), pid=cli.pid) is None, beats=300)
    assert find(nbqueue.workers(broker), worker_id=witness.worker_id) is not None


def test_heartbeat_ttl_and_processes_are_checked(stub_broker: StubBroker) -> None:
    with pytest.raises(ValueError, match="heartbeat_ttl is in milliseconds and must be at least"):
        Worker(stub_broker, heartbeat_ttl=10)
    with pytest.raises(ValueError, match="processes must be at least 1"):
        Worker(stub_broker, processes=0)


def test_workers_of_a_broker_without_a_registry_is_an_error(stub_broker: StubBroker) -> None:
    class Bare(StubBroker):
        def worker_registry(self) -> None:  # type: ignore[override]
            return None

    with pytest.raises(nbqueue.BrokerError, match="keeps no worker registry"):
        nbqueue.workers(Bare())
    assert nbqueue.workers() == []  # the global (stub) broker: no worker started


@pytest.mark.parametrize("heartbeat_ttl, own_thread", [(30000, False), (60000, True)])
def test_the_unknown_actor_rule_refreshes_on_the_worker_heartbeat_when_it_beats_often_enough(
    stub_broker: StubBroker,
    worker_factory: Callable[..., Worker],
    heartbeat_ttl: int,
    own_thread: bool,
) -> None:
    configure_worker(stub_broker, notebook_actors=False, secret=None, queues=None)

    @nbqueue.actor(broker=stub_broker)
    def noop() -> None:
        pass

    worker = worker_factory(stub_broker, heartbeat_ttl=heartbeat_ttl)
    names = {thread.name for thread in threading.enumerate()}
    assert ("nbqueue-remote-heartbeat" in names) is own_thread
    assert "nbqueue-worker-heartbeat" in names
    store = stub_broker.code_store()
    assert store.capable("default", ["noop"], exclude="someone else") == 1
    worker.stop()
    assert store.capable("default", ["noop"], exclude="someone else") == 0
