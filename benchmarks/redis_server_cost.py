"""Instructions the Redis server executes per message, measured with callgrind.

Runs a private ``redis-server`` under ``valgrind --tool=callgrind`` twice, with N and then M no-op
jobs (``store_results=True``, a 2-thread worker in this process), and prints the slope: the
instructions per message, without the server's startup and the first connections. Unlike the
server's CPU time, the count does not depend on what else runs on the machine; it still moves by a
few percent between runs, since how messages batch into fetches, acks and pipelines depends on
timing.

    python benchmarks/redis_server_cost.py                   # nbqueue's default, connect(url)
    python benchmarks/redis_server_cost.py --kind matched    # RedisBroker + Results, no Live
    python benchmarks/redis_server_cost.py --kind dramatiq   # Dramatiq's RedisBroker + Results
    python benchmarks/redis_server_cost.py --commands        # commands per message (MONITOR)

With ``--commands`` the server runs without valgrind and a ``MONITOR`` connection counts the
commands it executes, by name, those clients sent apart from those Lua scripts called (the same
slope between the two runs).

Needs ``valgrind`` and ``redis-server`` on PATH (Debian: ``apt-get install valgrind``), and
Dramatiq for ``--kind dramatiq`` (``pip install -r benchmarks/requirements.txt``).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KINDS = ("default", "matched", "dramatiq")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The live channel's hold on a short job's running status in the measured child, in seconds.
#: Under valgrind the server runs tens of times slower than on its own, so the default 50 ms
#: could run out for jobs that end within a millisecond on a real server; ``--commands`` (no
#: valgrind) keeps the default.
VALGRIND_HOLD = 5.0


def _run_jobs(kind: str, url: str, n: int, hold: float | None = None) -> None:
    """Send ``n`` jobs and run them with a worker in this process (called in a child)."""
    if hold is not None:
        import nbqueue.live.middleware

        nbqueue.live.middleware.START_HOLD = hold
    if kind == "dramatiq":
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker as DramatiqRedis
        from dramatiq.results import Results as DramatiqResults
        from dramatiq.results.backends import RedisBackend as DramatiqBackend

        broker: Any = DramatiqRedis(url=url)
        broker.add_middleware(DramatiqResults(backend=DramatiqBackend(url=url)))
        dramatiq.set_broker(broker)
        actor: Any = dramatiq.actor(queue_name="cost", store_results=True)
        worker: Any = dramatiq.Worker(broker, worker_threads=2)
    else:
        import nbqueue

        if kind == "default":
            broker = nbqueue.connect(url, socket_timeout=60)
        else:
            from nbqueue.brokers.redis import RedisBroker
            from nbqueue.results import Results
            from nbqueue.results.backends import RedisBackend

            broker = RedisBroker(url=url, socket_timeout=60)
            broker.add_middleware(Results(backend=RedisBackend(url=url)))
            nbqueue.set_broker(broker)
        actor = nbqueue.actor(queue_name="cost", store_results=True)
        worker = nbqueue.Worker(broker, worker_threads=2)

    def noop(i: int) -> int:
        return i

    job = actor(noop)
    worker.start()
    for i in range(n):
        job.send(i)
    broker.join("cost", timeout=600_000)
    worker.join()
    worker.stop()
    broker.close()


def instructions(kind: str, n: int) -> int:
    """Total instructions of a private server that served ``n`` jobs of ``kind``."""
    import redis

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        server = _start_server(port, tmp, valgrind)
        client = redis.Redis(port=port, socket_timeout=120)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            code += f"import redis_server_cost as m; m._run_jobs({kind!r}, {url!r}, {n}, "
            code += f"{VALGRIND_HOLD!r})"
            subprocess.run([sys.executable, "-c", code], check=True)
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the shutdown closes the connection
        finally:
            server.wait(120)
        total = re.search(rb"^summary: (\d+)", out.read_bytes(), re.MULTILINE)
        if total is None:
            raise SystemExit(f"no summary line in {out}")
        return int(total.group(1))


def _start_server(port: int, tmp: str, prefix: list[str]) -> subprocess.Popen[bytes]:
    import redis

    server = subprocess.Popen(
        prefix
        + ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=120)
    deadline = time.monotonic() + 120
    while True:
        try:
            client.ping()
            return server
        except redis.ConnectionError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("redis-server did not start") from None
            time.sleep(0.2)


def commands(kind: str, n: int) -> dict[str, int]:
    """Commands a private server executed while it served ``n`` jobs of ``kind``, by name:
    ``"EVALSHA"`` for one a client sent, ``"lua HSET"`` for one a script called."""
    import threading

    import redis

    port = _free_port()
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = _start_server(port, tmp, [])
        monitor_client = redis.Redis(port=port)
        ready = threading.Event()

        def watch() -> None:
            with monitor_client.monitor() as monitor:
                ready.set()
                try:
                    for command in monitor.listen():
                        name = str(command["command"]).split(" ", 1)[0].upper()
                        if command.get("client_type") == "lua":
                            name = "lua " + name
                        counts[name] = counts.get(name, 0) + 1
                except (redis.ConnectionError, ValueError):
                    pass  # the server shut down

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        ready.wait(30)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            code += f"import redis_server_cost as m; m._run_jobs({kind!r}, {url!r}, {n})"
            subprocess.run([sys.executable, "-c", code], check=True)
            redis.Redis(port=port).shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        finally:
            server.wait(120)
            thread.join(30)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=KINDS, default="default")
    parser.add_argument("--small", type=int, default=300, help="jobs of the first run")
    parser.add_argument("--large", type=int, default=1300, help="jobs of the second run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--commands", action="store_true", help="count commands per message with MONITOR"
    )
    args = parser.parse_args()
    if args.large <= args.small:
        parser.error("--large must be more than --small")
    if args.commands:
        small, large = commands(args.kind, args.small), commands(args.kind, args.large)
        per = {
            name: (large.get(name, 0) - small.get(name, 0)) / (args.large - args.small)
            for name in sorted(set(small) | set(large))
        }
        per = {name: round(v, 2) for name, v in per.items() if round(v, 2) > 0}
        if args.json:
            print(json.dumps({"kind": args.kind, "commands_per_message": per}))
            return
        sent = sum(v for k, v in per.items() if not k.startswith("lua "))
        called = sum(v for k, v in per.items() if k.startswith("lua "))
        print(
            f"{args.kind}: {sent:.2f} commands sent and {called:.2f} called by scripts per message"
        )
        for name, value in sorted(per.items(), key=lambda kv: -kv[1]):
            print(f"  {value:6.2f}  {name}")
        return
    small, large = instructions(args.kind, args.small), instructions(args.kind, args.large)
    per_message = (large - small) / (args.large - args.small)
    if args.json:
        print(json.dumps({"kind": args.kind, "instructions_per_message": round(per_message)}))
    else:
        print(f"{args.kind}: {per_message / 1000:,.1f}k Redis server instructions per message")


if __name__ == "__main__":
    main()
