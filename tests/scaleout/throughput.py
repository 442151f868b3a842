"""Throughput of ``--processes 2 --threads 8`` CLI workers on N no-op messages, nbqueue beside
Dramatiq, on Redis or RabbitMQ (a measurement to report, not a test).

    .venv/bin/python tests/scaleout/throughput.py --broker redis  [--count 10000] [--rounds 1]
    .venv/bin/python tests/scaleout/throughput.py --broker rabbitmq

Each round pre-loads N messages with nbqueue's bulk send (the messages are wire compatible, so
either CLI consumes them), starts the CLI and times until the queue is drained and nothing is in
flight; CLI boot is inside the window, as in Dramatiq's own CLI benchmark. Variants: nbqueue
with the broker from a module (default middleware, as Dramatiq's), nbqueue with ``--broker URL``
(results and live status in Redis, as ``nbqueue.connect()`` users get it), and Dramatiq's CLI.
Every run uses its own namespace / queue names and deletes only those.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

REDIS_URL = os.environ.get("NBQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
RABBITMQ_URL = os.environ.get("NBQUEUE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

MODULES = {
    "nbqueue": """
        import nbqueue
        from nbqueue.brokers.{module} import {cls}
        broker = {cls}(url={url!r}{ns})
        nbqueue.set_broker(broker)

        @nbqueue.actor(queue_name={queue!r}, actor_name="noop")
        def noop(i):
            pass
    """,
    "nbqueue-url": """
        import nbqueue

        @nbqueue.actor(queue_name={queue!r}, actor_name="noop")
        def noop(i):
            pass
    """,
    "dramatiq": """
        import dramatiq
        from dramatiq.brokers.{module} import {cls}
        broker = {cls}(url={url!r}{ns})
        dramatiq.set_broker(broker)

        @dramatiq.actor(queue_name={queue!r}, actor_name="noop")
        def noop(i):
            pass
    """,
}


def run_once(kind: str, variant: str, count: int, folder: Path) -> float:
    import nbqueue
    from nbqueue.connection import broker_from_url

    name = f"nbq-bench-{uuid.uuid4().hex[:8]}"
    url = REDIS_URL if kind == "redis" else RABBITMQ_URL
    module = "redis" if kind == "redis" else "rabbitmq"
    cls = "RedisBroker" if kind == "redis" else "RabbitmqBroker"
    ns = f", namespace={name!r}" if kind == "redis" else ""
    source = MODULES[variant].format(module=module, cls=cls, url=url, ns=ns, queue=name)
    (folder / f"m_{name.replace('-', '_')}.py").write_text(textwrap.dedent(source))
    mod = f"m_{name.replace('-', '_')}"

    producer = broker_from_url(url, **({"namespace": name} if kind == "redis" else {}))
    noop = nbqueue.actor(queue_name=name, actor_name="noop", broker=producer)(lambda i: None)
    for start in range(0, count, 1000):
        noop.send_many(range(start, min(count, start + 1000)))

    env = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(ROOT)])
    if variant == "dramatiq":
        command = [str(ROOT / ".venv/bin/dramatiq"), f"{mod}:broker", "-p", "2", "-t", "8"]
    elif variant == "nbqueue":
        command = [sys.executable, "-m", "nbqueue", f"{mod}:broker", "-p", "2", "-t", "8"]
    else:
        command = [sys.executable, "-m", "nbqueue", mod, "-p", "2", "-t", "8", "--broker", url]
        command += ["--namespace", name] if kind == "redis" else []
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            stats = producer.queue_stats().get(name)
            # RabbitMQ does not report unacknowledged messages here (in_flight is None).
            if stats is not None and stats.ready == 0 and not stats.in_flight:
                if kind == "redis" or time.perf_counter() - started > 1:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"{variant} exited with {proc.returncode}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(60)
        cleanup(kind, producer, name)
    return elapsed


def cleanup(kind: str, producer: object, name: str) -> None:
    if kind == "redis":
        import redis

        from tests.brokers._redis import delete_namespace

        client = redis.Redis.from_url(REDIS_URL)
        delete_namespace(client, name)
        client.close()
    else:
        import pika

        from tests.brokers._rabbitmq import delete_queues

        delete_queues(pika.URLParameters(RABBITMQ_URL), [name])
    producer.close()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, list[float]] = {v: [] for v in MODULES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for variant in MODULES:  # alternating rounds
                results[variant].append(run_once(args.broker, variant, args.count, Path(tmp)))
    print(f"{args.broker}: {args.count} no-op messages, CLI -p 2 -t 8, boot included")
    for variant, times in results.items():
        median = statistics.median(times)
        print(f"  {variant:12s} {median:6.2f} s  {args.count / median:7.0f} msg/s  {times}")


if __name__ == "__main__":
    main()
