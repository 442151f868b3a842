"""Plan A6: a Jupyter kernel running embedded workers is restarted or interrupted.

A real ipykernel (jupyter_client's KernelManager) connects to Redis with a 2 s heartbeat,
declares a long actor and starts 4 embedded worker threads; the test sends the work from outside.
Faults: ``restart_kernel(now=False)`` (graceful: the kernel must stop its workers and requeue
within jupyter_client's 5 s), ``restart_kernel(now=True)`` (kill: what was running comes back
after the heartbeat) and ``interrupt_kernel()`` during a running cell (workers keep going).

The graceful path is checked load-proof: the embedded worker's exit budget fits inside the
first half of jupyter_client's default 5 s (after which it sends SIGTERM), and with a longer
wait the kernel must exit on the shutdown request alone (jupyter_client's shutdown status);
the time it took is a figure.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import nbqueue
from nbqueue.brokers.redis import RedisBroker
from tests.brokers._redis import cleanup
from tests.reliability import harness
from tests.reliability.harness import size

pytest.importorskip("ipykernel")
pytest.importorskip("jupyter_client")

HEARTBEAT = 2000
WORK_S = 3.0
THREADS = 4


def setup_cells(url: str, namespace: str, oracle_url: str) -> list[str]:
    return [
        "%load_ext nbqueue",
        "import os, time, redis, nbqueue\n"
        "from nbqueue.brokers.redis import RedisBroker\n"
        f"broker = RedisBroker(url={url!r}, namespace={namespace!r}, heartbeat_timeout={HEARTBEAT})\n"
        "nbqueue.set_broker(broker)\n"
        f"oracle = redis.Redis.from_url({oracle_url!r})",
        f"@nbqueue.actor(queue_name={namespace!r}, actor_name='job', broker=broker, max_retries=0)\n"
        "def job(i, work_ms=None):\n"
        "    t0 = time.time()\n"
        f"    oracle.rpush({namespace!r} + ':exec', f'{{i}} {{os.getpid()}} {{t0}} {{t0}} start')\n"
        "    deadline = time.monotonic() + (work_ms or 0) / 1000\n"
        "    while time.monotonic() < deadline:\n"
        "        time.sleep(0.02)\n"
        f"    oracle.rpush({namespace!r} + ':exec', f'{{i}} {{os.getpid()}} {{t0}} {{time.time()}} ok')",
        f"%nbqueue worker start --threads {THREADS} --queues {namespace}",
    ]


def run(kc, source: str, timeout: float = 60) -> dict[str, Any]:
    reply = kc.execute_interactive(source, timeout=timeout, output_hook=lambda msg: None)
    assert reply["content"]["status"] == "ok", (source, reply["content"])
    return reply


@pytest.mark.redis
@pytest.mark.timeout(900)
def test_a6_kernel_restart_and_interrupt_with_embedded_workers_lose_nothing(
    redis_url, namespace, oracle, record
):
    from jupyter_client.manager import KernelManager, _ShutdownStatus

    from nbqueue.notebook.embedded import EXIT_TIMEOUT

    cycles = size(2, 10)
    default_wait = KernelManager.shutdown_wait_time.default_value
    record.plan_id, record.broker = "A6", "redis"
    record.settings = {
        "heartbeat_ms": HEARTBEAT,
        "threads": THREADS,
        "work_s": WORK_S,
        "cycles_each": cycles,
        "shutdown_wait_time_s": 40,
        "exit_timeout_ms": EXIT_TIMEOUT,
    }
    broker = RedisBroker(url=redis_url, namespace=namespace, heartbeat_timeout=HEARTBEAT)
    broker.declare_queue(namespace)
    log = harness.ProducerLog()

    @nbqueue.actor(queue_name=namespace, actor_name="job", broker=broker, max_retries=0)
    def job(i, work_ms=None):
        pass

    km = KernelManager(kernel_name="python3")
    km.shutdown_wait_time = 40  # SIGTERM after 20 s: a graceful exit needs neither signal
    km.start_kernel(cwd=str(harness.ROOT))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    graceful_s, graceful_no_signal, kill_faults, interrupt_ok = [], [], [], []
    next_id = 0

    def start_workers():
        for cell in setup_cells(redis_url, namespace, oracle.url):
            run(kc, cell)

    def send_and_wait_running(n=THREADS * 2):
        nonlocal next_id
        ids = set(range(next_id, next_id + n))
        next_id += n
        job.send_many((i, WORK_S * 1000) for i in ids)
        log.ok(ids)
        harness.wait_for(
            lambda: (
                len(ids & {e.id for e in oracle.executions(namespace, kind="start")}) >= THREADS
            ),
            30,
            "4 jobs to run in the kernel",
        )
        return ids

    try:
        start_workers()
        for _ in range(cycles):
            send_and_wait_running()
            started = time.monotonic()
            km.restart_kernel(now=False)
            graceful_s.append(time.monotonic() - started)
            graceful_no_signal.append(km._shutdown_status is _ShutdownStatus.ShutdownRequest)
            kc.wait_for_ready(timeout=60)
            start_workers()

            ids = send_and_wait_running()
            at = time.time()
            km.restart_kernel(now=True)
            # the orphans whose redelivery is timed: those running at the kill (the others
            # waited in the queue behind them anyway)
            ran = {e.id for e in oracle.executions(namespace, kind="start")}
            finished = {e.id for e in oracle.executions(namespace)}
            kill_faults.append((at, (ids & ran) - finished))
            kc.wait_for_ready(timeout=60)
            start_workers()

            ids = send_and_wait_running()
            cells = int(oracle.client.llen(f"{namespace}:cell"))
            msg_id = kc.execute(f"oracle.rpush({namespace!r} + ':cell', 1); time.sleep(30)")
            # interrupt once the cell runs (it says so), however long the kernel takes to start it
            harness.wait_for(
                lambda n=cells: int(oracle.client.llen(f"{namespace}:cell")) > n,
                30,
                "the cell to run",
            )
            km.interrupt_kernel()
            reply = kc.get_shell_msg(timeout=20)
            while reply["parent_header"].get("msg_id") != msg_id:
                reply = kc.get_shell_msg(timeout=20)
            interrupted = reply["content"].get("ename") == "KeyboardInterrupt"
            # the workers were not stopped: what they ran finishes without a restart
            harness.wait_for(
                lambda i=ids: i <= {e.id for e in oracle.executions(namespace)},
                30,
                "the interrupted kernel's workers to finish their jobs",
            )
            interrupt_ok.append(interrupted)
        try:
            harness.wait_for(
                lambda: log.acknowledged <= {e.id for e in oracle.executions(namespace)},
                60,
                "every message to run",
                interval=0.2,
            )
        except AssertionError:  # the accounting below reports what was lost, and where it is
            pass
        stuck = broker.queue_stats()[namespace]
        dead = harness.dead_letters(broker, namespace)
        errors = [d.error for d in broker.get_dead_letters(namespace)]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        broker.close()
        cleanup(broker, namespace)
    acct = harness.check(log, oracle.executions(namespace), dead=dead, faults=kill_faults)
    record.n = acct.attempted
    record.accounting = acct
    record.figures = {
        "queue_at_end": str(stuck),
        "dead_letters": dead,
        "dead_letter_errors": [str(e)[:300] for e in errors],
        "note": "latency: kernel kill -> first re-run of a job that was running, including the "
        "kernel restart and re-running the setup cells (no pass bar in the plan)",
        "graceful_restart_s": [round(s, 2) for s in graceful_s],
        "plan_bar_held: graceful restart < 5 s": max(graceful_s) < 5,
        "interrupt_raised_keyboardinterrupt": interrupt_ok,
    }
    record.bar("lost == 0", acct.lost == 0)
    record.bar("nothing dead-lettered by a restart or an interrupt", not dead)
    record.bar(
        "graceful restart needs no kill: the exit budget fits in jupyter's default wait, and "
        "the kernel exits on the shutdown request alone (no SIGTERM, no SIGKILL)",
        EXIT_TIMEOUT / 1000 < default_wait / 2 and all(graceful_no_signal),
    )
    record.bar("interrupt stops the cell, not the workers", all(interrupt_ok))
    record.bar(
        f"duplicated <= in-flight of the killed kernels ({len(kill_faults) * THREADS * 2})",
        acct.duplicated <= len(kill_faults) * THREADS * 2,
    )
    record.check_bars()
