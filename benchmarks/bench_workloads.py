"""The workloads, run inside one benchmark child per implementation.

Each returns lists of samples; the parent merges the lists of every child of an implementation
and computes the figures. Times come from ``time.perf_counter``, CPU from ``resource.getrusage``
(user + system, all threads of the process; the CLI's from its reaped children).
"""

from __future__ import annotations

import gc
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rss_growth
from bench_adapters import SPEC_ENV, WORKER_THREADS, Adapter, Target, library_of

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

Samples = dict[str, list[float]]

#: Workloads, in the order they run; ``cli`` needs a broker other processes can reach, and
#: ``growth`` (memory growth, issue #15) runs on the embedded broker only, in a child of its own.
WORKLOADS = ("send", "bulk", "process", "cli", "roundtrip", "idle", "growth")
GROWTH = "growth"
CLI_PROCESSES = 2
CLI_POLL_S = 0.02


@dataclass(frozen=True)
class Config:
    """Sizes of the workloads; ``quick`` shrinks them for a smoke run."""

    messages: int  # send, bulk, in-process and CLI processing
    roundtrips: int
    roundtrip_budget_s: float  # stop the round trips after this long
    idle_s: float
    warmup: int
    cli_timeout_s: float
    growth_messages: int  # memory growth: messages in all; RSS is first sampled after 10,000

    @classmethod
    def make(
        cls, quick: bool, messages: int | None = None, growth_messages: int | None = None
    ) -> Config:
        """Return the full or the quick configuration."""
        if quick:
            return cls(messages or 2000, 100, 2.0, 3.0, 200, 60.0, growth_messages or 30_000)
        return cls(messages or 20000, 1000, 20.0, 10.0, 1000, 300.0, growth_messages or 1_000_000)


@dataclass(frozen=True)
class Context:
    """What a workload needs: the implementation, where it runs and the sizes."""

    impl: str
    target: Target
    config: Config

    def make(self) -> Adapter:
        return Adapter(self.impl, self.target)


