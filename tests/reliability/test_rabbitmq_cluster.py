"""A real three-node RabbitMQ cluster with quorum queues: the node leading the queue is killed
(-9) while two producers send confirmed messages and two CLI workers consume them.

The nodes are private (``nbq5701@localhost`` ... on AMQP ports 5701-5703 and distribution ports
25701-25703, no plugins), clustered with ``rabbitmqctl join_cluster``; every client reaches them
through nbqueue's URL list, in two orders, so one producer and one worker lose their connection
at the kill and the others keep theirs while the queue elects a new leader.

Asserted: no acknowledged send is lost (each one ran at least once) and both workers carry on
on the survivors. Measured and recorded (never asserted): the pause in processing, the node
startup and cluster formation times, duplicates and sends whose outcome was unknown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import nbqueue
from nbqueue.brokers.rabbitmq import RabbitmqBroker
from nbqueue.errors import BrokerError, PublishOutcomeUnknown
from tests.brokers._rabbitmq import PrivateRabbit
from tests.reliability import harness

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(300)]

#: The private ports of this test (AMQP; Erlang distribution is 20000 higher).
PORTS = (5701, 5702, 5703)


def _in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def cluster(record: harness.Record) -> Iterator[list[PrivateRabbit]]:
    """Three private nodes, clustered; killed by their pid files and removed at teardown."""
    busy = [p for p in PORTS if _in_use(p) or _in_use(p + 20000)]
    assert not busy, f"ports {busy} are taken; stop whatever listens there (a stale test node?)"
    nodes = [PrivateRabbit(name=f"nbq{p}", port=p, dist_port=p + 20000) for p in PORTS]
    errors: list[BaseException] = []

    def start(node: PrivateRabbit) -> None:
        try:
            node.start(timeout=120)
        except BaseException as e:  # reported below, on the test's thread
            errors.append(e)

    try:
        started = time.monotonic()
        threads = [threading.Thread(target=start, args=(node,)) for node in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        record.figures["nodes_started_s"] = round(time.monotonic() - started, 1)
        joined = time.monotonic()
        for node in nodes[1:]:
            # Each command returns once done (start_app once the node runs in the cluster).
            node.ctl("stop_app")
            node.ctl("join_cluster", nodes[0].node)
            node.ctl("start_app")
        record.figures["cluster_joined_s"] = round(time.monotonic() - joined, 1)
        status = json.loads(nodes[0].ctl("cluster_status", "--formatter", "json"))
        assert sorted(status["running_nodes"]) == sorted(n.node for n in nodes), status
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def url_list(nodes: list[PrivateRabbit], first: int) -> str:
    """The nodes' URLs starting at ``nodes[first]``, quorum queues chosen in the query."""
    order = nodes[first:] + nodes[:first]
    return ";".join(f"{n.url}?queue_type=quorum" for n in order)


