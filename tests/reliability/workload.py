"""The actors the reliability suite's CLI workers run (``tests.reliability.workload:setup``).

Configured from the environment by ``harness.cli_worker``: ``NBQREL_BROKER_URL``, ``NBQREL_QUEUE``
(also the oracle's key prefix), ``NBQREL_ORACLE_URL``, ``NBQREL_HEARTBEAT_MS``, ``NBQREL_WORK_MS``
and ``NBQREL_CRASH_LIMIT`` (0: no ``CrashLimit``). Every actor takes a logical id first and
appends its execution to the oracle after its work, so an execution is recorded only if it
completed. A ``job`` sent with a ``gate`` works until the test opens that gate.
"""

from __future__ import annotations

import os
import time

import redis

import nbqueue
from nbqueue.middleware import CrashLimit
from tests.reliability.harness import Oracle


def setup() -> None:
    url = os.environ["NBQREL_BROKER_URL"]
    queue = os.environ["NBQREL_QUEUE"]
    work = float(os.environ.get("NBQREL_WORK_MS", "2")) / 1000
    crash_limit = int(os.environ.get("NBQREL_CRASH_LIMIT", "0"))
    oracle = redis.Redis.from_url(os.environ["NBQREL_ORACLE_URL"], socket_timeout=10)
    if url.startswith("redis"):
        from nbqueue.brokers.redis import RedisBroker

        heartbeat = int(os.environ.get("NBQREL_HEARTBEAT_MS", "1000"))
        broker: nbqueue.Broker = RedisBroker(url=url, namespace=queue, heartbeat_timeout=heartbeat)
    else:
        from nbqueue.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=url)
    if crash_limit:
        broker.add_middleware(
            CrashLimit(max_crashes=crash_limit, redis=os.environ.get("NBQREL_CRASH_REDIS"))
        )
    nbqueue.set_broker(broker)

    @nbqueue.actor(queue_name=queue, actor_name="job", broker=broker, max_retries=0)
    def job(i: int, work_ms: float | None = None, gate: int | None = None) -> None:
        started = time.time()
        seconds = work if work_ms is None else work_ms / 1000
        if seconds >= 0.1 or gate is not None:  # long jobs say when they start (A4 waits)
            Oracle.record(oracle, queue, i, started, kind="start")
        if gate is not None:  # runs until the test opens the gate (A4)
            Oracle.wait_at_gate(oracle, queue, gate, 120)
        else:
            time.sleep(seconds)
        Oracle.record(oracle, queue, i, started)

    @nbqueue.actor(queue_name=queue, actor_name="poison", broker=broker, max_retries=0)
    def poison(i: int) -> None:
        Oracle.record(oracle, queue, i, time.time(), kind="death")
        os._exit(1)

    @nbqueue.actor(
        queue_name=queue,
        actor_name="soak",
        broker=broker,
        max_retries=1,
        min_backoff=1,
        max_backoff=10,
    )
    def soak(i: int, kind: str) -> int:
        started = time.time()
        time.sleep(work)
        if kind == "fail":
            Oracle.record(oracle, queue, i, started, kind="failed")
            raise ValueError(f"soak message {i} fails on purpose")
        if kind == "retry" and oracle.incr(f"{queue}:tries:{i}") == 1:
            raise ValueError(f"soak message {i} fails once on purpose")
        Oracle.record(oracle, queue, i, started)
        return i

    oracle.rpush(f"{queue}:booted", os.getpid())
