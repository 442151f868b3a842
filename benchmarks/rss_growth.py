"""Memory growth (issue #15): the RSS of a process after 10,000 and after N no-op messages.

The workload is what a user writes: ``@nbqueue.actor def noop(i): pass`` on the default embedded
broker (``nbqueue.get_broker()`` with nothing configured: ``Results`` on a ``StubBackend`` with
its retention limits, and ``Live``), an 8-thread ``Worker`` running, and the messages sent in
batches with ``noop.send_many(...)`` (10,000 at a time; after each batch ``broker.join(queue)``
waits until it is done), the returned messages dropped. After the first 10,000 messages and
after all N (and at every tenth of N in between) the garbage collector runs and the current
RSS of the process is read (``/proc/self/statm``, else psutil; not ``ru_maxrss``, a peak).
The goal of the issue: RSS after 1,000,000 <= 1.5 x RSS after 10,000.

Usage::

    python benchmarks/rss_growth.py --messages 1000000                 # nbqueue
    python benchmarks/rss_growth.py --messages 1000000 --impl all      # each in its own process
    python benchmarks/rss_growth.py --impl dramatiq --json out.json

Implementations: ``nbqueue`` (above), ``nbqueue-matched`` (``StubBroker()`` with its default
middleware, no results, as Dramatiq is by default) and ``dramatiq`` (Dramatiq's ``StubBroker``
with its default middleware, no results; Dramatiq has no bulk send, so a batch is
``noop.send(i)`` in a loop). One implementation per process: ``--impl all`` starts one child per
implementation, one after the other. ``bench.py --only growth`` runs the same function.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

IMPLEMENTATIONS = ("nbqueue", "nbqueue-matched", "dramatiq")
WORKER_THREADS = 8
#: Both libraries' default ``worker_timeout`` (ms), passed explicitly.
WORKER_TIMEOUT_MS = 1000
DEFAULT_MESSAGES = 1_000_000
FIRST_SAMPLE = 10_000
BATCH = 10_000
GOAL_RATIO = 1.5
MIB = 1024 * 1024


def current_rss_mib() -> float:
    """Return the resident set size of this process now, in MiB."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / MIB
    except OSError:
        import importlib

        psutil: Any = importlib.import_module("psutil")  # not Linux: psutil must be installed
        return float(psutil.Process().memory_info().rss) / MIB


def peak_rss_mib() -> float:
    """Return the peak resident set size of this process in MiB (ru_maxrss is KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / MIB if sys.platform == "darwin" else kib / 1024


class Setup:
    """One implementation's broker, its ``noop`` actor, a way to send a batch and a worker."""

    def __init__(self, impl: str) -> None:
        self.impl = impl
        self.retention: Any = None
        if impl == "dramatiq":
            import dramatiq
            from dramatiq.brokers.stub import StubBroker

            self.lib: Any = dramatiq
            self.broker: Any = StubBroker()
            dramatiq.set_broker(self.broker)

            @dramatiq.actor
            def noop(i: int) -> None:
                pass

            self.noop: Any = noop
            send = self.noop.send

            def send_batch(start: int, stop: int) -> None:
                for i in range(start, stop):
                    send(i)

        else:
            import nbqueue

            self.lib = nbqueue
            if impl == "nbqueue":
                # what a notebook gets with nothing configured (the caller clears NBQUEUE_*)
                self.broker = nbqueue.get_broker()
                for m in self.broker.middleware:
                    self.retention = getattr(getattr(m, "backend", None), "retention", None)
                    if self.retention is not None:
                        break
            else:
                from nbqueue.brokers.stub import StubBroker as NbqueueStubBroker

                self.broker = NbqueueStubBroker()
                nbqueue.set_broker(self.broker)

            @nbqueue.actor
            def noop(i: int) -> None:  # the user's actor, on the global broker
                pass

            self.noop = noop
            send_many = self.noop.send_many

            def send_batch(start: int, stop: int) -> None:
                send_many(range(start, stop))  # the returned messages are dropped

        self.send_batch: Callable[[int, int], None] = send_batch
        self.queue: str = self.noop.queue_name

    def version(self) -> str:
        return str(getattr(self.lib, "__version__", "?"))

    def middleware(self) -> list[str]:
        return [type(m).__name__ for m in self.broker.middleware]

    def worker(self) -> Any:
        return self.lib.Worker(
            self.broker, worker_threads=WORKER_THREADS, worker_timeout=WORKER_TIMEOUT_MS
        )