def start_worker(urls: str, queue: str, oracle_url: str) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NBQUEUE_", "NBQREL_"))},
        "PYTHONPATH": str(harness.ROOT),
        "NBQREL_QUEUE": queue,
        "NBQREL_ORACLE_URL": oracle_url,
    }
    command = [sys.executable, "-m", "nbqueue", "worker", "tests.reliability.cluster_actors"]
    command += ["--broker", urls, "-Q", queue, "--threads", "4"]
    command += ["--worker-shutdown-timeout", "5000"]
    log = tempfile.NamedTemporaryFile(prefix=f"nbq-worker-{queue}-", suffix=".log", delete=False)
    process = subprocess.Popen(
        command,
        env=env,
        cwd=harness.ROOT,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    process.log_path = log.name  # type: ignore[attr-defined]
    return process


class Progress:
    """The ids the workers finished, read from the oracle's ``<queue>:done`` list by a thread
    that blocks on it (BLPOP), so the test waits on a condition, never polls."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.key = f"{queue}:done"
        self.done: list[tuple[int, float]] = []
        self.pids: dict[int, float] = {}  # worker process -> when it last finished one
        self.cond = threading.Condition()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stopped.is_set():
            item: Any = self.client.blpop([self.key], timeout=1)
            if item is None:
                continue
            i, at, pid = item[1].decode().split()
            with self.cond:
                self.done.append((int(i), float(at)))
                self.pids[int(pid)] = float(at)
                self.cond.notify_all()

    def wait(self, predicate: Callable[[list[tuple[int, float]]], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.done), timeout)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)


class Producer:
    """Confirmed sends one at a time from a broker of its own; ids ``start``, ``start + 2``..."""

    def __init__(self, urls: str, queue: str, start: int, log: harness.ProducerLog) -> None:
        self.broker = RabbitmqBroker(url=urls)
        self.broker.emit_after("process_boot")
        self.log = log
        self.confirmed: dict[int, float] = {}  # id -> wall-clock time its send returned
        self.stop = threading.Event()

        def job(i: int) -> None:
            raise AssertionError("the CLI workers run this actor, not the test")

        self.actor = nbqueue.actor(queue_name=queue, actor_name="job", broker=self.broker)(job)
        self.next_id = start
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            i, self.next_id = self.next_id, self.next_id + 2
            try:
                self.actor.send(i)
            except PublishOutcomeUnknown as e:
                self.log.unknown(i, e)
            except BrokerError as e:
                self.log.fail(i, e)
                self.stop.wait(0.05)
            else:
                self.confirmed[i] = time.time()
                self.log.ok([i])
            self.stop.wait(0.004)  # paced: the workers keep up and the machine stays usable

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.broker.close()


def leader(node: PrivateRabbit, queue: str) -> str:
    rows = json.loads(node.ctl("list_queues", "name", "leader", "--formatter", "json"))
    return str(next(row["leader"] for row in rows if row["name"] == queue))


def test_killing_the_quorum_leader_loses_no_confirmed_send_and_workers_resume(
    cluster: list[PrivateRabbit], oracle: harness.Oracle, namespace: str, record: harness.Record
) -> None:
    queue = namespace
    record.plan_id, record.broker = "cluster-leader-kill", "rabbitmq (3-node cluster, quorum)"
    record.settings = {"nodes": 3, "producers": 2, "workers": "2 CLI x 4 threads", "kill": "-9"}
    by_node = {node.node: node for node in cluster}
    declarer = RabbitmqBroker(url=url_list(cluster, 0))
    declarer.declare_queue(queue, ensure=True)  # after the cluster formed: three members
    declarer.close()
    assert declarer.queue_type == "quorum"
    progress = Progress(oracle.client, queue)
    workers = [start_worker(url_list(cluster, k), queue, oracle.url) for k in (0, 1)]
    log = harness.ProducerLog()
    producers: list[Producer] = []
    try:
        for _ in workers:
            assert oracle.client.blpop([f"{queue}:booted"], timeout=60) is not None, [
                harness.worker_log(w) for w in workers
            ]
        producers = [Producer(url_list(cluster, k), queue, k, log) for k in (0, 1)]
        assert progress.wait(lambda done: len(done) >= 300, 90), "no steady flow before the kill"

        victim = by_node[leader(cluster[0], queue)]
        killed_at = time.time()
        victim.kill_beam()
        survivors = [node for node in cluster if node is not victim]

        def resumed(done: list[tuple[int, float]]) -> bool:
            after = [i for i, at in done if at > killed_at]
            sent_after = [
                i for i in after if max(p.confirmed.get(i, 0) for p in producers) > killed_at
            ]
            # Both workers: the one whose node was killed reconnects to a survivor, which a
            # loaded machine can take a while to do; the other one runs meanwhile.
            running = [pid for pid, at in progress.pids.items() if at > killed_at]
            return len(after) >= 300 and len(sent_after) >= 100 and len(running) >= 2

        assert progress.wait(resumed, 120), (
            "processing did not resume on the survivors",
            [harness.worker_log(w)[-3000:] for w in workers],
        )
        for producer in producers:
            producer.close()
        acknowledged = log.acknowledged
        assert progress.wait(lambda done: acknowledged <= {i for i, _ in done}, 90), (
            f"{len(acknowledged - {i for i, _ in progress.done})} acknowledged sends never ran"
        )
        new_leader = leader(survivors[0], queue)
    finally:
        for producer in producers:
            producer.close()
        for worker in workers:
            harness.kill_group(worker, signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                harness.kill_group(worker)
                worker.wait(10)
        progress.stop()

    executions = oracle.executions(queue)
    accounting = harness.check(log, executions)
    record.n, record.accounting = accounting.attempted, accounting
    times = sorted(at for _, at in progress.done)
    before = [at for at in times if at <= killed_at]
    after = [at for at in times if at > killed_at]
    confirmed_after = {i for p in producers for i, at in p.confirmed.items() if at > killed_at}
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b > killed_at]
    pids_after = {e.pid for e in executions if e.t_end > killed_at}
    # Per worker process: its last execution ending before the kill to its first after.
    per_worker = {}
    for pid in sorted({e.pid for e in executions}):
        ends = sorted(e.t_end for e in executions if e.pid == pid)
        last = max((t for t in ends if t <= killed_at), default=None)
        first = min((t for t in ends if t > killed_at), default=None)
        if last is not None and first is not None:
            per_worker[pid] = round(first - last, 3)
    record.figures.update(
        {
            "killed": f"{victim.node} (the queue's leader)",
            "new_leader": new_leader,
            "pause_last_before_to_first_after_s": round(after[0] - before[-1], 3),
            "longest_gap_after_kill_s": round(max(gaps), 3),
            "pause_per_worker_process_s": per_worker,
            "kill_to_first_send_after_kill_processed_s": round(
                min(at for i, at in progress.done if i in confirmed_after) - killed_at, 3
            ),
            "raised": dict(log.raised),
            "unknown": sum(1 for o in log.outcomes.values() if o == "unknown"),
        }
    )
    print(f"\ncluster figures: {record.figures}; accounting: {accounting}")
    assert all("(quorum queues)" in harness.worker_log(w) for w in workers)
    record.bar("lost == 0", accounting.lost == 0)
    record.bar("unexpected == 0", accounting.unexpected == 0)
    record.bar("both workers ran messages after the kill", len(pids_after) >= 2)
    record.bar("the new leader is a survivor", new_leader in {n.node for n in survivors})
    record.check_bars()
    oracle.clear(queue)
    oracle.client.delete(f"{queue}:done", f"{queue}:booted")
