"""Tick jitter of schedules: scheduled time to actor start, on Redis, with CLI worker processes.

Starts ``--workers`` ``python -m nbqueue worker`` processes sharing an ``every(--period)``
schedule for ``--seconds``, then prints p50/p99/max of (actor start - scheduled_at) in ms and
whether every tick ran once. Uses its own namespace on ``--redis`` and deletes it afterwards.

    python benchmarks/schedule_jitter.py --redis redis://127.0.0.1:6379/15 --seconds 30
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]

MODULE = """
import os, time, redis, nbqueue
from nbqueue.brokers.redis import RedisBroker
from nbqueue.middleware import CurrentMessage
URL, NS, PERIOD = os.environ["J_URL"], os.environ["J_NS"], int(os.environ["J_PERIOD"])
client = redis.Redis.from_url(URL)
broker = RedisBroker(url=URL, namespace=NS)
broker.add_middleware(CurrentMessage())

@nbqueue.actor(broker=broker, periodic=nbqueue.every(PERIOD))
def tick():
    started = time.time_ns() / 1e6
    at = CurrentMessage.get_current_message().options["scheduled_at"]
    client.rpush(NS + ":jitter", f"{at} {started - at:.3f}")
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--period", type=int, default=200, help="ms")
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    namespace = f"nbq-jitter-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(args.redis)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "jitter_tasks.py").write_text(MODULE)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
        env.update(
            J_URL=args.redis,
            J_NS=namespace,
            J_PERIOD=str(args.period),
            PYTHONPATH=os.pathsep.join([folder, str(ROOT)]),
        )
        command = [sys.executable, "-m", "nbqueue", "worker", "jitter_tasks:broker"]
        fleet = [
            subprocess.Popen(command, cwd=folder, env=env, stderr=subprocess.DEVNULL)
            for _ in range(args.workers)
        ]
        try:
            time.sleep(args.seconds)
        finally:
            for process in fleet:
                process.send_signal(signal.SIGTERM)
            for process in fleet:
                process.wait(timeout=30)
    rows = [item.decode().split() for item in client.lrange(namespace + ":jitter", 0, -1)]
    for key in client.scan_iter(match=f"{namespace}*"):
        client.delete(key)
    ticks = sorted(int(at) for at, _ in rows)
    lags = [float(lag) for _, lag in rows]
    gaps = {b - a for a, b in zip(ticks, ticks[1:], strict=False)}
    print(
        f"{len(ticks)} runs, {len(set(ticks))} distinct ticks, gaps {sorted(gaps)} ms; "
        f"scheduled -> actor start: p50 {percentile(lags, 50):.2f} ms, "
        f"p99 {percentile(lags, 99):.2f} ms, max {max(lags):.2f} ms"
    )


if __name__ == "__main__":
    main()
