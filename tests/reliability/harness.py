"""The reliability harness (shared/reference/reliability-plan.md, section 4.1).

* ``SIZE`` and ``size(ci, full)``: every test takes its size from here; ``NBQUEUE_RELIABILITY=full``
  selects the full plan, anything else the CI subset.
* ``Oracle``: executions are appended by the actors, from any process, to a private redis-server
  with ``appendfsync always`` that no test injects faults into, so it outlives every fault.
* ``ProducerLog``: the producer's view, one outcome per logical id: ``ok`` (the send returned),
  ``fail`` (it raised before anything could be written) or ``unknown`` (it raised after the write
  may have happened: a timeout or a lost connection).
* ``check()``: the Jepsen-style accounting (attempted, acknowledged, lost, duplicated, recovered,
  unexpected, DLQ by reason, redelivery latency).
* ``Record``: one JSON record per test (plan 4.3), written to ``reliability-results/<run>/`` at the
  repository root, or under ``$NBQUEUE_RELIABILITY_DIR``; ``summary_table`` prints them.
* ``cli_worker``: a real ``python -m nbqueue worker`` process running ``tests.reliability.workload``.

Logical ids are the actors' first argument (an int), stable across producer retries, so the
accounting does not depend on broker-assigned ids.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

from tests.brokers._redis import PrivateRedis

ROOT = Path(__file__).resolve().parents[2]
SIZE = "full" if os.environ.get("NBQUEUE_RELIABILITY", "").strip().lower() == "full" else "ci"


def size(ci: Any, full: Any) -> Any:
    """Return the CI-subset value or the full-plan value of a test parameter."""
    return full if SIZE == "full" else ci


def results_dir() -> Path:
    return Path(os.environ.get("NBQUEUE_RELIABILITY_DIR") or ROOT / "reliability-results")


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile ``q`` (0-100) of ``values``, or ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def durable_redis(*args: str) -> PrivateRedis:
    """A started private redis-server (port >= 6390) with AOF and ``appendfsync always``."""
    server = PrivateRedis("--appendonly", "yes", "--appendfsync", "always", *args)
    server.start()
    return server


class Oracle:
    """The record of what actually ran, kept apart from the broker under test.

    Each execution is one list entry ``"<id> <pid> <t_start> <t_end> <kind>"`` (wall-clock
    seconds) under ``<namespace>:exec``; actors write it with ``record()`` after their work.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=10)

    @staticmethod
    def record(
        client: redis.Redis, namespace: str, i: int, t_start: float, kind: str = "ok"
    ) -> None:
        entry = f"{i} {os.getpid()} {t_start:.6f} {time.time():.6f} {kind}"
        client.rpush(f"{namespace}:exec", entry)

    def executions(self, namespace: str, kind: str | None = "ok") -> list[Execution]:
        out = []
        raw: Any
        for raw in self.client.lrange(f"{namespace}:exec", 0, -1):
            i, pid, t0, t1, k = raw.decode().split()
            if kind is None or k == kind:
                out.append(Execution(int(i), int(pid), float(t0), float(t1), k))
        return out

    def count(self, namespace: str) -> int:
        return int(self.client.llen(f"{namespace}:exec"))

    def open_gate(self, namespace: str, gate: int) -> None:
        """Release every job waiting at ``gate`` (see ``wait_at_gate``), and any that comes later."""
        self.client.rpush(f"{namespace}:gate:{gate}", "open")

    @staticmethod
    def wait_at_gate(client: redis.Redis, namespace: str, gate: int, timeout: float) -> bool:
        """Block until the test opens ``gate``, up to ``timeout`` seconds; return whether it did.

        A job that waits here cannot finish before the test lets it, however slow the machine,
        so the test can check what happened while it was still running without racing it.
        """
        key = f"{namespace}:gate:{gate}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # From the list to itself: the gate stays open for every other job.
            if client.blmove(key, key, 5, "RIGHT", "RIGHT") is not None:
                return True
        return False

    def clear(self, namespace: str) -> None:
        self.client.delete(f"{namespace}:exec")


@dataclasses.dataclass(frozen=True)
class Execution:
    id: int
    pid: int
    t_start: float
    t_end: float
    kind: str


class ProducerLog:
    """What the producer believes: the outcome of each logical id it tried to send."""

    def __init__(self) -> None:
        self.outcomes: dict[int, str] = {}
        self.raised: collections.Counter[str] = collections.Counter()

    def ok(self, ids: Iterable[int]) -> None:
        for i in ids:
            self.outcomes[i] = "ok"

    def fail(self, i: int, error: BaseException) -> None:
        self.raised[type(error).__name__] += 1
        self.outcomes.setdefault(i, "fail")

    def unknown(self, i: int, error: BaseException) -> None:
        self.raised[type(error).__name__] += 1
        if self.outcomes.get(i) != "ok":
            self.outcomes[i] = "unknown"

    @property
    def acknowledged(self) -> set[int]:
        return {i for i, outcome in self.outcomes.items() if outcome == "ok"}


