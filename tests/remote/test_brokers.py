"""Notebook actors and the unknown-actor rule on real Redis and RabbitMQ.

Each broker object stands for a process: the notebook publishes through one, each worker
consumes through its own, all on the same server and namespace.
"""

from __future__ import annotations

import logging
import pathlib
import threading
from collections.abc import Callable

import pytest

import nbqueue
from nbqueue.remote import configure_worker, publish_actor
from tests.brokers._redis import wait_until

SECRET = b"broker-test-secret"


def versioned_source(out: pathlib.Path, version: int) -> str:
    return (
        f"VERSION = {version}\n"
        "def work(x):\n"
        f"    with open({str(out)!r}, 'a') as f:\n"
        "        f.write(f'v{VERSION}:{x}\\n')\n"
    )


def work(x):
    raise AssertionError("the notebook's own function must not run on a worker")


def lines(path: pathlib.Path) -> list[str]:
    return sorted(path.read_text().split()) if path.exists() else []


def test_each_message_runs_the_version_it_was_sent_with(
    make_broker: Callable[[], nbqueue.Broker], namespace, worker_factory, tmp_path
):
    out = tmp_path / "out.txt"
    notebook = make_broker()
    v1 = publish_actor(
        work, source=versioned_source(out, 1), queue_name=namespace, broker=notebook, secret=SECRET
    )
    v1.send(1)
    v1.send(2)
    v2 = publish_actor(
        work, source=versioned_source(out, 2), queue_name=namespace, broker=notebook, secret=SECRET
    )
    assert v2.code_hash != v1.code_hash
    v2.send(3)

    remote = make_broker()
    extra = configure_worker(remote, notebook_actors=True, secret=SECRET, queues=[namespace])
    assert extra == [namespace]
    worker_factory(remote, queues=extra)
    wait_until(lambda: len(lines(out)) >= 3, 30, "three runs")
    remote.join(namespace, timeout=10000)
    assert lines(out) == ["v1:1", "v1:2", "v2:3"]
    assert remote.get_dead_letters(namespace) == []


def test_a_worker_with_the_wrong_secret_dead_letters_bad_signature(
    make_broker, namespace, worker_factory, tmp_path, caplog
):
    out = tmp_path / "out.txt"
    notebook = make_broker()
    actor = publish_actor(
        work, source=versioned_source(out, 1), queue_name=namespace, broker=notebook, secret=SECRET
    )
    actor.send(1)
    remote = make_broker()
    queues = configure_worker(
        remote, notebook_actors=True, secret=b"wrong-secret-7f3a", queues=[namespace]
    )
    with caplog.at_level(logging.ERROR, logger="nbqueue"):
        worker_factory(remote, queues=queues)
        wait_until(lambda: remote.get_dead_letters(namespace), 30, "a dead letter")
    dead = remote.get_dead_letters(namespace)
    assert [d.reason for d in dead] == ["bad_signature"]
    assert not out.exists()
    refusals = [
        r.getMessage() for r in caplog.records if "Refused notebook actor" in r.getMessage()
    ]
    assert refusals and "'work'" in refusals[0] and actor.code_hash[:12] in refusals[0]
    assert all("wrong-secret-7f3a" not in r.getMessage() for r in caplog.records)


def _counting(broker: nbqueue.Broker) -> list[bool]:
    """Record what the broker's unknown-actor handler answers."""
    answers: list[bool] = []
    handle = broker.unknown_actor_handlers[-1]

    def counted(message, error):
        answer = handle(message, error)
        answers.append(answer)
        return answer

    broker.unknown_actor_handlers[-1] = counted
    return answers


@pytest.mark.timeout(90)
def test_a_worker_lacking_an_actor_hands_its_messages_to_a_capable_one(
    make_broker, namespace, worker_factory
):
    count = 12
    incapable = make_broker()
    incapable.declare_queue(namespace)
    configure_worker(incapable, notebook_actors=False, secret=None, queues=[namespace])
    handed_on = _counting(incapable)

    capable = make_broker()
    ran: list[int] = []
    lock = threading.Lock()

    @nbqueue.actor(queue_name=namespace, broker=capable, max_retries=0)
    def job(i):
        with lock:
            ran.append(i)

    configure_worker(capable, notebook_actors=False, secret=None, queues=[namespace])
    for i in range(count):
        job.send(i)
    # Only the incapable worker runs at first: within the grace period it hands messages on.
    worker_factory(incapable, queues=[namespace])
    wait_until(lambda: len(handed_on) >= 3, 30, "hand-ons")
    worker_factory(capable, queues=[namespace])
    wait_until(lambda: len(ran) >= count, 60, "every message to run")
    assert sorted(ran) == list(range(count))
    assert all(handed_on)
    assert incapable.get_dead_letters(namespace) == []
    assert capable.get_dead_letters(namespace) == []


def test_with_no_capable_worker_a_message_is_dead_lettered_after_the_grace(
    make_broker, namespace, worker_factory
):
    producer = make_broker()

    @nbqueue.actor(queue_name=namespace, actor_name="nowhere", broker=producer)
    def nowhere():
        pass

    lonely = make_broker()
    lonely.declare_queue(namespace)
    configure_worker(lonely, notebook_actors=False, secret=None, queues=[namespace], grace=500)
    answers = _counting(lonely)
    nowhere.send()
    worker_factory(lonely, queues=[namespace])
    wait_until(lambda: lonely.get_dead_letters(namespace), 30, "a dead letter")
    assert [d.reason for d in lonely.get_dead_letters(namespace)] == ["unknown_actor"]
    assert answers[-1] is False and answers[:-1] == [True] * (len(answers) - 1)
    assert len(answers) >= 2  # handed on during the grace, dead-lettered after it
