"""``nbqueue status``: the health of a fleet, for people and for orchestrators.

``nbqueue status --broker URL [--json] [--queues Q ...] [--namespace NS] [--timeout S]`` asks
the broker's server, within one deadline, for

* the live workers, by heartbeat (``nbqueue.workers()``): id, host, pid, processes x threads,
  queues, the messages they run now, when they started and were last seen;
* the depth of each queue (``broker.queue_stats()``: ready, delayed, in flight, dead) and how
  many live workers consume it: the queues named with ``--queues``, else every queue a live
  worker consumes;
* the first dead letters of each queue that has some (id, actor, reason, error).

It prints them as tables, or with ``--json`` as one JSON document (``STATUS_SCHEMA``). The
broker comes from ``--broker``, else ``NBQUEUE_BROKER_URL``, built by the composition root as
for ``nbqueue worker``; a password in the URL never appears in the output.

Exit codes (``StatusCode``):

- 0: healthy: the broker answered and every queue named with ``--queues`` has a live worker;
- 2: bad arguments (no broker URL, ``memory://``, ``--namespace`` with a non-Redis URL);
- 3: the broker's server could not be reached, or did not answer within ``--timeout`` seconds
  (as ``nbqueue worker`` exits at boot);
- 5: a queue named with ``--queues`` has no live worker consuming it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from enum import IntEnum
from typing import Any
from urllib.parse import urlsplit

from ..broker import Broker, DeadLetter, QueueStats
from ..common import current_millis, redact_url
from ..connection import BROKER_URL_ENV, broker_from_url
from ..errors import BrokerConnectionError, BrokerError, BrokerUnavailable
from ..services import WorkerInfo
from ..worker import workers
from .logs import redact, url_secrets

__all__ = ["DEAD_LETTERS_SHOWN", "STATUS_SCHEMA", "StatusCode", "main"]

#: How many dead letters of each queue are shown (the oldest).
DEAD_LETTERS_SHOWN = 5

#: The version of the ``--json`` document's layout.
STATUS_SCHEMA = 1


class StatusCode(IntEnum):
    """The exit codes of ``nbqueue status``."""

    HEALTHY = 0
    USAGE = 2
    UNREACHABLE = 3
    UNSERVED = 5


class _Usage(Exception):
    pass


def make_parser() -> argparse.ArgumentParser:
    """Return the parser of ``nbqueue status``."""
    parser = argparse.ArgumentParser(
        prog="nbqueue status",
        description="Show the live workers, the queues and the dead letters of a broker.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""\
exit codes:
  0  healthy: every queue named with --queues has a live worker
  2  bad arguments
  3  the broker could not be reached or did not answer within --timeout seconds
  5  a queue named with --queues has no live worker consuming it
""",
    )
    parser.add_argument(
        "--broker",
        "-b",
        metavar="URL",
        help=f"broker URL (redis://, rediss://, amqp://, amqps://); default: ${BROKER_URL_ENV}",
    )
    parser.add_argument(
        "--queues",
        "-Q",
        nargs="+",
        metavar="QUEUE",
        help="the queues to show and require a live worker for (exit 5 otherwise); default: "
        "every queue a live worker consumes",
    )
    parser.add_argument(
        "--namespace", metavar="NS", help="Redis key namespace (default: dramatiq, as Dramatiq)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="the deadline of the whole check (default: 10)",
    )
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def _build_broker(url: str, namespace: str | None, source: str) -> Broker:
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        raise _Usage(
            "memory:// keeps its workers and queues inside one process, out of reach of "
            "nbqueue status; pass --broker redis://... or amqp://..."
        )
    kwargs: dict[str, Any] = {}
    if namespace is not None:
        if scheme not in ("redis", "rediss", "unix"):
            raise _Usage(
                f"--namespace applies to Redis brokers only, but {source} is "
                f"{redact_url(url)!r}; leave --namespace out."
            )
        kwargs["namespace"] = namespace
    try:
        return broker_from_url(url, **kwargs)
    except BrokerUnavailable as e:
        raise _Usage(str(e)) from e
    except ValueError as e:
        raise _Usage(f"The broker URL in {source} is invalid: {e}; fix it and retry.") from e


def gather(broker: Broker, queues: Sequence[str] | None) -> dict[str, Any]:
    """Ask ``broker`` for its live workers, queue depths and first dead letters.

    Returns:
      The ``--json`` document without ``broker``, ``healthy`` and ``exit_code``.

    Raises:
      BrokerConnectionError, BrokerError: the server failed a call.
    """
    live = workers(broker)
    names = sorted(set(queues) if queues else {q for info in live for q in info.queues})
    for name in names:
        broker.declare_queue(name)
    stats = broker.queue_stats()
    serving = {name: sum(name in info.queues for info in live) for name in names}
    letters: dict[str, list[DeadLetter]] = {}
    for name in names:
        counts = stats.get(name)
        if counts is not None and counts.dead:
            letters[name] = broker.get_dead_letters(name, limit=DEAD_LETTERS_SHOWN)
    return {
        "schema": STATUS_SCHEMA,
        "checked_at": current_millis(),
        "workers": [info.to_dict() for info in live],
        "queues": {name: {**_stats(stats.get(name)), "workers": serving[name]} for name in names},
        "dead_letters": {
            name: [_letter(letter) for letter in found] for name, found in letters.items()
        },
        "unserved": [name for name in (queues or []) if not serving[name]],
    }


