"""Notebook actors and the unknown-actor rule on the in-memory broker (one process)."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import pytest

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.remote import CODE_OPTION, configure_worker, publish_actor
from nbqueue.remote.signing import seal
from nbqueue.remote.store import store_for

SECRET = b"memory-secret"


def make_source(tmp_path: pathlib.Path, version: int) -> str:
    out = tmp_path / "out.txt"
    return (
        "import os\n"
        f"VERSION = {version}\n"
        "def helper(x):\n"
        "    return x * VERSION\n"
        "def work(x):\n"
        f"    with open({str(out)!r}, 'a') as f:\n"
        "        f.write(f'{VERSION}:{helper(x)}\\n')\n"
    )


def work(x):  # the notebook's own copy; workers run the published source
    raise AssertionError("the local function must not run on the worker")


def test_configure_worker_needs_a_secret_for_notebook_actors(stub_broker):
    with pytest.raises(ValueError, match="NBQUEUE_SECRET"):
        configure_worker(stub_broker, notebook_actors=True, secret=None, queues=None)
    assert configure_worker(stub_broker, notebook_actors=False, secret=None, queues=None) == []


def test_publish_needs_a_secret(stub_broker):
    with pytest.raises(ValueError, match="NBQUEUE_SECRET"):
        publish_actor(work, source="def work(x):\n    pass\n", broker=stub_broker)


def test_publish_checks_the_source_defines_the_function(stub_broker):
    with pytest.raises(ValueError, match="does not define 'work'"):
        publish_actor(work, source="def other():\n    pass\n", broker=stub_broker, secret=SECRET)


def test_messages_run_the_version_they_were_sent_with(tmp_path, worker_factory):
    broker = StubBroker()
    extra = configure_worker(broker, notebook_actors=True, secret=SECRET, queues=None)
    assert extra == ["notebook"]
    v1 = publish_actor(work, source=make_source(tmp_path, 1), broker=broker, secret=SECRET)
    first = v1.send(5)
    v2 = publish_actor(work, source=make_source(tmp_path, 2), broker=broker, secret=SECRET)
    second = v2.send(5)
    assert first.options[CODE_OPTION] == v1.code_hash != v2.code_hash
    assert second.queue_name == "notebook"
    worker_factory(broker, worker_threads=1)
    broker.join("notebook", timeout=10000)
    assert sorted((tmp_path / "out.txt").read_text().split()) == ["1:5", "2:10"]


def test_tampered_code_is_dead_lettered_and_never_runs(tmp_path, worker_factory, caplog):
    broker = StubBroker()
    configure_worker(broker, notebook_actors=True, secret=SECRET, queues=None)
    actor = publish_actor(work, source=make_source(tmp_path, 1), broker=broker, secret=SECRET)
    # An attacker with access to the broker replaces the stored code, signed with a guess.
    store = store_for(broker)
    envelope = store.get(actor.code_hash)
    assert envelope is not None
    evil = make_source(tmp_path, 666)
    from nbqueue.remote.signing import CodeRecord, python_version

    forged = CodeRecord("work", "notebook", 0, {}, "work", evil, python_version(), 1)
    store._code[actor.code_hash] = seal(forged, b"guessed")  # type: ignore[attr-defined]
    actor.send(1)
    with caplog.at_level(logging.ERROR, logger="nbqueue"):
        worker_factory(broker, worker_threads=1)
        broker.join("notebook", timeout=10000, fail_fast=False)
    dead = broker.get_dead_letters("notebook")
    assert [d.reason for d in dead] == ["bad_signature"]
    assert not (tmp_path / "out.txt").exists()
    assert any(
        "Refused notebook actor 'work'" in r.getMessage() and actor.code_hash[:12] in r.getMessage()
        for r in caplog.records
    )
    assert all(SECRET.decode() not in r.getMessage() for r in caplog.records)


def test_a_worker_without_notebook_actors_never_loads_code(tmp_path, worker_factory):
    broker = StubBroker()
    configure_worker(broker, notebook_actors=False, secret=None, queues=None, grace=0)
    actor = publish_actor(work, source=make_source(tmp_path, 1), broker=broker, secret=SECRET)
    # The notebook's declaration lives in this same broker here: forget it, as a remote
    # worker would not have it.
    del broker.actors["work"]
    actor.send(1)
    worker_factory(broker, worker_threads=1)
    broker.join("notebook", timeout=10000, fail_fast=False)
    assert [d.reason for d in broker.get_dead_letters("notebook")] == ["unknown_actor"]
    assert not (tmp_path / "out.txt").exists()


def test_a_cell_that_fails_to_load_is_dead_lettered_with_its_reason(worker_factory):
    broker = StubBroker()
    configure_worker(broker, notebook_actors=True, secret=SECRET, queues=None)
    source = "import nbqueue_no_such_module\ndef work(x):\n    pass\n"
    actor = publish_actor(work, source=source, broker=broker, secret=SECRET)
    actor.send(1)
    worker_factory(broker, worker_threads=1)
    broker.join("notebook", timeout=10000, fail_fast=False)
    assert [d.reason for d in broker.get_dead_letters("notebook")] == ["load_failed"]


def test_the_loaded_version_does_not_replace_an_actor_declared_by_name(tmp_path, worker_factory):
    broker = StubBroker()
    configure_worker(broker, notebook_actors=True, secret=SECRET, queues=None)
    actor = publish_actor(work, source=make_source(tmp_path, 1), broker=broker, secret=SECRET)
    declared = broker.actors["work"]
    actor.send(1)
    worker_factory(broker, worker_threads=1)
    broker.join("notebook", timeout=10000)
    assert broker.actors["work"] is declared
    assert (tmp_path / "out.txt").read_text() == "1:1\n"


def test_nbqueue_exports_publish_actor():
    assert nbqueue.publish_actor is publish_actor


def test_published_options_apply_on_the_worker(tmp_path, worker_factory):
    broker = StubBroker()
    configure_worker(broker, notebook_actors=True, secret=SECRET, queues=None)
    out = tmp_path / "runs.txt"
    source = (
        "def flaky():\n"
        f"    with open({str(out)!r}, 'a') as f:\n"
        "        f.write('run\\n')\n"
        "    raise RuntimeError('always')\n"
    )

    def flaky():
        pass

    actor = publish_actor(
        flaky,
        source=source,
        broker=broker,
        secret=SECRET,
        max_retries=2,
        min_backoff=1,
        max_backoff=1,
    )
    del broker.actors["flaky"]  # the worker knows it only from the store
    actor.send()
    worker_factory(broker, worker_threads=1)
    broker.join("notebook", timeout=10000, fail_fast=False)
    assert out.read_text().split() == ["run"] * 3
    assert len(broker.get_dead_letters("notebook")) == 1


def test_each_version_runs_with_its_own_options(tmp_path, worker_factory):
    broker = StubBroker()
    configure_worker(broker, notebook_actors=True, secret=SECRET, queues=None)
    out = tmp_path / "runs.txt"

    def flaky():
        pass

    def source(tag):
        return (
            "def flaky():\n"
            f"    with open({str(out)!r}, 'a') as f:\n"
            f"        f.write('{tag}\\n')\n"
            "    raise RuntimeError('always')\n"
        )

    options: dict[str, Any] = {
        "broker": broker,
        "secret": SECRET,
        "min_backoff": 1,
        "max_backoff": 1,
    }
    v1 = publish_actor(flaky, source=source("v1"), max_retries=0, **options)
    v1.send()
    v2 = publish_actor(flaky, source=source("v2"), max_retries=2, **options)
    v2.send()
    del broker.actors["flaky"]  # the worker knows both only from the store
    worker_factory(broker, worker_threads=1)
    broker.join("notebook", timeout=10000, fail_fast=False)
    assert sorted(out.read_text().split()) == ["v1"] + ["v2"] * 3
    assert len(broker.get_dead_letters("notebook")) == 2
