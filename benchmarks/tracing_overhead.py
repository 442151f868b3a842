"""The cost of the OpenTelemetry middleware per message, on the in-memory broker.

Sends N messages, then runs them with a Worker, for each setting in turn:

* ``off``: no tracing middleware;
* ``no-sdk``: ``OpenTelemetry()`` with OpenTelemetry's no-op tracer provider (the API installed,
  no SDK configured);
* ``sdk``: the SDK's ``TracerProvider`` with a ``BatchSpanProcessor`` feeding an exporter that
  drops the spans (what a real exporter costs comes on top, in its own thread).

It prints, per message, the CPU time of the process (all its threads: ``time.process_time``,
steadier than wall-clock time on a busy machine) for the sends and for sending and running,
the median of the rounds, and the difference from ``off``. Run from the repository root::

    python benchmarks/tracing_overhead.py --messages 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.middleware.opentelemetry import OpenTelemetry


class _Drop(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _middleware(setting: str) -> tuple[list[OpenTelemetry], TracerProvider | None]:
    if setting == "off":
        return [], None
    if setting == "no-sdk":
        return [OpenTelemetry(tracer_provider=NoOpTracerProvider())], None
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=100_000))
    return [OpenTelemetry(tracer_provider=provider)], provider


def one_round(setting: str, messages: int) -> tuple[float, float]:
    """Return (send, send+process) CPU seconds for ``messages`` messages."""
    middleware, provider = _middleware(setting)
    broker = StubBroker()
    for m in middleware:
        broker.add_middleware(m)
    nbqueue.set_broker(broker)

    @nbqueue.actor(broker=broker, queue_name="bench", actor_name="noop")
    def noop(i: int) -> None:
        pass

    start = time.process_time()
    for i in range(messages):
        noop.send(i)
    sent = time.process_time()
    worker = nbqueue.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    broker.join("bench")
    worker.join()
    if provider is not None:
        provider.force_flush()  # the exporter thread's work counts too
    done = time.process_time()
    worker.stop()
    broker.close()
    if provider is not None:
        provider.shutdown()
    return sent - start, done - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    settings = ["off", "no-sdk", "sdk"]
    one_round("sdk", 500)  # warm-up: imports, first spans
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in settings}
    for _ in range(args.rounds):
        for setting in settings:  # interleaved, so that drifts hit every setting alike
            results[setting].append(one_round(setting, args.messages))
    per = {
        s: (
            statistics.median(r[0] for r in rounds) / args.messages * 1e6,
            statistics.median(r[1] for r in rounds) / args.messages * 1e6,
        )
        for s, rounds in results.items()
    }
    print(f"{args.messages} messages, median of {args.rounds} rounds, CPU µs per message")
    print(f"{'setting':8} {'send':>8} {'+/-off':>8} {'send+run':>9} {'+/-off':>8}")
    for s in settings:
        send, total = per[s]
        print(
            f"{s:8} {send:8.1f} {send - per['off'][0]:+8.1f} {total:9.1f} "
            f"{total - per['off'][1]:+8.1f}"
        )


if __name__ == "__main__":
    main()
