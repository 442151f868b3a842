"""The actor the cluster test's CLI workers run: ``nbqueue worker tests.reliability.cluster_actors
--broker <url list>``.

Unlike ``workload``, it builds no broker: the CLI builds it from ``--broker`` (the quorum queue
type in the URL's query), and the actor is declared on that global broker. ``NBQREL_QUEUE`` names
the queue and the oracle's keys, ``NBQREL_ORACLE_URL`` the oracle. Each execution is recorded in
the oracle and its id, time and process pushed to ``<queue>:done``, which the test reads with a blocking pop.
"""

from __future__ import annotations

import os
import time

import redis

import nbqueue
from tests.reliability.harness import Oracle

QUEUE = os.environ["NBQREL_QUEUE"]
_oracle = redis.Redis.from_url(os.environ["NBQREL_ORACLE_URL"], socket_timeout=10)


@nbqueue.actor(queue_name=QUEUE, actor_name="job", max_retries=0)
def job(i: int) -> None:
    started = time.time()
    time.sleep(0.002)
    # Taken before the oracle's record, whose end time is then at or after it: the test's wait
    # on this time never counts an execution as after the kill when the record says before.
    finished = time.time()
    Oracle.record(_oracle, QUEUE, i, started)
    _oracle.rpush(f"{QUEUE}:done", f"{i} {finished:.6f} {os.getpid()}")


_oracle.rpush(f"{QUEUE}:booted", f"{os.getpid()} {type(nbqueue.get_broker()).__name__}")