def checkpoints(messages: int, first: int) -> list[int]:
    """Return the message counts after which RSS is sampled: ``first``, every tenth of
    ``messages`` above it, and ``messages``."""
    points = {first, messages} | {messages * k // 10 for k in range(1, 10)}
    return sorted(p for p in points if first <= p <= messages)


def measure(
    impl: str,
    messages: int = DEFAULT_MESSAGES,
    first: int = FIRST_SAMPLE,
    batch: int = BATCH,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``messages`` no-op messages through ``impl`` and sample the RSS on the way.

    Returns:
      ``rss_first_mib`` (RSS after ``first`` messages, MiB), ``rss_last_mib`` (after
      ``messages``), ``growth_ratio`` (their quotient), ``rate`` (messages per second, sending
      and processing, the sampling left out), ``curve`` ([messages, RSS MiB] at every
      checkpoint), ``rss_start_mib`` (before the first message), ``peak_rss_mib`` and, for
      nbqueue's default broker, what its retention keeps at every checkpoint.

    Raises:
      ValueError: the sizes are not ``1 <= first <= messages`` and ``batch >= 1``.
    """
    if not 1 <= first <= messages or batch < 1:
        raise ValueError(
            f"need 1 <= first <= messages and batch >= 1, got first={first}, "
            f"messages={messages}, batch={batch}; pass sizes in that order."
        )
    setup = Setup(impl)
    worker = setup.worker()
    points = checkpoints(messages, first)
    curve: list[list[float]] = []
    kept: list[list[int]] = []
    gc.collect()
    rss_start = current_rss_mib()
    sampling = 0.0
    worker.start()
    started = time.perf_counter()
    sent = 0
    try:
        for point in points:
            while sent < point:
                stop = min(sent + batch, point)
                setup.send_batch(sent, stop)
                setup.broker.join(setup.queue)
                sent = stop
            t0 = time.perf_counter()
            gc.collect()
            rss = current_rss_mib()
            curve.append([sent, round(rss, 2)])
            if setup.retention is not None:
                r = setup.retention
                kept.append([sent, r.kept, r.held, r.released])
            sampling += time.perf_counter() - t0
            if progress is not None:
                progress(f"{impl}: {sent:>9,} messages, RSS {rss:7.1f} MiB")
        elapsed = time.perf_counter() - started - sampling
    finally:
        worker.stop()
    out: dict[str, Any] = {
        "impl": impl,
        "version": setup.version(),
        "middleware": setup.middleware(),
        "messages": messages,
        "first": first,
        "batch": batch,
        "rss_start_mib": round(rss_start, 2),
        "rss_first_mib": curve[0][1],
        "rss_last_mib": curve[-1][1],
        "growth_ratio": curve[-1][1] / curve[0][1],
        "rate": messages / elapsed,
        "peak_rss_mib": round(peak_rss_mib(), 2),
        "curve": curve,
    }
    if kept:
        out["retention"] = {"columns": ["messages", "kept", "held", "released"], "rows": kept}
    return out


def _report(result: dict[str, Any]) -> str:
    verdict = "met" if result["growth_ratio"] <= GOAL_RATIO else "MISSED"
    return (
        f"{result['impl']} {result['version']}: RSS {result['rss_first_mib']:.1f} MiB after "
        f"{result['first']:,}, {result['rss_last_mib']:.1f} MiB after {result['messages']:,}: "
        f"{result['growth_ratio']:.2f}x (goal <= {GOAL_RATIO}x: {verdict}); "
        f"{result['rate']:,.0f} msg/s; peak {result['peak_rss_mib']:.1f} MiB"
    )


def _run_child(impl: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one implementation in a fresh process with a clean environment; return its result."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NBQUEUE_", "DRAMATIQ_", "dramatiq_"))
    }
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    command = [
        sys.executable, str(Path(__file__).resolve()), "--impl", impl, "--child",
        "--messages", str(args.messages), "--first", str(args.first), "--batch", str(args.batch),
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    """Measure and print the samples (``--json PATH`` also writes them)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument("--first", type=int, default=FIRST_SAMPLE, help="first sample after")
    parser.add_argument("--batch", type=int, default=BATCH, help="messages per send_many")
    parser.add_argument("--impl", choices=[*IMPLEMENTATIONS, "all"], default="nbqueue")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one implementation, JSON on stdout, progress on stderr
        result = measure(args.impl, args.messages, args.first, args.batch, _stderr)
        print(json.dumps(result))
        return 0
    impls = list(IMPLEMENTATIONS) if args.impl == "all" else [args.impl]
    results = [_run_child(impl, args) for impl in impls]
    for result in results:
        print(_report(result))
        print("  messages -> RSS MiB: " + ", ".join(f"{n:,}: {r:.1f}" for n, r in result["curve"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