def cpu_seconds() -> float:
    """Return user + system CPU time of this process, all threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    """Return user + system CPU time of the reaped child processes (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """Return the peak resident set size of this process in MiB (ru_maxrss is KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


def _enqueue_untimed(adapter: Adapter, count: int) -> None:
    """Queue ``count`` no-op messages outside any timed window (profile summaries leave it out).

    Uses the bulk path, so that pre-loading Redis or RabbitMQ does not dominate the run, and
    waits for the sends' background work (``Adapter.settle``) before it returns.
    """
    adapter.send_bulk(count)
    adapter.settle()


def send_rate(ctx: Context) -> Samples:
    """Messages sent per second from one thread with ``actor.send()``, no worker running."""
    adapter = ctx.make()
    try:
        send = adapter.noop.send
        for i in range(ctx.config.warmup):
            send(i)
        adapter.settle()
        adapter.flush()
        n = ctx.config.messages
        gc.collect()
        start = time.perf_counter()
        for i in range(n):
            send(i)
        adapter.settle()  # the status writes that trail the sends are part of sending
        elapsed = time.perf_counter() - start
        adapter.flush()
    finally:
        adapter.close()
    return {"send_rate": [n / elapsed]}


def bulk_rate(ctx: Context) -> Samples:
    """Messages sent per second through each library's bulk path (``Adapter.send_bulk``)."""
    adapter = ctx.make()
    try:
        adapter.send_bulk(ctx.config.warmup)
        adapter.settle()
        adapter.flush()
        n = ctx.config.messages
        gc.collect()
        start = time.perf_counter()
        _timed_bulk(adapter, n)
        elapsed = time.perf_counter() - start
        adapter.flush()
    finally:
        adapter.close()
    return {"bulk_rate": [n / elapsed]}


def _timed_bulk(adapter: Adapter, count: int) -> None:
    adapter.send_bulk(count)
    adapter.settle()


PROCESS_KEYS = (
    "process_rate",
    "cpu_us_per_message",
    "user_us_per_message",
    "sys_us_per_message",
    "voluntary_switches_per_message",
    "involuntary_switches_per_message",
)


def processing(ctx: Context) -> Samples:
    """Drain N queued no-op messages with a fresh in-process worker (8 threads); CPU per message.

    The timed window starts just before ``worker.start()`` and ends when the broker's ``join``
    returns; stopping the worker is not timed. Each drain gets a fresh broker, because a stopped
    Dramatiq worker leaves its middleware on the broker.
    """

    def drain(count: int) -> tuple[float, resource.struct_rusage, resource.struct_rusage]:
        adapter = ctx.make()
        try:
            _enqueue_untimed(adapter, count)
            gc.collect()
            worker = adapter.worker()
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            worker.start()
            adapter.join(ctx.target.queue)
            elapsed = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            worker.stop()
        finally:
            adapter.close()
        return elapsed, before, after

    drain(ctx.config.warmup)
    n = ctx.config.messages
    elapsed, before, after = drain(n)
    user = (after.ru_utime - before.ru_utime) / n * 1e6
    system = (after.ru_stime - before.ru_stime) / n * 1e6
    return {
        "process_rate": [n / elapsed],
        "cpu_us_per_message": [user + system],
        "user_us_per_message": [user],
        "sys_us_per_message": [system],
        "voluntary_switches_per_message": [(after.ru_nvcsw - before.ru_nvcsw) / n],
        "involuntary_switches_per_message": [(after.ru_nivcsw - before.ru_nivcsw) / n],
    }


def cli_command(impl: str, queue: str) -> list[str]:
    """Return the command line of the CLI worker: 2 processes x 8 threads on ``queue``."""
    processes, threads = str(CLI_PROCESSES), str(WORKER_THREADS)
    if library_of(impl) == "nbqueue":
        return [sys.executable, "-m", "nbqueue", "worker", "bench_app",
                "--processes", processes, "--threads", threads, "--queues", queue]  # fmt: skip
    return [sys.executable, "-m", "dramatiq", "bench_app",
            "--processes", processes, "--threads", threads, "--queues", queue]  # fmt: skip


def cli_environment(impl: str, target: Target) -> dict[str, str]:
    """Return the CLI's environment: no broker settings of the caller, the spec, the path."""
    import json

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NBQUEUE_", "DRAMATIQ_", "dramatiq_"))
    }
    env[SPEC_ENV] = json.dumps({"impl": impl, "target": json.loads(target.to_json())})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(REPO), env.get("PYTHONPATH")]))
    return env


