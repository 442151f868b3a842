"""Run the same workloads on nbqueue and on Dramatiq 2.x, on memory, Redis and RabbitMQ.

Every measurement runs in a fresh child process (``--child``), one implementation per child, so
the libraries never share a process, a global broker, threads or import state. Per broker, the
send/bulk/in-process children and the CLI children run in alternating rounds (the order of the
implementations rotates each round) so that drifting background load hits all alike; the round
trip runs in one child per implementation and the idle measurement in one child per
implementation, those three side by side; memory growth (embedded broker only) runs in one child
per implementation of its own, one after the other. The parent merges the samples, prints a table with
ratios and targets, and writes JSON.

Usage::

    python benchmarks/bench.py                          # every broker, 3 rounds
    python benchmarks/bench.py --quick                  # smoke run, under 2 minutes
    python benchmarks/bench.py --broker redis --only process --rounds 5
    python benchmarks/bench.py --broker memory --only process --profile /tmp/prof   # py-spy
    python benchmarks/bench.py --broker memory --only growth --growth-messages 1000000

See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_adapters import (  # noqa: E402
    BROKERS,
    IMPLEMENTATIONS,
    Adapter,
    Target,
    check_server,
    cleanup,
    redact,
    server_version,
)
from bench_report import build_table, figures, format_spread, format_table  # noqa: E402
from bench_workloads import (  # noqa: E402
    GROWTH,
    WORKLOAD_FUNCS,
    WORKLOADS,
    Config,
    Context,
    applicable,
    growth_detail,
    growth_samples,
    peak_rss_mib,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
ROUNDS = ("send", "bulk", "process")  # one child per implementation per round
CLI = ("cli",)  # one child per implementation per round, on its own
SERIAL = ("roundtrip",)  # one child per implementation
PARALLEL = ("idle",)  # one child per implementation, all three at once
ALONE = (GROWTH,)  # one child per implementation and workload, nothing else in it


def run_child(impl: str, target: Target, config: Config, workloads: list[str]) -> dict[str, Any]:
    """Run the chosen workloads on one implementation and return their samples.

    A memory growth child runs nothing else and builds no probe ``Adapter`` first: the broker
    it measures is the only one in the process (``nbqueue.get_broker()`` for nbqueue).
    """
    started = time.perf_counter()
    ctx = Context(impl, target, config)
    samples: dict[str, list[float]] = {}
    try:
        if workloads == [GROWTH]:
            detail = growth_detail(ctx)
            samples.update(growth_samples(detail))
            version, middleware = detail["version"], detail["middleware"]
        else:
            probe = Adapter(impl, target)
            version, middleware = probe.version(), probe.middleware_names()
            probe.close()
            for name in workloads:
                samples.update(WORKLOAD_FUNCS[name](ctx))
    finally:
        cleanup(target)
    return {
        "impl": impl,
        "version": version,
        "middleware": middleware,
        "broker": target.broker,
        "workloads": workloads,
        "samples": samples,
        "peak_rss_mib": peak_rss_mib(),
        "seconds": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------------------------
# Parent


def plan(
    impls: list[str], workloads: list[str], rounds: int
) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """Return the batches of children to run, in order: (kind, [(impl, workloads)]).

    A ``serial`` batch runs its children one after the other, a ``parallel`` one all at once.
    """
    batches: list[tuple[str, list[tuple[str, list[str]]]]] = []
    for group in (ROUNDS, CLI):
        chosen = [w for w in workloads if w in group]
        if chosen:
            for r in range(rounds):
                order = impls[r % len(impls) :] + impls[: r % len(impls)]
                batches.append(("serial", [(impl, chosen) for impl in order]))
    for group, kind in ((SERIAL, "serial"), (PARALLEL, "parallel")):
        chosen = [w for w in workloads if w in group]
        if chosen:
            batches.append((kind, [(impl, chosen) for impl in impls]))
    for workload in ALONE:
        if workload in workloads:
            batches.append(("serial", [(impl, [workload]) for impl in impls]))
    return batches


def spawn(
    impl: str,
    target: Target,
    workloads: list[str],
    args: argparse.Namespace,
    profile_raw: Path | None,
) -> dict[str, Any]:
    """Run one child process and return its JSON (or an ``error`` entry)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        command = [
            sys.executable, str(Path(__file__).resolve()), "--child", impl,
            "--child-target", target.to_json(), "--child-out", str(out),
            "--workloads", ",".join(workloads),
        ]  # fmt: skip
        if args.quick:
            command.append("--quick")
        if args.messages:
            command += ["--messages", str(args.messages)]
        if args.growth_messages:
            command += ["--growth-messages", str(args.growth_messages)]
        if profile_raw is not None:
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            extra = ["--subprocesses"] if "cli" in workloads else []
            command = [py_spy, "record", "--gil", "--format", "raw", "-r", str(PROFILE_HZ),
                       *extra, "-o", str(profile_raw), "--", *command]  # fmt: skip
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NBQUEUE_", "DRAMATIQ_", "dramatiq_"))
        }
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
#: Stacks left out of profile summaries: untimed pre-loading and imports.
_UNTIMED = ("_enqueue_untimed", "_find_and_load")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def summarize_profile(raws: list[Path], top: int = 30) -> str:
    """Turn py-spy's raw (collapsed stacks) files into self and inclusive time per function.

    Only the thread holding the GIL is sampled, so the shares add up to the CPU time Python
    code got; stacks under ``_enqueue_untimed`` (untimed pre-loading) and imports are left out.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for raw in raws:
        if not raw.exists():
            continue
        for line in raw.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit() or any(m in stack for m in _UNTIMED):
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
        f"{total} samples of the thread holding the GIL at {PROFILE_HZ} Hz, pre-loading and "
        f"imports excluded, from {len(raws)} children",
        "",
        "self time:",
    ]
    parts += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    parts += ["", "inclusive time:"]
    parts += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(parts) + "\n"


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--broker", choices=[*BROKERS, "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 round")
    parser.add_argument("--only", choices=WORKLOADS, help="run one workload")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}"
    )
    parser.add_argument(
        "--impl",
        default=",".join(IMPLEMENTATIONS),
        help=f"comma-separated subset of {IMPLEMENTATIONS}",
    )
    parser.add_argument("--rounds", type=int, help="alternating rounds (full: 3, quick: 1)")
    parser.add_argument("--messages", type=int, help="messages per workload (20000; quick 2000)")
    parser.add_argument(
        "--growth-messages",
        type=int,
        help="messages of the memory growth workload (1000000; quick 30000); RSS is first "
        "sampled after 10000",
    )
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--rabbitmq-url", default=DEFAULT_RABBITMQ_URL)
    parser.add_argument(
        "--json",
        type=Path,
        default=HERE / "results" / "latest.json",
        help="where to write the results as JSON (default: benchmarks/results/latest.json)",
    )
    parser.add_argument("--profile", type=Path, help="profile the children with py-spy into DIR")
    parser.add_argument("--child-timeout", type=float, default=900.0, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--child-target", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only:
        args.workloads = args.only
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    impls = set(args.impl.split(","))
    if impls - set(IMPLEMENTATIONS):
        parser.error(
            f"unknown implementations {sorted(impls - set(IMPLEMENTATIONS))}; "
            f"choose from {', '.join(IMPLEMENTATIONS)}"
        )
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.growth_messages is not None and args.growth_messages < 1:
        parser.error("--growth-messages must be at least 1")
    return args


def run_broker(
    broker: str,
    url: str,
    impls: list[str],
    workloads: list[str],
    rounds: int,
    run_id: str,
    args: argparse.Namespace,
    profile_dir: Path | None,
) -> tuple[dict[str, Any], dict[str, Any], list[Target], list[dict[str, Any]]]:
    """Run every batch on one broker.

    Returns:
      Figures per implementation, errors per job, the targets used and the children's timeline.
    """
    chosen = [w for w in workloads if applicable(w, broker)]
    batches = plan(impls, chosen, rounds)
    children: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    errors: dict[str, Any] = {}
    raws: dict[str, list[Path]] = {impl: [] for impl in impls}
    targets: list[Target] = []
    timeline: list[dict[str, Any]] = []
    total = sum(len(jobs) for _, jobs in batches)
    index = 0

    def one(job_index: int, impl: str, job_workloads: list[str]) -> None:
        target = Target(broker, url, f"nbqbench-{run_id}-{broker[:2]}{job_index}")
        targets.append(target)
        raw = None
        if profile_dir is not None:
            raw = profile_dir / f"{impl}-{broker}-{job_index}.txt"
            raws[impl].append(raw)
        wall = time.perf_counter()
        child = spawn(impl, target, job_workloads, args, raw)
        timeline.append(
            {"job": job_index, "impl": impl, "workloads": job_workloads,
             "seconds": round(time.perf_counter() - wall, 2)}
        )  # fmt: skip
        if "error" in child:
            errors[f"{impl}: {','.join(job_workloads)}"] = child
        else:
            children[impl].append(child)

    for kind, jobs in batches:
        for impl, job_workloads in jobs:
            index += 1
            print(
                f"[{broker} {index}/{total}] {impl}: {', '.join(job_workloads)}"
                + (" (side by side)" if kind == "parallel" else ""),
                file=sys.stderr,
                flush=True,
            )
        if kind == "parallel":
            with ThreadPoolExecutor(len(jobs)) as pool:
                start = index - len(jobs) + 1
                for future in [
                    pool.submit(one, start + i, impl, w) for i, (impl, w) in enumerate(jobs)
                ]:
                    future.result()
        else:
            start = index - len(jobs) + 1
            for i, (impl, job_workloads) in enumerate(jobs):
                one(start + i, impl, job_workloads)
    results = {impl: figures(runs) for impl, runs in children.items() if runs}
    if profile_dir is not None:
        for impl, paths in raws.items():
            if paths:
                summary = profile_dir / f"{impl}-{broker}.summary.txt"
                summary.write_text(summarize_profile(paths))
                if impl in results:
                    results[impl]["profile"] = str(summary)
    return results, errors, targets, timeline


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark: as the parent by default, as one child with ``--child``."""
    args = parse_args(argv)
    config = Config.make(args.quick, args.messages, args.growth_messages)
    workloads = [w for w in WORKLOADS if w in args.workloads.split(",")]
    if args.child:
        target = Target.from_json(args.child_target)
        result = run_child(args.child, target, config, workloads)
        args.child_out.write_text(json.dumps(result))
        return 0

    started, load_before = time.perf_counter(), os.getloadavg()
    profile_dir = args.profile.resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    impls = [i for i in IMPLEMENTATIONS if i in args.impl.split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    brokers = list(BROKERS) if args.broker == "all" else [args.broker]
    urls = {"memory": "", "redis": args.redis_url, "rabbitmq": args.rabbitmq_url}
    run_id = uuid.uuid4().hex[:8]
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    servers: dict[str, str | None] = {}
    leftovers = 0
    timelines: dict[str, list[dict[str, Any]]] = {}
    for broker in brokers:
        problem = check_server(broker, urls[broker])
        if problem is not None:
            print(problem, file=sys.stderr, flush=True)
            skipped[broker] = problem
            continue
        servers[broker] = server_version(broker, urls[broker])
        targets: list[Target] = []
        try:
            by_impl, broker_errors, targets, timelines[broker] = run_broker(
                broker, urls[broker], impls, workloads, rounds, run_id, args, profile_dir
            )
        finally:
            # children delete their own keys and queues; this only catches a crashed child's
            if broker == "redis":
                leftovers += cleanup(Target("redis", urls["redis"], f"nbqbench-{run_id}"))
            elif broker == "rabbitmq":
                leftovers += sum(cleanup(t) for t in targets)
        results[broker] = by_impl
        if broker_errors:
            errors[broker] = broker_errors
    table = build_table(results)
    elapsed = time.perf_counter() - started
    versions = {
        "python": platform.python_version(),
        **{lib: _version(lib) for lib in ("nbqueue", "dramatiq", "redis", "pika")},
        **{f"{b}_server": v for b, v in servers.items() if b != "memory"},
    }
    document: dict[str, Any] = {
        "meta": {
            "brokers": brokers,
            "quick": args.quick,
            "config": {**config.__dict__, "rounds": rounds},
            "workloads": workloads,
            "implementations": impls,
            "versions": versions,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "nbqueue_commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": elapsed,
            "urls": {b: redact(u) for b, u in urls.items() if u and b in brokers},
            "leftovers_deleted_by_parent": leftovers,
        },
        "results": results,
        "errors": errors,
        "skipped": skipped,
        "table": table,
        "timeline": timelines,
    }
    print(format_table(table, results))
    spread = format_spread(results)
    if spread:
        print(f"\n{spread}")
    print(
        f"\n{', '.join(f'{k} {v}' for k, v in versions.items())}; {os.cpu_count()} CPUs; "
        f"total {elapsed:.1f} s",
        flush=True,
    )
    for broker, broker_errors in errors.items():
        for job, error in broker_errors.items():
            print(f"\n{broker} {job} failed: {error['error']}", file=sys.stderr)
            for line in error.get("stderr", []):
                print(f"  {line}", file=sys.stderr)
    if profile_dir is not None:
        print(f"profiles: {profile_dir}/*.summary.txt", file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    if skipped and os.environ.get("CI"):
        print(f"CI is set and {', '.join(skipped)} could not be benchmarked.", file=sys.stderr)
        return 1
    return 1 if errors else 0


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