@dataclasses.dataclass
class Accounting:
    attempted: int
    acknowledged: int
    executed: int
    executed_once: int
    lost: int
    duplicated: int
    max_runs_per_id: int
    recovered: int
    unexpected: int
    dlq: dict[str, int]
    latency: dict[str, float | None]
    lost_ids: list[int]


def check(
    log: ProducerLog,
    executions: list[Execution],
    dead: Iterable[tuple[int | None, str]] = (),
    faults: Iterable[tuple[float, set[int]]] = (),
) -> Accounting:
    """The Jepsen-style checker.

    Parameters:
      log: the producer's outcomes.
      executions: what the oracle saw run.
      dead: (logical id or None, reason) of every dead letter.
      faults: (wall-clock time of the fault, ids orphaned by it); the redelivery latency of an
        orphan is the time from its fault to its first execution that started after the fault.
    """
    runs = collections.Counter(e.id for e in executions)
    dead = list(dead)
    dead_ids = {i for i, _ in dead if i is not None}
    acked = log.acknowledged
    lost = sorted(acked - set(runs) - dead_ids)
    not_acked = {i for i, outcome in log.outcomes.items() if outcome != "ok"}
    latencies = []
    for at, orphans in faults:
        for i in orphans:
            starts = [e.t_start for e in executions if e.id == i and e.t_start >= at]
            if starts:
                latencies.append(min(starts) - at)
    return Accounting(
        attempted=len(log.outcomes),
        acknowledged=len(acked),
        executed=len(executions),
        executed_once=sum(1 for n in runs.values() if n == 1),
        lost=len(lost),
        duplicated=len(executions) - len(runs),
        max_runs_per_id=max(runs.values(), default=0),
        recovered=len(not_acked & (set(runs) | dead_ids)),
        unexpected=len(set(runs) - set(log.outcomes)),
        dlq=dict(collections.Counter(reason for _, reason in dead)),
        latency={
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else None,
            "n": len(latencies),
        },
        lost_ids=lost[:20],
    )


def dead_letters(broker: Any, queue: str) -> list[tuple[int | None, str]]:
    """(logical id, reason) of every dead letter of ``queue``; the id is None when undecodable."""
    out = []
    for letter in broker.get_dead_letters(queue):
        message = letter.message
        i = message.args[0] if message is not None and message.args else None
        out.append((i if isinstance(i, int) else None, letter.reason))
    return out


def versions() -> dict[str, str]:
    import pika

    import nbqueue

    found = {
        "nbqueue": getattr(nbqueue, "__version__", "?"),
        "python": platform.python_version(),
        "redis-py": redis.__version__,
        "pika": pika.__version__,
    }
    for name, command in (
        ("redis", ["redis-server", "--version"]),
        ("rabbitmq", ["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"]),
    ):
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=5).stdout
            match = re.search(r"v=(\S+)", out)
            found[name] = match.group(1) if match else out.strip()
        except (OSError, subprocess.SubprocessError):
            found[name] = "?"
    return found


_VERSIONS: dict[str, str] = {}


