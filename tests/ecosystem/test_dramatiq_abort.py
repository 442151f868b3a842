"""dramatiq-abort (``Abortable`` middleware, Redis event backend) on an nbqueue ``RedisBroker``.

``abort(message_id)`` interrupts a running actor with dramatiq-abort's own ``Abort`` (through
``dramatiq.middleware.threading.raise_thread_exception``, which is nbqueue's), and the
``CANCEL`` mode makes a worker skip a message that has not started.
"""

from __future__ import annotations

import json

import pytest

from tests.ecosystem._run import run_python

pytest.importorskip("dramatiq_abort")
redis = pytest.importorskip("redis")

pytestmark = pytest.mark.redis

SCRIPT = """
import json
import sys
import threading
import time

import nbqueue
if sys.argv[3:] != ["--without-alias"]:
    nbqueue.install_as_dramatiq()

from nbqueue.brokers.redis import RedisBroker
from dramatiq_abort import Abort, Abortable, abort
from dramatiq_abort.backends import RedisBackend
from dramatiq_abort.middleware import AbortMode

url, namespace = sys.argv[1:3]
broker = RedisBroker(url=url, namespace=namespace)
broker.add_middleware(Abortable(backend=RedisBackend.from_url(url, namespace=namespace + ":aborts:")))
nbqueue.set_broker(broker)
started = threading.Event()
outcome = []


@nbqueue.actor(max_retries=0)
def crunch():
    started.set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)
        outcome.append("crunch finished")
    except Abort:
        outcome.append("crunch aborted")
        raise


@nbqueue.actor
def never():
    outcome.append("never ran")


cancelled = never.send()
abort(cancelled.message_id, mode=AbortMode.CANCEL)
running = crunch.send()
worker = nbqueue.Worker(broker, worker_timeout=100, worker_threads=2)
worker.start()
if started.wait(60):
    abort(running.message_id)
    broker.join(crunch.queue_name, timeout=60000)
worker.join()
worker.stop()
print(json.dumps({"outcome": outcome, "dead": broker.client.zcard(namespace + ":default.XQ")}))
"""


@pytest.fixture
def redis_namespace(redis_url: str, namespace: str):
    yield namespace
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _run(redis_url: str, namespace: str, *flags: str):
    args = [redis_url, namespace, *flags]
    return run_python(f"import sys; sys.argv[1:] = {args!r}\n" + SCRIPT, timeout=120)


def test_a_running_actor_is_aborted_and_a_queued_one_cancelled(redis_url, redis_namespace):
    result = _run(redis_url, redis_namespace)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["outcome"] == ["crunch aborted"]  # and `never` was skipped
    assert out["dead"] == 1  # the aborted message is dead-lettered (max_retries=0)
    assert "dramatiq_abort.abort_manager.Abort" in result.stderr


def test_without_the_alias_the_abortable_middleware_is_not_nbqueues(redis_url, redis_namespace):
    """The control: dramatiq-abort then looks for its middleware on the real Dramatiq's global
    broker, not on nbqueue's."""
    result = _run(redis_url, redis_namespace, "--without-alias")
    assert result.returncode != 0
    assert "The default broker doesn't have an abortable backend." in result.stderr