def _stats(stats: QueueStats | None) -> dict[str, int | None]:
    if stats is None:
        return {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    return {
        "ready": stats.ready,
        "delayed": stats.delayed,
        "in_flight": stats.in_flight,
        "dead": stats.dead,
    }


def _letter(letter: DeadLetter) -> dict[str, Any]:
    message = letter.message
    return {
        "message_id": message.message_id if message is not None else None,
        "actor_name": message.actor_name if message is not None else None,
        "reason": letter.reason,
        "error": letter.error,
    }


def _ago(ms: int) -> str:
    seconds = max(0, ms) / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def render(document: dict[str, Any]) -> str:
    """Return the tables ``nbqueue status`` prints for a ``--json`` document."""
    now = int(document["checked_at"])
    live = [WorkerInfo.from_dict(data) for data in document["workers"]]
    queues: dict[str, dict[str, Any]] = document["queues"]
    namespace = document.get("namespace")
    where = document["broker"] + (f" (namespace {namespace!r})" if namespace else "")
    lines = [
        f"Broker {where}: {len(live)} live worker(s), {len(queues)} queue(s).",
        "",
    ]
    if live:
        rows = [["WORKER", "HOST", "PID", "PROCESSES x THREADS", "QUEUES", "RUNNING", "UP", "SEEN"]]
        for info in live:
            rows.append(
                [
                    info.id[:8],
                    info.host,
                    str(info.pid),
                    f"{info.processes} x {info.threads}",
                    ",".join(info.queues) or "-",
                    str(len(info.running)),
                    _ago(now - info.started_at),
                    f"{_ago(now - info.last_seen)} ago",
                ]
            )
        lines += _table(rows)
        for info in live:
            for message_id, actor_name in info.running:
                lines.append(f"  {info.id[:8]} runs {message_id} ({actor_name})")
    else:
        lines.append("No live workers.")
    lines.append("")
    if queues:
        rows = [["QUEUE", "READY", "DELAYED", "IN FLIGHT", "DEAD", "WORKERS"]]
        for name, counts in queues.items():
            in_flight = counts["in_flight"]
            rows.append(
                [
                    name,
                    str(counts["ready"]),
                    str(counts["delayed"]),
                    "?" if in_flight is None else str(in_flight),
                    str(counts["dead"]),
                    str(counts["workers"]),
                ]
            )
        lines += _table(rows)
    else:
        lines.append("No queues (name some with --queues).")
    for name, letters in document["dead_letters"].items():
        total = queues[name]["dead"]
        lines += ["", f"Dead letters of {name!r} ({total}; the oldest {len(letters)}):"]
        for letter in letters:
            error = f": {letter['error']}" if letter["error"] else ""
            lines.append(
                f"  {letter['message_id'] or '<undecodable>'} "
                f"({letter['actor_name'] or '?'}) {letter['reason']}{error}"
            )
    lines.append("")
    unserved = document["unserved"]
    if unserved:
        lines.append(
            "Unhealthy: no live worker consumes "
            + ", ".join(repr(name) for name in unserved)
            + f" (exit {int(StatusCode.UNSERVED)})."
        )
    else:
        lines.append("Healthy.")
    return "\n".join(lines)


def _error(text: str, secrets: list[tuple[str, str]]) -> None:
    sys.stderr.write(redact(f"nbqueue status: error: {text}", secrets) + "\n")
    sys.stderr.flush()


def main(argv: Sequence[str]) -> int:
    """Run ``nbqueue status`` (arguments without ``status``); return the exit code."""
    try:
        ns = make_parser().parse_args(list(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else int(StatusCode.USAGE)
    url, source = ns.broker, "--broker"
    if url is None:
        url, source = os.environ.get(BROKER_URL_ENV, "").strip() or None, BROKER_URL_ENV
    if not url:
        _error(f"no broker: pass --broker URL or set {BROKER_URL_ENV}.", [])
        return int(StatusCode.USAGE)
    secrets = sorted(url_secrets(url), key=lambda pair: -len(pair[0]))
    where = redact_url(url)
    try:
        broker = _build_broker(url, ns.namespace, source)
    except _Usage as e:
        _error(str(e), secrets)
        return int(StatusCode.USAGE)

    # Every broker call has its own deadline; this one bounds them all (a connect that retries,
    # a server that accepts and never answers), so an orchestrator's probe returns in time.
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["document"] = gather(broker, ns.queues)
        except BaseException as e:
            outcome["error"] = e

    started = time.monotonic()
    thread = threading.Thread(target=run, name="nbqueue-status", daemon=True)
    thread.start()
    thread.join(ns.timeout)
    if thread.is_alive():
        _error(
            f"the broker at {where} did not answer within {ns.timeout:g} s; check that its "
            f"server is running and reachable.",
            secrets,
        )
        return int(StatusCode.UNREACHABLE)
    try:
        error = outcome.get("error")
        if isinstance(error, BrokerConnectionError):
            text = str(error).rstrip(" .")
            _error(f"could not reach the broker at {where}: {text}.", secrets)
            return int(StatusCode.UNREACHABLE)
        if isinstance(error, BrokerError):
            _error(f"the broker at {where} failed the check: {error}", secrets)
            return int(StatusCode.UNREACHABLE)
        if error is not None:
            raise error
        document: dict[str, Any] = {
            "broker": where,
            "namespace": getattr(broker, "namespace", None),
            **outcome["document"],
        }
        code = StatusCode.UNSERVED if document["unserved"] else StatusCode.HEALTHY
        document["healthy"] = code == StatusCode.HEALTHY
        document["exit_code"] = int(code)
        document["elapsed_ms"] = round((time.monotonic() - started) * 1000)
        text = json.dumps(document, indent=2) if ns.json else render(document)
        sys.stdout.write(redact(text, secrets) + "\n")
        sys.stdout.flush()
        return int(code)
    finally:
        broker.close()
