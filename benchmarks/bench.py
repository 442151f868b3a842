"""Run the same workloads on nbqueue and on Dramatiq 2.x and compare them.

Each library runs in its own child processes (``--child``), so the two never share a process,
a global broker or threads. The short throughput workloads run in alternating rounds (one child
per library per round) so that drifting background load hits both alike; the parent merges the
samples every child returns as JSON, prints a table and writes JSON. One small adapter per
library x broker builds the broker, the result backend and the actors; the workloads only use
the API both libraries share.

Usage::

    python benchmarks/bench.py --broker memory            # full run
    python benchmarks/bench.py --broker memory --quick    # smoke run, well under a minute
    python benchmarks/bench.py --only nbqueue --json out.json
    python benchmarks/bench.py --quick --workloads process --profile /tmp/prof   # py-spy

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LIBRARIES = ("nbqueue", "dramatiq")
BROKERS = ("memory",)  # "redis" and "rabbitmq" come next: add an adapter per library for each
WORKLOADS = ("send", "process", "roundtrip", "idle")

#: Both libraries' default ``worker_timeout`` (ms), passed explicitly so that environment
#: variables cannot change it.
WORKER_TIMEOUT_MS = 1000
WORKER_THREADS = 8
QUEUE = "bench"
RT_QUEUE = "bench_rt"


@dataclass(frozen=True)
class Config:
    """Sizes of the workloads; ``quick`` shrinks them for a smoke run."""

    messages: int
    roundtrips: int
    roundtrip_budget_s: float  # stop the round trips early after this long (0: never)
    idle_s: float
    repeats: int  # runs of the send and process workloads in each child
    warmup: int

    @classmethod
    def make(cls, quick: bool, repeats: int | None = None) -> Config:
        """Return the full or the quick configuration."""
        if quick:
            return cls(2000, 200, 8.0, 1.0, repeats or 1, 200)
        return cls(20000, 1000, 0.0, 3.0, repeats or 1, 1000)


# --------------------------------------------------------------------------------------------
# Adapters: one per library x broker


class Adapter:
    """Builds a broker with a ``Results`` middleware, its backend and two actors.

    Subclasses name the library and build the broker and the result backend; everything else
    goes through the API nbqueue and Dramatiq share.
    """

    library = ""
    broker_name = ""

    def __init__(self) -> None:
        self.lib: Any = importlib.import_module(self.library)
        results = importlib.import_module(f"{self.library}.results")
        self.broker = self.make_broker()
        self.backend = self.make_backend()
        self.broker.add_middleware(results.Results(backend=self.backend))
        self.lib.set_broker(self.broker)

        def noop(*args: Any) -> None:
            """Do nothing."""

        def echo(value: Any) -> Any:
            """Return the argument, so that it is stored as the result."""
            return value

        self.noop = self.lib.actor(
            noop, actor_name="bench_noop", queue_name=QUEUE, broker=self.broker
        )
        self.echo = self.lib.actor(
            echo,
            actor_name="bench_echo",
            queue_name=RT_QUEUE,
            broker=self.broker,
            store_results=True,
        )

    def make_broker(self) -> Any:
        """Return a new broker (with the library's default middleware)."""
        raise NotImplementedError

    def make_backend(self) -> Any:
        """Return a new result backend for the ``Results`` middleware."""
        raise NotImplementedError

    def worker(self) -> Any:
        """Return a new, unstarted worker with 8 threads and the default timeout."""
        return self.lib.Worker(
            self.broker, worker_threads=WORKER_THREADS, worker_timeout=WORKER_TIMEOUT_MS
        )

    def flush(self) -> None:
        """Drop every waiting message."""
        self.broker.flush_all()

    def join(self, queue_name: str) -> None:
        """Block until a queue is drained."""
        self.broker.join(queue_name)

    def version(self) -> str:
        """Return the library's version."""
        return str(getattr(self.lib, "__version__", "?"))

    def close(self) -> None:
        """Release the broker's resources."""
        self.broker.close()


class NbqueueMemory(Adapter):
    """nbqueue with its in-memory ``StubBroker`` and ``StubBackend``."""

    library = "nbqueue"
    broker_name = "memory"

    def make_broker(self) -> Any:
        from nbqueue.brokers.stub import StubBroker

        return StubBroker()

    def make_backend(self) -> Any:
        from nbqueue.results.backends import StubBackend

        return StubBackend()


class DramatiqMemory(Adapter):
    """Dramatiq with its in-memory ``StubBroker`` and ``StubBackend``."""

    library = "dramatiq"
    broker_name = "memory"

    def make_broker(self) -> Any:
        from dramatiq.brokers.stub import StubBroker

        return StubBroker()

    def make_backend(self) -> Any:
        from dramatiq.results.backends import StubBackend

        return StubBackend()


ADAPTERS: dict[tuple[str, str], type[Adapter]] = {
    ("nbqueue", "memory"): NbqueueMemory,
    ("dramatiq", "memory"): DramatiqMemory,
}


# --------------------------------------------------------------------------------------------
# Workloads (run in the child). Each returns lists of samples; the parent merges the lists of
# every child of a library and computes the figures.

Samples = dict[str, list[float]]


def cpu_seconds() -> float:
    """Return user + system CPU time of this process, all threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """Return the peak resident set size of this process in MiB (ru_maxrss is KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


def _enqueue_untimed(actor: Any, count: int) -> None:
    """Send ``count`` messages outside any timed window (profile summaries leave it out)."""
    send = actor.send
    for i in range(count):
        send(i)


def send_rate(make: Callable[[], Adapter], config: Config) -> Samples:
    """Workload 1: messages sent per second from one thread, no worker running."""
    adapter = make()
    _enqueue_untimed(adapter.noop, config.warmup)
    adapter.flush()
    send = adapter.noop.send
    rates = []
    for _ in range(config.repeats):
        gc.collect()
        start = time.perf_counter()
        for i in range(config.messages):
            send(i)
        elapsed = time.perf_counter() - start
        adapter.flush()
        rates.append(config.messages / elapsed)
    adapter.close()
    return {"send_rate": rates}


def processing(make: Callable[[], Adapter], config: Config) -> Samples:
    """Workloads 2 and 4: drain N queued no-op messages with a fresh worker; CPU per message.

    The timed window starts just before ``worker.start()`` and ends when ``broker.join()``
    returns; stopping the worker is not timed. Each run gets a fresh broker, because a stopped
    Dramatiq worker leaves its middleware on the broker.
    """

    def drain(count: int) -> tuple[float, resource.struct_rusage, resource.struct_rusage]:
        adapter = make()
        _enqueue_untimed(adapter.noop, count)
        gc.collect()
        worker = adapter.worker()
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        worker.start()
        adapter.join(QUEUE)
        elapsed, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        worker.stop()
        adapter.close()
        return elapsed, before, after

    drain(config.warmup)
    n = config.messages
    samples: Samples = {key: [] for key in PROCESS_KEYS}
    for _ in range(config.repeats):
        elapsed, before, after = drain(n)
        user = (after.ru_utime - before.ru_utime) / n * 1e6
        system = (after.ru_stime - before.ru_stime) / n * 1e6
        samples["process_rate"].append(n / elapsed)
        samples["cpu_us_per_message"].append(user + system)
        samples["user_us_per_message"].append(user)
        samples["sys_us_per_message"].append(system)
        samples["voluntary_switches_per_message"].append((after.ru_nvcsw - before.ru_nvcsw) / n)
        samples["involuntary_switches_per_message"].append((after.ru_nivcsw - before.ru_nivcsw) / n)
    return samples


PROCESS_KEYS = (
    "process_rate",
    "cpu_us_per_message",
    "user_us_per_message",
    "sys_us_per_message",
    "voluntary_switches_per_message",
    "involuntary_switches_per_message",
)


def roundtrip(make: Callable[[], Adapter], config: Config) -> Samples:
    """Workload 3: send one message and block on its result, sequentially, worker running."""
    adapter = make()
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

        for i in range(max(5, config.roundtrips // 50)):
            once(i)
        latencies: list[float] = []
        deadline = time.perf_counter() + config.roundtrip_budget_s
        for i in range(config.roundtrips):
            latencies.append(once(i))
            if config.roundtrip_budget_s and time.perf_counter() > deadline:
                break
    finally:
        worker.stop()
        adapter.close()
    return {"rt_ms": latencies}


def idle(make: Callable[[], Adapter], config: Config) -> Samples:
    """Workload 6: CPU used by a started worker with nothing to do, in % of one core."""
    adapter = make()
    worker = adapter.worker()
    worker.start()
    try:
        time.sleep(0.3)  # let the threads boot
        cpu0, start = cpu_seconds(), time.perf_counter()
        time.sleep(config.idle_s)
        cpu, elapsed = cpu_seconds() - cpu0, time.perf_counter() - start
        threads = threading.active_count()
    finally:
        worker.stop()
        adapter.close()
    return {"idle_cpu_pct": [cpu / elapsed * 100], "idle_threads": [threads]}


WORKLOAD_FUNCS: dict[str, Callable[[Callable[[], Adapter], Config], Samples]] = {
    "send": send_rate,
    "process": processing,
    "roundtrip": roundtrip,
    "idle": idle,
}


def run_child(library: str, broker: str, config: Config, workloads: list[str]) -> dict[str, Any]:
    """Run the chosen workloads on one library and return their samples."""
    started = time.perf_counter()
    make = ADAPTERS[(library, broker)]
    probe = make()
    version = probe.version()
    probe.close()
    rss_after_setup = peak_rss_mib()
    samples: Samples = {}
    for name in workloads:
        samples.update(WORKLOAD_FUNCS[name](make, config))
    return {
        "library": library,
        "version": version,
        "broker": broker,
        "workloads": workloads,
        "samples": samples,
        "rss_after_setup_mib": rss_after_setup,
        "peak_rss_mib": peak_rss_mib(),
        "seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------------------------
# Parent: plan and spawn the children, merge their samples, print the table, write JSON

THROUGHPUT = ("send", "process")  # short, noise-sensitive: run in alternating rounds
LATENCY = ("roundtrip", "idle")  # long (Dramatiq's round trips): one child per library


def percentile(samples: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) of samples, interpolating linearly."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def plan(libraries: list[str], workloads: list[str], rounds: int) -> list[tuple[str, list[str]]]:
    """Return the children to run, in order: (library, workloads).

    The throughput workloads run in ``rounds`` rounds, one child per library each, alternating
    which library goes first, so that background load drifting over time hits both alike.
    """
    jobs: list[tuple[str, list[str]]] = []
    fast = [w for w in workloads if w in THROUGHPUT]
    slow = [w for w in workloads if w in LATENCY]
    if fast:
        for r in range(rounds):
            for library in libraries if r % 2 == 0 else libraries[::-1]:
                jobs.append((library, fast))
    if slow:
        jobs += [(library, slow) for library in libraries]
    return jobs


def figures(children: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the samples of one library's children and compute its figures."""
    samples: Samples = {}
    for child in children:
        for key, values in child["samples"].items():
            samples.setdefault(key, []).extend(values)
    out: dict[str, Any] = {
        "version": children[0]["version"],
        "children": len(children),
        "peak_rss_mib": max(c["peak_rss_mib"] for c in children),
        "rss_after_setup_mib": min(c["rss_after_setup_mib"] for c in children),
    }
    for key, values in samples.items():
        if key == "rt_ms":
            out.update(
                rt_samples=len(values),
                rt_p50_ms=percentile(values, 50),
                rt_p95_ms=percentile(values, 95),
                rt_p99_ms=percentile(values, 99),
                rt_mean_ms=statistics.fmean(values),
            )
        elif values:
            out[key] = statistics.median(values)
    out["samples"] = samples
    return out


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure from the children and which way is better."""

    label: str
    key: str
    unit: str
    higher_is_better: bool
    fmt: str


ROWS = (
    Row("send rate, 1 thread", "send_rate", "msg/s", True, "{:,.0f}"),
    Row("processing rate, 8 threads", "process_rate", "msg/s", True, "{:,.0f}"),
    Row("round trip p50", "rt_p50_ms", "ms", False, "{:.3f}"),
    Row("round trip p95", "rt_p95_ms", "ms", False, "{:.3f}"),
    Row("round trip p99", "rt_p99_ms", "ms", False, "{:.3f}"),
    Row("CPU per processed message", "cpu_us_per_message", "us", False, "{:.1f}"),
    Row("peak RSS", "peak_rss_mib", "MiB", False, "{:.1f}"),
    Row("idle worker CPU", "idle_cpu_pct", "% core", False, "{:.3f}"),
)


def ratio(row: Row, ours: float | None, theirs: float | None) -> float | str | None:
    """Return nbqueue vs Dramatiq, oriented so that > 1 means nbqueue is better."""
    if ours is None or theirs is None:
        return None
    numerator, denominator = (ours, theirs) if row.higher_is_better else (theirs, ours)
    if denominator <= 0:
        return "inf" if numerator > 0 else None  # a string: JSON has no infinity
    return numerator / denominator


def build_table(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Return one record per row with both values and the ratio."""
    table = []
    for row in ROWS:
        values = {lib: results.get(lib, {}).get(row.key) for lib in LIBRARIES}
        if all(v is None for v in values.values()):
            continue
        table.append(
            {
                "workload": row.label,
                "key": row.key,
                "unit": row.unit,
                "better": "higher" if row.higher_is_better else "lower",
                **values,
                "ratio": ratio(row, values["nbqueue"], values["dramatiq"]),
            }
        )
    return table


def format_table(table: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> str:
    """Render the table as aligned text."""
    formats = {row.key: row.fmt for row in ROWS}
    header = ["workload", "nbqueue", "dramatiq", "ratio"]
    lines = []
    for record in table:
        label = f"{record['workload']} ({record['unit']}, {record['better']} is better)"
        if record["key"].startswith("rt_"):
            counts = [str(results.get(lib, {}).get("rt_samples", "-")) for lib in LIBRARIES]
            label += f" n={'/'.join(counts)}"
        cells = [label]
        for lib in LIBRARIES:
            value = record[lib]
            cells.append("-" if value is None else formats[record["key"]].format(value))
        r = record["ratio"]
        cells.append("-" if r is None else (r if isinstance(r, str) else f"{r:.2f}x"))
        lines.append(cells)
    widths = [max(len(c[i]) for c in [header, *lines]) for i in range(4)]

    def render(cells: list[str]) -> str:
        return " | ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)
        )

    separator = "-|-".join("-" * w for w in widths)
    return "\n".join([render(header), separator, *(render(c) for c in lines)])


def format_spread(results: dict[str, dict[str, Any]]) -> str:
    """Render min..max of the repeated figures, to judge the noise behind the medians."""
    lines = []
    for label, key, fmt in (
        ("send rate", "send_rate", "{:,.0f}"),
        ("processing rate", "process_rate", "{:,.0f}"),
        ("CPU per message", "cpu_us_per_message", "{:.1f}"),
    ):
        parts = []
        for lib in LIBRARIES:
            values = results.get(lib, {}).get("samples", {}).get(key)
            if values:
                low, high = fmt.format(min(values)), fmt.format(max(values))
                parts.append(f"{lib} {low}..{high} (n={len(values)})")
        if parts:
            lines.append(f"  {label}: " + ", ".join(parts))
    if not lines:
        return ""
    return "min..max of the samples behind the medians:\n" + "\n".join(lines)


def git_commit() -> str:
    """Return the repository's commit, marked '-dirty' when nbqueue/ has changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "nbqueue"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except OSError:
        return "?"


def spawn(
    library: str, workloads: list[str], args: argparse.Namespace, profile_raw: Path | None
) -> dict[str, Any]:
    """Run one child process and return its JSON (or an ``error`` entry)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        command = [
            sys.executable, str(Path(__file__).resolve()), "--child", library,
            "--broker", args.broker, "--child-out", str(out), "--workloads", ",".join(workloads),
        ]  # fmt: skip
        if args.quick:
            command.append("--quick")
        if args.repeats:
            command += ["--repeats", str(args.repeats)]
        if profile_raw is not None:
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            command = [py_spy, "record", "--gil", "--format", "raw", "-r", str(PROFILE_HZ),
                       "-o", str(profile_raw), "--", *command]  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        try:
            proc = subprocess.run(
                command, env=env, timeout=args.child_timeout, capture_output=True, text=True
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {args.child_timeout} s"}
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            return {"error": f"exit code {proc.returncode}", "stderr": tail}
        result: dict[str, Any] = json.loads(out.read_text())
        return result


PROFILE_HZ = 400
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def summarize_profile(raws: list[Path], top: int = 30) -> str:
    """Turn py-spy's raw (collapsed stacks) files into self and inclusive time per function.

    Only the thread holding the GIL is sampled, so the shares add up to the CPU time Python
    code got; stacks under ``_enqueue_untimed`` (untimed set-up) are left out.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for raw in raws:
        for line in raw.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit() or "_enqueue_untimed" in stack:
                continue
            count = int(count_text)
            total += count
            names = []
            for frame in stack.split(";"):
                match = _FRAME.match(frame)
                names.append(f"{match['file']}:{match['func']}" if match else frame)
            own[names[-1]] += count
            for name in set(names):
                inclusive[name] += count
    if not total:
        return "no samples\n"
    parts = [
        f"{total} samples of the thread holding the GIL at {PROFILE_HZ} Hz, untimed set-up "
        f"excluded, from {len(raws)} children",
        "",
        "self time:",
    ]
    parts += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    parts += ["", "inclusive time:"]
    parts += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(parts) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--broker", choices=BROKERS, default="memory")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--only", choices=LIBRARIES, help="run one library")
    parser.add_argument(
        "--rounds", type=int, help="alternating rounds of the send/process children (full: 5)"
    )
    parser.add_argument("--repeats", type=int, help="runs of send/process in each child (1)")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}"
    )
    parser.add_argument("--profile", type=Path, help="profile the children with py-spy into DIR")
    parser.add_argument("--child-timeout", type=float, default=900.0, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark: as the parent by default, as one library's child with ``--child``."""
    args = parse_args(argv)
    config = Config.make(args.quick, args.repeats)
    workloads = [w for w in WORKLOADS if w in args.workloads.split(",")]
    if args.child:
        result = run_child(args.child, args.broker, config, workloads)
        args.child_out.write_text(json.dumps(result))
        return 0

    started, load_before = time.perf_counter(), os.getloadavg()
    profile_dir = args.profile.resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    libraries = [args.only] if args.only else list(LIBRARIES)
    rounds = args.rounds or (1 if args.quick else 5)
    jobs = plan(libraries, workloads, rounds)
    children: dict[str, list[dict[str, Any]]] = {lib: [] for lib in libraries}
    errors: dict[str, dict[str, Any]] = {}
    raws: dict[str, list[Path]] = {lib: [] for lib in libraries}
    for index, (library, job_workloads) in enumerate(jobs, 1):
        if library in errors:
            continue
        print(
            f"[{index}/{len(jobs)}] {library} on {args.broker}: {', '.join(job_workloads)}",
            file=sys.stderr,
            flush=True,
        )
        raw = None if profile_dir is None else profile_dir / f"{library}-{args.broker}-{index}.txt"
        child = spawn(library, job_workloads, args, raw)
        if "error" in child:
            errors[library] = child
            continue
        children[library].append(child)
        if raw is not None:
            raws[library].append(raw)
    results = {lib: figures(runs) for lib, runs in children.items() if runs and lib not in errors}
    if profile_dir is not None:
        for library, paths in raws.items():
            if paths:
                summary = profile_dir / f"{library}-{args.broker}.summary.txt"
                summary.write_text(summarize_profile(paths))
                if library in results:
                    results[library]["profile"] = str(summary)
    table = build_table(results)
    elapsed = time.perf_counter() - started
    document: dict[str, Any] = {
        "meta": {
            "broker": args.broker,
            "quick": args.quick,
            "config": {**config.__dict__, "rounds": rounds},
            "workloads": workloads,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "nbqueue_commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": elapsed,
        },
        "results": results,
        "errors": errors,
        "table": table,
    }
    print(format_table(table, results))
    spread = format_spread(results)
    if spread:
        print(f"\n{spread}")
    print(f"\ntotal {elapsed:.1f} s", flush=True)
    for library, error in errors.items():
        print(f"\n{library} failed: {error['error']}", file=sys.stderr)
        for line in error.get("stderr", []):
            print(f"  {line}", file=sys.stderr)
    if profile_dir is not None:
        print(f"profiles: {profile_dir}/*.summary.txt", file=sys.stderr)
    default = HERE / "results" / f"latest-{args.broker}{'-quick' if args.quick else ''}.json"
    for path in filter(None, [args.json, default]):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
