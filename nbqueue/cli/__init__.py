"""The ``nbqueue`` command: run workers outside the notebook, and check on them.

``nbqueue status --broker URL [--json] [--queues Q ...]`` lists the live workers, the queue
depths and the dead letters, with exit codes for orchestrators (``nbqueue.cli.status``; a
module named ``status`` is run with ``nbqueue worker status``).

``nbqueue worker MODULE[:BROKER]... [options]`` (or just ``nbqueue MODULE...``, or
``python -m nbqueue ...``) imports the modules that declare your actors and runs a worker for
them until it receives SIGTERM or SIGINT.

How the broker is chosen, first match wins:

1. ``--broker URL``, else the ``NBQUEUE_BROKER_URL`` environment variable: the broker is built
   from the URL before any module is imported, so every actor binds to it. It gets the same
   middleware as ``nbqueue.connect(url)`` gives a notebook (``nbqueue.connection``): results and
   live status in Redis (the broker's server for ``redis://``, ``NBQUEUE_RESULTS_URL`` for
   ``amqp://``; an ``amqp://`` worker without it stores no results), so a notebook can watch
   and read the jobs this worker runs. ``--namespace`` sets the Redis key namespace;
2. ``MODULE:ATTR``: the attribute (dotted names allowed) is a ``Broker``, made the global broker,
   or a callable that sets the broker up, called with no arguments, after which the global broker
   is used; it is used exactly as configured;
3. otherwise the global broker after importing the first module (in-memory unless that module
   configures one).

``--tracing`` (or ``NBQUEUE_TRACING=opentelemetry``) puts the ``OpenTelemetry`` middleware first on
the broker, however it was chosen; each process's spans go to the tracer provider its modules
(or ``opentelemetry-instrument``) configure.

The broker's ``after_process_boot`` hook runs after the broker is known and before the remaining
modules are imported, as in Dramatiq. Then ``nbqueue.remote.configure_worker`` installs the rule
for messages of actors this worker lacks and, with ``--notebook-actors``, the loader of actors
published from notebooks (their code is signed with the secret from ``NBQUEUE_SECRET`` or
``--secret-file``, never from the command line, which other users can read in ``ps``).

Processes. ``--processes`` defaults to 1, not to the number of CPUs as in Dramatiq: with the
in-memory broker each process would have a private queue, so extra processes only waste memory.
With one process the worker runs in the ``nbqueue`` process itself. With a Redis or RabbitMQ
broker pass ``--processes N``: N worker processes are started with the ``spawn`` method, signals
are forwarded to them, and one that crashes is restarted with an exponential backoff, giving up
after a few crashes in a row.

Signals. The first SIGTERM or SIGINT stops gracefully: messages being processed get up to
``--worker-shutdown-timeout`` milliseconds (Dramatiq's name) to finish; one still running then is
handed back to the broker and runs again; prefetched ones go back to their queue at once. A
second signal exits at once with code 1; durable brokers redeliver what was in flight.

Logs use Dramatiq's line layout; every line hides the broker's and the results store's
passwords and the notebook-actor secret. At boot each process logs its broker, its processes and
threads, and one line per queue with the actors it serves.

SIGHUP reloads: with worker processes, each stops gracefully and a fresh one replaces it (the
main process and its PID stay); with one process, the worker stops gracefully and the command
re-executes itself (same PID). ``--watch DIR`` (the ``watch`` extra) sends that SIGHUP when a
``.py`` file under DIR changes, and always runs worker processes, even with ``--processes 1``.
Fork functions (``--fork-function`` and middleware ``forks``) run in processes of their own; see
``nbqueue.cli.forks``. Dramatiq's ``--pid-file``, ``--log-file``, ``--skip-logging`` and
``--use-spawn`` (a no-op: nbqueue always spawns) are accepted.

Exit codes (Dramatiq's ``RET_*``):

- 0: the worker stopped normally;
- 1: it was killed by a second signal, or a worker process kept crashing;
- 2: bad arguments, or a module or broker could not be imported;
- 3: the broker's server could not be reached at boot;
- 4: the ``--pid-file`` names a running process, holds garbage or cannot be written.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence

from .boot import BootError, add_paths, check_notebook_actors, check_tracing, split_spec
from .logs import LOG_FORMAT, report_error, setup_logging
from .options import (
    EXIT_CODES,
    RET_CONNECT,
    RET_IMPORT,
    RET_KILLED,
    RET_OK,
    RET_PIDFILE,
    ExitCode,
    Options,
    make_argument_parser,
    parse_options,
    version,
)
from .pidfile import remove_pid_file, write_pid_file
from .serve import Reload, run_single, serve
from .signals import Killed, SignalCatcher, flush_and_exit, signal_name, termination_signals
from .status import main as status_main
from .supervisor import run_processes
from .watch import check_watch

__all__ = [
    "EXIT_CODES",
    "LOG_FORMAT",
    "RET_CONNECT",
    "RET_IMPORT",
    "RET_KILLED",
    "RET_OK",
    "RET_PIDFILE",
    "BootError",
    "ExitCode",
    "Killed",
    "Options",
    "SignalCatcher",
    "add_paths",
    "flush_and_exit",
    "main",
    "make_argument_parser",
    "parse_options",
    "report_error",
    "serve",
    "setup_logging",
    "signal_name",
    "split_spec",
    "termination_signals",
    "version",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nbqueue`` command.

    Parameters:
      argv: the arguments without the program name; ``None`` reads ``sys.argv`` and means this
        call owns the process, so a second signal ends it with ``os._exit(1)`` rather than
        returning while worker threads still run.

    Returns:
      The exit code (see ``ExitCode`` and the module docstring).
    """
    own_process = argv is None
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["status"]:
        return status_main(args[1:])
    try:
        options = parse_options(args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else ExitCode.USAGE
    if threading.current_thread() is not threading.main_thread():
        report_error(
            "nbqueue.cli.main() must run in the main thread to receive SIGTERM and SIGINT; "
            "call it from the main thread or start a Worker yourself.",
            options,
        )
        return int(ExitCode.USAGE)
    try:
        check_notebook_actors(options)
        check_tracing(options)
        check_watch(options)
        if options.pid_file is not None:
            write_pid_file(options.pid_file)
    except BootError as e:
        report_error(e.message, options)
        return int(e.code)

    saved_path = list(sys.path)
    reload = False
    try:
        try:
            setup = setup_logging(options)
        except OSError as e:
            report_error(
                f"Could not open --log-file {options.log_file!r}: {e.strerror or e}; pass a "
                f"writable path.",
                options,
            )
            return int(ExitCode.USAGE)
        try:
            if options.processes == 1 and options.watch is None:
                return run_single(options, own_process=own_process)
            return run_processes(options)
        except Reload:
            reload = True
            return int(ExitCode.OK)
        finally:
            setup.undo()
            if not own_process:
                sys.path[:] = saved_path
    finally:
        if reload:
            # The same command in a fresh interpreter, with the same PID (so the PID file stays).
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, "-m", "nbqueue", *sys.argv[1:]])
        if options.pid_file is not None:
            remove_pid_file(options.pid_file)
