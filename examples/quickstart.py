"""nbqueue quickstart on the embedded in-memory broker: no Redis, no RabbitMQ, no configuration.

Run it with ``python examples/quickstart.py``.
"""

from __future__ import annotations

import asyncio
import time

import nbqueue


@nbqueue.actor
def add(x, y):
    return x + y


@nbqueue.actor(max_retries=3)
def flaky(attempts_needed, calls=[]):  # noqa: B006 - counts calls across retries on purpose
    calls.append(1)
    if len(calls) < attempts_needed:
        raise nbqueue.Retry(f"transient failure {len(calls)}", delay=100)  # retry in 100 ms
    return f"succeeded after {len(calls)} attempts"


@nbqueue.actor
async def build_report(kind):
    await asyncio.sleep(0.2)  # an async actor: awaits I/O without holding a worker thread's loop
    return {"kind": kind, "rows": 42}


@nbqueue.actor(queue_name="reports")
def label(x):
    return f"#{x}"


def main() -> None:
    broker = nbqueue.get_broker()  # in-memory: nothing configured
    print(f"broker: {type(broker).__name__}")
    with nbqueue.Worker(broker, worker_threads=4):
        print("add(5, 3) =", add(5, 3), "(called directly, in this thread)")

        start = time.perf_counter()
        message = add.send(5, 3)
        print("add.send(5, 3) returned at once:", message)
        print("result:", message.get_result(block=True, timeout=10_000))

        later = add.send_with_options(args=(1, 1), delay=500)
        report = build_report.send("sales")
        retried = flaky.send(3)
        print("build_report:", report.get_result(block=True, timeout=10_000))
        print("flaky:", retried.get_result(block=True, timeout=10_000))
        print("delayed add:", later.get_result(block=True, timeout=10_000))

        pipe = add.message(1, 2) | add.message(10) | label.message()
        pipe.run()
        print("pipeline add(1, 2) | add(10) | label:", pipe.get_result(block=True, timeout=10_000))

        jobs = nbqueue.group(add.message(i, i) for i in range(5)).run()
        print("group:", list(jobs.get_results(block=True, timeout=10_000)))
        print(f"done in {time.perf_counter() - start:.2f}s")


if __name__ == "__main__":
    main()