@dataclasses.dataclass
class Record:
    """One test's JSON record (plan 4.3); ``bar()`` states a pass bar and whether it held."""

    test_id: str
    plan_id: str = ""
    broker: str = ""
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    n: int = 0
    accounting: Accounting | None = None
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    bars: list[tuple[str, bool]] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)
    runtime: float | None = None
    outcome: str = "unknown"

    def bar(self, text: str, held: bool) -> bool:
        self.bars.append((text, bool(held)))
        return bool(held)

    def check_bars(self) -> None:
        """Fail the test with every pass bar that did not hold."""
        failed = [text for text, held in self.bars if not held]
        assert not failed, f"pass bars missed: {failed}; figures {self.figures}"

    def as_json(self) -> dict[str, Any]:
        if not _VERSIONS:
            _VERSIONS.update(versions())
        return {
            "test_id": self.test_id,
            "plan_id": self.plan_id,
            "broker": self.broker,
            "size": SIZE,
            "settings": self.settings,
            "n": self.n,
            "accounting": dataclasses.asdict(self.accounting) if self.accounting else None,
            "figures": self.figures,
            "bars": [{"bar": text, "held": held} for text, held in self.bars],
            "runtime_s": round(self.runtime or 0.0, 3),
            "outcome": self.outcome,
            "passed": self.outcome == "passed" and all(held for _, held in self.bars),
            "versions": _VERSIONS,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def write(self, run_dir: Path) -> Path:
        run_dir.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.test_id)[:150]
        path = run_dir / f"{name}.json"
        path.write_text(json.dumps(self.as_json(), indent=2, sort_keys=True, default=str))
        return path


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def summary_table(records: list[dict[str, Any]]) -> str:
    """One line per record: id, broker, N, acknowledged, lost, duplicated, recovered, DLQ by
    reason, latency p50/p99/max (s), runtime (s), pass/fail."""
    header = (
        "id",
        "broker",
        "N",
        "acked",
        "lost",
        "dup",
        "recov",
        "DLQ by reason",
        "lat p50/p99/max s",
        "runtime s",
        "result",
    )
    rows = [header]
    for r in sorted(records, key=lambda r: (r["plan_id"], r["test_id"])):
        a = r.get("accounting") or {}
        lat = a.get("latency") or {}
        rows.append(
            (
                r["plan_id"] or r["test_id"][:20],
                r["broker"],
                _fmt(r["n"]),
                _fmt(a.get("acknowledged")),
                _fmt(a.get("lost")),
                _fmt(a.get("duplicated")),
                _fmt(a.get("recovered")),
                ",".join(f"{k}={v}" for k, v in sorted((a.get("dlq") or {}).items())) or "-",
                "/".join(_fmt(lat.get(k)) for k in ("p50", "p99", "max")) if lat.get("n") else "-",
                _fmt(r["runtime_s"]),
                "pass" if r["passed"] else r["outcome"] if r["outcome"] != "passed" else "FAIL",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in rows
    )


# -- worker processes -----------------------------------------------------------------------


def cli_worker(
    *,
    broker_url: str,
    queue: str,
    oracle_url: str,
    threads: int = 4,
    processes: int = 1,
    heartbeat_ms: int = 1000,
    work_ms: float = 2,
    prefetch: int = 0,
    crash_limit: int = 0,
    extra_args: Iterable[str] = (),
    shutdown_timeout_ms: int = 30000,
) -> subprocess.Popen[bytes]:
    """Start ``python -m nbqueue worker tests.reliability.workload:setup`` in its own session.

    The broker URL travels in the environment (``NBQREL_BROKER_URL``) with the heartbeat, so the
    callable ``setup`` builds the broker; the CLI does the rest (signals, threads, processes).
    """
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NBQUEUE_", "NBQREL_"))},
        "PYTHONPATH": str(ROOT),
        "NBQREL_BROKER_URL": broker_url,
        "NBQREL_QUEUE": queue,
        "NBQREL_ORACLE_URL": oracle_url,
        "NBQREL_HEARTBEAT_MS": str(heartbeat_ms),
        "NBQREL_WORK_MS": str(work_ms),
        "NBQREL_CRASH_LIMIT": str(crash_limit),
    }
    if prefetch:
        env["NBQUEUE_QUEUE_PREFETCH"] = str(prefetch)
    command = [sys.executable, "-m", "nbqueue", "worker", "tests.reliability.workload:setup"]
    command += ["--threads", str(threads), "--processes", str(processes), "-Q", queue]
    command += ["--worker-shutdown-timeout", str(shutdown_timeout_ms), *extra_args]
    # The log goes to a file: a pipe nobody reads fills up and blocks the worker's logging.
    log = tempfile.NamedTemporaryFile(prefix=f"nbq-worker-{queue}-", suffix=".log", delete=False)
    process = subprocess.Popen(
        command,
        env=env,
        cwd=ROOT,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    process.log_path = log.name  # type: ignore[attr-defined]
    return process


def worker_log(process: subprocess.Popen[bytes]) -> str:
    """The worker's output so far."""
    return Path(process.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def booted(oracle: Oracle, queue: str) -> int:
    """How many worker processes of ``queue`` finished booting (each pushes its pid)."""
    return int(oracle.client.llen(f"{queue}:booted"))


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll another process's effect until true; return the seconds it took; fail on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def process_sample(pids: Iterable[int]) -> dict[int, tuple[int, int, int]]:
    """(RSS KiB, threads, open FDs) of each live pid, read from /proc."""
    out = {}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
            threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, AttributeError):
            continue
        out[pid] = (rss, threads, fds)
    return out


def children(pid: int) -> list[int]:
    """Direct child pids of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def malformed_bodies(valid: Any) -> tuple[list[tuple[str, bytes]], bytes]:
    """Bad message bodies with the dead-letter reason each must get (plan C1), built from a
    valid ``Message``; and one 10 MB body for an unknown actor (reason ``unknown_actor``)."""
    from nbqueue import Message

    fields = valid.asdict()
    encoded = Message.encode(Message(**fields))
    undecodable = [b"\xc3\x28", b"{", b"null nope", b"[" * 100000, b"\x80\x04K\x01."]
    invalid = [
        b"[1, 2]",
        b"42",
        b'"text"',
        Message.encode(Message(**{**fields, "args": [1]})).replace(b"[1]", b"5"),
        encoded.replace(b'"kwargs":{}', b'"kwargs":[]'),
        encoded.replace(b'"options":{}', b'"options":"x"'),
        encoded[:-1] + b',"extra":1}',
    ]
    unknown = Message.encode(Message(**{**fields, "actor_name": "nobody"}))
    big = Message.encode(Message(**{**fields, "actor_name": "nobody", "args": ["x" * 10_000_000]}))
    bad = [("undecodable", b) for b in undecodable] + [("invalid", b) for b in invalid]
    return bad + [("unknown_actor", unknown)], big