def cli_processing(ctx: Context) -> Samples:
    """Drain N queued no-op messages with the CLI (2 processes x 8 threads), boot included.

    The clock starts when the CLI is started and stops when the queue, polled through the
    library's broker API every 20 ms, is empty; ``cli_boot_s`` is when the first message left
    the queue. The CLI is then stopped with SIGTERM (not timed); ``cli_cpu_us_per_message`` is
    the CPU the CLI's processes used in all, boot and shutdown included, divided by N.
    """
    adapter = ctx.make()
    n, queue = ctx.config.messages, ctx.target.queue
    try:
        _enqueue_untimed(adapter, n)
        deadline = time.monotonic() + 30
        while adapter.pending(queue) < n:  # e.g. unconfirmed publishes still on their way
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {adapter.pending(queue)} of {n} messages were queued")
            time.sleep(CLI_POLL_S)
        with tempfile.TemporaryFile() as log:
            cpu0, boot = children_cpu_seconds(), None
            start = time.perf_counter()
            proc = subprocess.Popen(
                cli_command(ctx.impl, queue),
                env=cli_environment(ctx.impl, ctx.target),
                cwd=HERE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                while True:
                    left = adapter.pending(queue)
                    now = time.perf_counter()
                    if boot is None and left < n:
                        boot = now - start
                    if left == 0:
                        break
                    if proc.poll() is not None or now - start > ctx.config.cli_timeout_s:
                        log.seek(0)
                        tail = log.read().decode(errors="replace").strip().splitlines()[-15:]
                        state = (
                            f"exited with {proc.returncode}"
                            if proc.returncode is not None
                            else "timed out"
                        )
                        raise RuntimeError(
                            f"the CLI {state} with {left} of {n} messages left:\n" + "\n".join(tail)
                        )
                    time.sleep(CLI_POLL_S)
                elapsed = now - start
            finally:
                _stop(proc)
            cpu = children_cpu_seconds() - cpu0
    finally:
        adapter.close()
    boot = boot if boot is not None else elapsed
    return {
        "cli_rate": [n / elapsed],
        "cli_boot_s": [boot],
        "cli_rate_after_boot": [n / max(elapsed - boot, 1e-6)],
        "cli_cpu_us_per_message": [cpu / n * 1e6],
    }


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the CLI this child started: SIGTERM, then SIGKILL to its own process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def roundtrip(ctx: Context) -> Samples:
    """Send one message and block on its result, sequentially, with a worker running."""
    adapter = ctx.make()
    worker = adapter.worker()
    worker.start()
    try:
        send, backend = adapter.echo.send, adapter.backend

        def once(i: int) -> float:
            start = time.perf_counter()
            result = send(i).get_result(backend=backend, block=True, timeout=10000)
            elapsed = time.perf_counter() - start
            if result != i:
                raise AssertionError(f"round trip returned {result!r}, expected {i!r}")
            return elapsed * 1000

        for i in range(max(5, ctx.config.roundtrips // 50)):
            once(i)
        latencies: list[float] = []
        deadline = time.perf_counter() + ctx.config.roundtrip_budget_s
        for i in range(ctx.config.roundtrips):
            latencies.append(once(i))
            if time.perf_counter() > deadline:
                break
    finally:
        worker.stop()
        adapter.close()
    return {"rt_ms": latencies}


def idle(ctx: Context) -> Samples:
    """CPU used by a started 8-thread worker with nothing to do, in % of one core."""
    adapter = ctx.make()
    worker = adapter.worker()
    worker.start()
    try:
        time.sleep(0.5)  # let the threads boot (a benchmark, not a test)
        cpu0, start = cpu_seconds(), time.perf_counter()
        time.sleep(ctx.config.idle_s)
        cpu, elapsed = cpu_seconds() - cpu0, time.perf_counter() - start
        threads = threading.active_count()
    finally:
        worker.stop()
        adapter.close()
    return {"idle_cpu_pct": [cpu / elapsed * 100], "idle_threads": [threads]}


def growth_detail(ctx: Context) -> dict[str, Any]:
    """Run ``rss_growth.measure`` (memory growth, see that module) for this child's library.

    The growth child builds its own broker as ``rss_growth`` does (``nbqueue.get_broker()`` for
    nbqueue; no ``Results`` for nbqueue-matched and Dramatiq), not the ``Adapter``'s.
    """
    messages = ctx.config.growth_messages
    first = min(rss_growth.FIRST_SAMPLE, messages)
    return rss_growth.measure(ctx.impl, messages, first, rss_growth.BATCH)


def growth_samples(detail: dict[str, Any]) -> Samples:
    """Return the figures of a ``growth_detail`` result as samples (the curve as two lists)."""
    return {
        "growth_messages": [detail["messages"]],
        "growth_first": [detail["first"]],
        "growth_rss_start_mib": [detail["rss_start_mib"]],
        "growth_rss_first_mib": [detail["rss_first_mib"]],
        "growth_rss_last_mib": [detail["rss_last_mib"]],
        "growth_ratio": [detail["growth_ratio"]],
        "growth_rate": [detail["rate"]],
        "growth_peak_rss_mib": [detail["peak_rss_mib"]],
        "growth_curve_messages": [n for n, _ in detail["curve"]],
        "growth_curve_rss_mib": [r for _, r in detail["curve"]],
    }


def growth(ctx: Context) -> Samples:
    """Memory growth: RSS after 10,000 and after N no-op messages (``rss_growth``)."""
    return growth_samples(growth_detail(ctx))


WORKLOAD_FUNCS: dict[str, Callable[[Context], Samples]] = {
    "send": send_rate,
    "bulk": bulk_rate,
    "process": processing,
    "cli": cli_processing,
    "roundtrip": roundtrip,
    "idle": idle,
    "growth": growth,
}


def applicable(workload: str, broker: str) -> bool:
    """Whether a workload makes sense on a broker (CLI workers cannot share an in-memory one;
    memory growth is about the embedded broker)."""
    if workload == GROWTH:
        return broker == "memory"
    return not (workload == "cli" and broker == "memory")
