"""``nbqueue status``, run as a real subprocess against real servers: the JSON document of a
healthy fleet, exit 5 for a queue nobody serves, exit 3 for a broker that is down or silent."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

import nbqueue
from nbqueue import Worker
from nbqueue.cli import main
from nbqueue.cli.status import StatusCode
from tests._fleet import DEADLINE, run_status
from tests.test_worker_registry import REAL_BROKERS, beats_of, cli_args, fleet_broker

__all__ = ["fleet_broker"]  # the fixture, shared with the registry tests


@pytest.mark.parametrize("fleet_broker", REAL_BROKERS, indirect=True)
def test_status_of_a_healthy_fleet_lists_workers_running_messages_queues_and_dead_letters(
    fleet_broker: nbqueue.Broker,
    namespace: str,
    request: pytest.FixtureRequest,
    worker_factory: Callable[..., Worker],
) -> None:
    broker = fleet_broker
    kind = request.node.callspec.params["fleet_broker"]
    started, release = threading.Event(), threading.Event()

    @nbqueue.actor(broker=broker, queue_name=namespace)
    def hold() -> None:
        started.set()
        release.wait(DEADLINE)

    @nbqueue.actor(broker=broker, queue_name=namespace, max_retries=0)
    def explode() -> None:
        raise RuntimeError("boom")

    worker = worker_factory(broker, queues=[namespace], worker_threads=2, heartbeat_ttl=900)
    try:
        failed = explode.send()
        broker.join(namespace, fail_fast=False)  # type: ignore[call-arg]
        worker.join(int(DEADLINE * 1000))
        running = hold.send()
        assert started.wait(DEADLINE)
        beats_of(broker).wait(2)  # a record published after the actor started

        result = run_status(*cli_args(kind, namespace), "--json", "-Q", namespace)
        assert result.returncode == StatusCode.HEALTHY, result.stderr
        document = json.loads(result.stdout)
        assert (document["healthy"], document["exit_code"], document["unserved"]) == (True, 0, [])
        assert document["schema"] == 1
        [ours] = [w for w in document["workers"] if w["id"] == worker.worker_id]
        assert ours["running"] == [[running.message_id, "hold"]]
        assert (ours["pid"], ours["host"]) == (os.getpid(), socket.gethostname())
        assert (ours["processes"], ours["threads"], ours["queues"]) == (1, 2, [namespace])
        assert ours["last_seen"] >= ours["started_at"] - 1000
        queue = document["queues"][namespace]
        assert (queue["ready"], queue["delayed"], queue["dead"]) == (0, 0, 1)
        assert queue["in_flight"] == (1 if kind == "redis" else None)  # RabbitMQ cannot tell
        assert queue["workers"] == 1
        [letter] = document["dead_letters"][namespace]
        assert (letter["message_id"], letter["actor_name"]) == (failed.message_id, "explode")
        assert letter["reason"]

        result = run_status(*cli_args(kind, namespace), "-Q", namespace)
        assert result.returncode == StatusCode.HEALTHY, result.stderr
        assert f"{worker.worker_id[:8]} runs {running.message_id} (hold)" in result.stdout
        assert f"Dead letters of {namespace!r} (1; the oldest 1):" in result.stdout
        assert f"  {failed.message_id} (explode) " in result.stdout
        assert result.stdout.rstrip().endswith("Healthy.")
    finally:
        release.set()


@pytest.mark.parametrize("fleet_broker", REAL_BROKERS, indirect=True)
def test_status_exits_5_when_a_named_queue_has_no_live_worker(
    fleet_broker: nbqueue.Broker,
    namespace: str,
    request: pytest.FixtureRequest,
    worker_factory: Callable[..., Worker],
) -> None:
    broker = fleet_broker
    kind = request.node.callspec.params["fleet_broker"]
    broker.declare_queue(namespace)
    worker = worker_factory(broker, queues=[namespace], heartbeat_ttl=900)
    beats_of(broker).wait()
    nobody = f"{namespace}-nobody"
    # The broker from NBQUEUE_BROKER_URL, the default of --broker.
    url, *rest = cli_args(kind, namespace)[1:]
    result = run_status(*rest, "--json", "-Q", namespace, nobody, env={"NBQUEUE_BROKER_URL": url})
    assert result.returncode == 5, result.stderr
    document = json.loads(result.stdout)
    assert (document["healthy"], document["exit_code"], document["unserved"]) == (
        False,
        5,
        [nobody],
    )
    assert document["queues"][nobody]["workers"] == 0
    assert document["queues"][namespace]["workers"] == 1
    assert worker.worker_id in [w["id"] for w in document["workers"]]

    result = run_status(*rest, "-Q", nobody, env={"NBQUEUE_BROKER_URL": url})
    assert result.returncode == 5
    assert f"Unhealthy: no live worker consumes {nobody!r} (exit 5)." in result.stdout

    # Without --queues: the queues the live workers consume, and no queue is required.
    result = run_status(*rest, "--json", env={"NBQUEUE_BROKER_URL": url})
    assert result.returncode == StatusCode.HEALTHY, result.stderr
    assert namespace in json.loads(result.stdout)["queues"]


@pytest.mark.parametrize(
    "url",
    ["redis://:pa55-w0rd-x@127.0.0.1:1/15", "amqp://guest:pa55-w0rd-x@127.0.0.1:1/%2F"],
    ids=["redis", "rabbitmq"],
)
def test_an_unreachable_broker_exits_3_with_one_line_and_the_password_hidden(url: str) -> None:
    # Port 1 is closed: the connection is refused at once, well within the default deadline.
    result = run_status("--broker", url, "--json", "-Q", "default")
    assert result.returncode == int(StatusCode.UNREACHABLE) == 3
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("nbqueue status: error: could not reach the broker at ")
    assert "pa55-w0rd-x" not in result.stderr
    assert ":***@127.0.0.1:1" in result.stderr


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that takes connections (the kernel's backlog does) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        yield int(server.getsockname()[1])


def test_a_broker_that_never_answers_exits_3_at_the_deadline(silent_server: int) -> None:
    url = f"redis://:pa55-w0rd-x@127.0.0.1:{silent_server}/0"
    result = run_status("--broker", url, "--timeout", "1")
    assert result.returncode == StatusCode.UNREACHABLE, result.stderr
    assert result.stderr == (
        f"nbqueue status: error: the broker at redis://:***@127.0.0.1:{silent_server}/0 did not "
        f"answer within 1 s; check that its server is running and reachable.\n"
    )


def test_status_without_a_usable_broker_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["status"]) == StatusCode.USAGE
    assert capsys.readouterr().err == (
        "nbqueue status: error: no broker: pass --broker URL or set NBQUEUE_BROKER_URL.\n"
    )
    assert main(["status", "--broker", "memory://"]) == StatusCode.USAGE
    assert "memory:// keeps its workers and queues inside one process" in capsys.readouterr().err
    assert main(["status", "--broker", "amqp://127.0.0.1:1/", "--namespace", "x"]) == 2
    assert "--namespace applies to Redis brokers only" in capsys.readouterr().err
    assert main(["status", "--timeout", "0"]) == StatusCode.USAGE
    assert "must be more than 0" in capsys.readouterr().err


def test_status_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--help"]) == 0
    out = capsys.readouterr().out
    assert "5  a queue named with --queues has no live worker consuming it" in out
    assert "3  the broker could not be reached" in out
