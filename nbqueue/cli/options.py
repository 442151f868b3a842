"""The command line of ``nbqueue worker``: the parser, ``Options`` and the exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from enum import IntEnum

from .. import __version__
from ..worker import MIN_HEARTBEAT_TTL

__all__ = [
    "EXIT_CODES",
    "RET_CONNECT",
    "RET_IMPORT",
    "RET_KILLED",
    "RET_OK",
    "RET_PIDFILE",
    "ExitCode",
    "Options",
    "make_argument_parser",
    "parse_options",
]


class ExitCode(IntEnum):
    """The exit codes of the ``nbqueue`` command (the same numbers as Dramatiq's)."""

    OK = 0
    KILLED = 1
    USAGE = 2
    CONNECTION_FAILED = 3
    PIDFILE = 4


EXIT_CODES = frozenset(int(code) for code in ExitCode)

#: Dramatiq's names of the exit codes (``dramatiq.cli.RET_*``).
RET_OK = int(ExitCode.OK)
RET_KILLED = int(ExitCode.KILLED)
RET_IMPORT = int(ExitCode.USAGE)
RET_CONNECT = int(ExitCode.CONNECTION_FAILED)
RET_PIDFILE = int(ExitCode.PIDFILE)

#: The bounds of ``--worker-fork-timeout``, in milliseconds (Dramatiq's).
FORK_TIMEOUT_MIN = 10.0
FORK_TIMEOUT_MAX = 1_800_000.0

#: Where a results store for an ``amqp://`` broker is read from (a ``redis://`` URL).
RESULTS_URL_ENV = "NBQUEUE_RESULTS_URL"

HELP_EPILOG = """\
examples:
  nbqueue worker tasks                    actors in ./tasks.py, broker from NBQUEUE_BROKER_URL
                                          (in-memory if unset)
  nbqueue tasks                           the same; "worker" may be left out
  nbqueue worker tasks:broker             the Broker instance tasks.broker
  nbqueue worker app:setup_broker tasks   call app.setup_broker(), then import tasks
  nbqueue worker tasks --broker redis://127.0.0.1:6379/0 --processes 4
  nbqueue worker tasks -Q default emails  consume only these queues
  nbqueue worker tasks --watch .          reload the worker processes when a .py file changes
  nbqueue worker tasks --pid-file /tmp/nbqueue.pid --log-file /tmp/nbqueue.log
  nbqueue worker tasks -f metrics:serve   also run metrics.serve() in a process of its own
  nbqueue worker tasks --tracing          trace messages with OpenTelemetry
  nbqueue status --broker redis://...     list the live workers and the queues (--help there)
  NBQUEUE_SECRET=... nbqueue worker tasks --broker redis://... --notebook-actors

processes:
  --processes defaults to 1: with the in-memory broker every process has its own queue, so
  only messages sent from inside the worker process reach it. Use a Redis or RabbitMQ broker
  and pass --processes N to run N worker processes. A worker process that crashes is
  restarted, with a growing delay; after 5 crashes in a row everything stops (exit code 1).

broker from a URL:
  a broker built from --broker or NBQUEUE_BROKER_URL stores results and the live status of
  messages (what notebooks watch) in Redis: on the broker's server for redis:// URLs, and on
  NBQUEUE_RESULTS_URL for amqp:// URLs (without it, an amqp:// worker stores no results).
  A broker named by MODULE:BROKER is used exactly as the module configured it.

notebook actors:
  --notebook-actors also runs actors published from notebooks (%%actor --remote). Their code is
  signed: give the shared secret in NBQUEUE_SECRET or in a file with --secret-file, never on
  the command line (other users can read it there).

tracing:
  --tracing (or NBQUEUE_TRACING=opentelemetry) puts the OpenTelemetry middleware first on the
  broker the worker serves, however it was chosen (needs pip install 'nbqueue[opentelemetry]');
  each message's span is a child of its sender's. Configure the SDK and an exporter in your
  modules or with opentelemetry-instrument; off by default.

fork functions:
  --fork-function MODULE:FUNCTION (repeatable) and the `forks` of the broker's middleware run
  in processes of their own, started once the worker processes booted (waiting at most
  --worker-fork-timeout ms). A fork process that crashes is restarted like a worker process.

signals:
  the first SIGTERM or SIGINT stops gracefully: running messages get up to
  --worker-shutdown-timeout ms to finish (then they are handed back to the broker and run
  again elsewhere), prefetched ones are requeued at once. A second signal exits at once
  (code 1); durable brokers redeliver the messages that were running.
  SIGHUP reloads: every worker and fork process stops gracefully and a new one, with freshly
  imported code, takes its place (--watch sends it when a .py file changes).

exit codes:
  0  stopped normally
  1  killed by a second signal, or a worker process kept crashing
  2  bad arguments, or a module or broker could not be imported
  3  the broker's server could not be reached at boot
  4  the --pid-file names a running process, holds garbage or cannot be written
"""


@dataclasses.dataclass(frozen=True)
class Options:
    """The parsed command line, picklable so that worker processes receive it.

    Attributes:
      modules: the ``MODULE[:ATTR]`` specs, in the order given.
      processes: how many worker processes to run.
      threads: worker threads per process.
      queues: the queues to consume, or ``None`` for all.
      paths: folders put in front of ``sys.path``.
      broker_url: the broker URL from ``--broker`` or ``NBQUEUE_BROKER_URL``.
      broker_url_source: where ``broker_url`` came from, for messages.
      namespace: the Redis key namespace of a broker built from a URL.
      queue_type: the RabbitMQ queue type of a broker built from a URL (``classic`` or
        ``quorum``), or ``None`` for the URL's or the environment's.
      shutdown_timeout: milliseconds running messages get to finish at shutdown.
      notebook_actors: whether to run actors published from notebooks.
      secret_file: the file holding the shared secret of notebook actors (never the secret
        itself, which each process reads when it boots).
      verbose: how many ``-v`` were given.
      skip_logging: leave logging unconfigured (no handler, no level).
      log_file: the file logs are appended to instead of stderr.
      pid_file: the file the main process writes its PID to.
      forks: the ``--fork-function`` specs, ``MODULE:FUNCTION``.
      worker_fork_timeout: milliseconds to wait for the worker processes to boot before
        starting the fork processes.
      watch: the folder whose ``.py`` files reload the workers when they change.
      watch_use_polling: poll the folder instead of using the system's file events.
      watch_include: glob patterns of files that reload (``**.py`` always among them).
      watch_exclude: glob patterns of files that never reload.
      use_spawn: ``--use-spawn`` was given (nbqueue always spawns).
      tracing: ``--tracing`` was given: trace messages with OpenTelemetry.
      heartbeat_ttl: milliseconds a worker's record in the worker registry lives after its
        last heartbeat (``None``: ``NBQUEUE_WORKER_HEARTBEAT_TTL`` or 30000).
    """

    modules: tuple[str, ...]
    processes: int = 1
    threads: int = 8
    queues: tuple[str, ...] | None = None
    paths: tuple[str, ...] = (".",)
    broker_url: str | None = None
    broker_url_source: str = "--broker"
    namespace: str | None = None
    queue_type: str | None = None
    shutdown_timeout: int = 600_000
    notebook_actors: bool = False
    secret_file: str | None = None
    verbose: int = 0
    skip_logging: bool = False
    log_file: str | None = None
    pid_file: str | None = None
    forks: tuple[str, ...] = ()
    worker_fork_timeout: float = 30_000.0
    watch: str | None = None
    watch_use_polling: bool = False
    watch_include: tuple[str, ...] = ("**.py",)
    watch_exclude: tuple[str, ...] = ()
    use_spawn: bool = False
    tracing: bool = False
    heartbeat_ttl: int | None = None


def version() -> str:
    """Return nbqueue's version."""
    return __version__


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _heartbeat_ttl(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if value < MIN_HEARTBEAT_TTL:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_HEARTBEAT_TTL} ms, got {value}")
    return value


def _fork_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if value < FORK_TIMEOUT_MIN:
        raise argparse.ArgumentTypeError(
            f"{value:g} ms is too small; pass at least {FORK_TIMEOUT_MIN:.0f} ms"
        )
    if value > FORK_TIMEOUT_MAX:
        raise argparse.ArgumentTypeError(
            f"{value:.0f} ms is too large; pass at most {FORK_TIMEOUT_MAX:.0f} ms (30 minutes)"
        )
    return value


def _fork_spec(text: str) -> str:
    module, _, function = text.partition(":")
    names = [*module.split("."), *function.split(".")]
    if not module or not function or not all(name.isidentifier() for name in names):
        raise argparse.ArgumentTypeError(
            f"expected MODULE:FUNCTION, e.g. metrics:serve, got {text!r}"
        )
    return text


def _folder(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
    return os.path.abspath(text)


def make_argument_parser() -> argparse.ArgumentParser:
    """Return the parser of ``nbqueue [worker] ...``."""
    parser = argparse.ArgumentParser(
        prog="nbqueue",
        usage="nbqueue [worker] MODULE[:BROKER] [MODULE ...] [options]",
        description="Run an nbqueue worker for the actors declared in MODULE(s).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=HELP_EPILOG,
    )
    parser.add_argument(
        "modules",
        metavar="MODULE[:BROKER]",
        nargs="+",
        help="modules to import; MODULE:ATTR names a Broker or a function that sets one up",
    )
    parser.add_argument(
        "--processes",
        "-p",
        metavar="N",
        type=_positive_int,
        default=1,
        help="worker processes to run (default: 1; see 'processes' below)",
    )
    parser.add_argument(
        "--threads",
        "-t",
        metavar="N",
        type=_positive_int,
        default=8,
        help="worker threads per process (default: 8)",
    )
    parser.add_argument(
        "--queues",
        "-Q",
        nargs="*",
        metavar="QUEUE",
        help="consume only these queues (default: all)",
    )
    parser.add_argument(
        "--path",
        "-P",
        nargs="*",
        metavar="DIR",
        default=["."],
        help="folders to import modules from, put in front of sys.path (default: .)",
    )
    parser.add_argument(
        "--broker",
        "-b",
        metavar="URL",
        help="broker URL (memory://, redis://, rediss://, amqp://, amqps://); "
        "default: $NBQUEUE_BROKER_URL",
    )
    parser.add_argument(
        "--namespace",
        metavar="NS",
        help="Redis key namespace of a broker built from a URL (default: dramatiq, as Dramatiq); "
        "the same as %%nbqueue connect --namespace",
    )
    parser.add_argument(
        "--queue-type",
        choices=("classic", "quorum"),
        help="RabbitMQ queue type of a broker built from a URL (default: the URL's ?queue_type=, "
        "else $NBQUEUE_RABBITMQ_QUEUE_TYPE, else classic); every producer and worker must agree",
    )
    parser.add_argument(
        "--worker-shutdown-timeout",
        type=_non_negative_int,
        default=600_000,
        metavar="MS",
        help="milliseconds running messages get to finish after the first signal (default: 600000)",
    )
    parser.add_argument(
        "--heartbeat-ttl",
        type=_heartbeat_ttl,
        metavar="MS",
        help="milliseconds a worker stays listed by nbqueue status after its last heartbeat; it "
        "beats every third of that (default: $NBQUEUE_WORKER_HEARTBEAT_TTL or 30000)",
    )
    parser.add_argument(
        "--notebook-actors",
        action="store_true",
        help="also run actors published from notebooks (%%%%actor --remote); their code must be "
        "signed with the secret from $NBQUEUE_SECRET or --secret-file",
    )
    parser.add_argument(
        "--secret-file",
        metavar="PATH",
        help="file holding the shared secret of notebook actors (default: $NBQUEUE_SECRET)",
    )
    parser.add_argument(
        "--pid-file",
        metavar="PATH",
        help="write the PID of the main process to this file; a stale one is replaced, one of a "
        "running process exits with code 4",
    )
    parser.add_argument(
        "--log-file", metavar="PATH", help="append the logs to this file (default: stderr)"
    )
    parser.add_argument(
        "--skip-logging",
        action="store_true",
        help="do not configure logging (no handler, no level): your modules set it up",
    )
    parser.add_argument(
        "--use-spawn",
        action="store_true",
        help="accepted for Dramatiq compatibility: nbqueue always starts processes with spawn",
    )
    parser.add_argument(
        "--fork-function",
        "-f",
        action="append",
        dest="forks",
        default=[],
        type=_fork_spec,
        metavar="MODULE:FUNCTION",
        help="also run MODULE.FUNCTION() in a process of its own (repeatable)",
    )
    parser.add_argument(
        "--worker-fork-timeout",
        type=_fork_timeout,
        default=30_000.0,
        metavar="MS",
        help="milliseconds to wait for the worker processes to boot before starting the fork "
        "processes (10 to 1800000, default: 30000)",
    )
    parser.add_argument(
        "--watch",
        type=_folder,
        metavar="DIR",
        help="reload the worker processes when a .py file under DIR changes (for development; "
        "needs pip install 'nbqueue[watch]')",
    )
    parser.add_argument(
        "--watch-use-polling",
        action="store_true",
        help="with --watch, poll the folder instead of using the system's file events",
    )
    parser.add_argument(
        "--watch-include",
        "-i",
        action="append",
        dest="include_patterns",
        default=["**.py"],
        metavar="GLOB",
        help="with --watch, more files that reload (repeatable; **.py always reloads)",
    )
    parser.add_argument(
        "--watch-exclude",
        "-x",
        action="append",
        dest="exclude_patterns",
        default=[],
        metavar="GLOB",
        help="with --watch, files that never reload (repeatable)",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="trace messages with OpenTelemetry (needs pip install 'nbqueue[opentelemetry]'; "
        "the same as NBQUEUE_TRACING=opentelemetry)",
    )
    parser.add_argument("--verbose", "-v", action="count", default=0, help="log debug messages too")
    parser.add_argument("--version", action="version", version=f"nbqueue {version()}")
    return parser


def parse_options(argv: Sequence[str]) -> Options:
    """Parse a command line (without the program name) into ``Options``.

    Raises:
      SystemExit: on bad arguments (code 2), ``--help`` or ``--version`` (code 0), after
        argparse printed the reason.
    """
    args = list(argv)
    if args and args[0] == "worker":
        args = args[1:]
    ns = make_argument_parser().parse_args(args)
    broker_url, source = ns.broker, "--broker"
    if broker_url is None:
        broker_url = os.environ.get("NBQUEUE_BROKER_URL", "").strip() or None
        source = "NBQUEUE_BROKER_URL"
    return Options(
        modules=tuple(ns.modules),
        processes=ns.processes,
        threads=ns.threads,
        queues=tuple(ns.queues) if ns.queues else None,
        paths=tuple(os.path.abspath(p) for p in ns.path),
        broker_url=broker_url,
        broker_url_source=source,
        namespace=ns.namespace,
        queue_type=ns.queue_type,
        shutdown_timeout=ns.worker_shutdown_timeout,
        notebook_actors=ns.notebook_actors,
        secret_file=os.path.abspath(ns.secret_file) if ns.secret_file else None,
        verbose=ns.verbose,
        skip_logging=ns.skip_logging,
        log_file=os.path.abspath(ns.log_file) if ns.log_file else None,
        pid_file=os.path.abspath(ns.pid_file) if ns.pid_file else None,
        forks=tuple(ns.forks),
        worker_fork_timeout=ns.worker_fork_timeout,
        watch=ns.watch,
        watch_use_polling=ns.watch_use_polling,
        watch_include=tuple(ns.include_patterns),
        watch_exclude=tuple(ns.exclude_patterns),
        use_spawn=ns.use_spawn,
        tracing=ns.tracing,
        heartbeat_ttl=ns.heartbeat_ttl,
    )
