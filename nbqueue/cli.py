"""The ``nbqueue`` command: run workers outside the notebook.

``nbqueue worker MODULE[:BROKER]... [options]`` (or just ``nbqueue MODULE...``, or
``python -m nbqueue ...``) imports the modules that declare your actors and runs a worker for
them until it receives SIGTERM or SIGINT.

How the broker is chosen, first match wins:

1. ``--broker URL``, else the ``NBQUEUE_BROKER_URL`` environment variable: the broker is built
   from the URL before any module is imported, so every actor binds to it;
2. ``MODULE:ATTR``: the attribute (dotted names allowed) is a ``Broker``, made the global broker,
   or a callable that sets the broker up, called with no arguments, after which the global broker
   is used;
3. otherwise the global broker after importing the first module (in-memory unless that module
   configures one).

The broker's ``after_process_boot`` hook runs after the broker is known and before the remaining
modules are imported, as in Dramatiq.

Processes. ``--processes`` defaults to 1, not to the number of CPUs as in Dramatiq: with the
in-memory broker each process would have a private queue, so extra processes only waste memory.
With one process the worker runs in the ``nbqueue`` process itself. With a Redis or RabbitMQ
broker pass ``--processes N``: N worker processes are started with the ``spawn`` method, signals
are forwarded to them, and one that crashes is restarted with an exponential backoff, giving up
after a few crashes in a row.

Signals. The first SIGTERM or SIGINT stops gracefully: messages being processed get up to
``--worker-shutdown-timeout`` milliseconds to finish and prefetched ones go back to their queue.
A second signal exits at once with code 1; durable brokers redeliver what was in flight.

Exit codes:

- 0: the worker stopped normally;
- 1: it was killed by a second signal, or a worker process kept crashing;
- 2: bad arguments, or a module or broker could not be imported;
- 3: the broker's server could not be reached at boot.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.util
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from enum import IntEnum
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

from .broker import Broker, get_broker, set_broker
from .common import redact_url
from .errors import BrokerConnectionError, BrokerUnavailable

__all__ = ["ExitCode", "main"]

#: Dramatiq's log line layout, so log tooling written for Dramatiq keeps working.
LOG_FORMAT = (
    "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"
)


class ExitCode(IntEnum):
    """The exit codes of the ``nbqueue`` command (the same numbers as Dramatiq's)."""

    OK = 0
    KILLED = 1
    USAGE = 2
    CONNECTION_FAILED = 3


EXIT_CODES = frozenset(int(code) for code in ExitCode)

HELP_EPILOG = """\
examples:
  nbqueue worker tasks                    actors in ./tasks.py, broker from NBQUEUE_BROKER_URL
                                          (in-memory if unset)
  nbqueue tasks                           the same; "worker" may be left out
  nbqueue worker tasks:broker             the Broker instance tasks.broker
  nbqueue worker app:setup_broker tasks   call app.setup_broker(), then import tasks
  nbqueue worker tasks --broker redis://127.0.0.1:6379/0 --processes 4
  nbqueue worker tasks -Q default emails  consume only these queues

processes:
  --processes defaults to 1: with the in-memory broker every process has its own queue, so
  only messages sent from inside the worker process reach it. Use a Redis or RabbitMQ broker
  and pass --processes N to run N worker processes.

signals:
  the first SIGTERM or SIGINT stops gracefully (running messages finish, prefetched ones are
  requeued); a second one exits at once.

exit codes:
  0  stopped normally
  1  killed by a second signal, or a worker process kept crashing
  2  bad arguments, or a module or broker could not be imported
  3  the broker's server could not be reached at boot
"""


class Killed(BaseException):
    """Raised in the main thread by the second termination signal, to exit without waiting."""


class BootError(Exception):
    """A problem found while booting, reported as one line and mapped to an exit code."""

    def __init__(self, code: ExitCode, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


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
      shutdown_timeout: milliseconds running messages get to finish at shutdown.
      verbose: how many ``-v`` were given.
    """

    modules: tuple[str, ...]
    processes: int = 1
    threads: int = 8
    queues: tuple[str, ...] | None = None
    paths: tuple[str, ...] = (".",)
    broker_url: str | None = None
    broker_url_source: str = "--broker"
    shutdown_timeout: int = 600_000
    verbose: int = 0


def version() -> str:
    """Return nbqueue's version."""
    try:
        from . import __version__
    except ImportError:  # pragma: no cover - only while the package is half built
        from importlib.metadata import version as distribution_version

        return distribution_version("nbqueue")
    return str(__version__)


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
        nargs="+",
        metavar="QUEUE",
        help="consume only these queues (default: all)",
    )
    parser.add_argument(
        "--path",
        "-P",
        nargs="+",
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
        "--worker-shutdown-timeout",
        type=_non_negative_int,
        default=600_000,
        metavar="MS",
        help="milliseconds running messages get to finish after the first signal (default: 600000)",
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
        shutdown_timeout=ns.worker_shutdown_timeout,
        verbose=ns.verbose,
    )


def _secrets(url: str | None) -> list[tuple[str, str]]:
    """Return (text, replacement) pairs that hide the password of ``url`` in any output."""
    if not url:
        return []
    pairs = [(url, redact_url(url))]
    for part in url.split(";"):
        try:
            password = urlsplit(part).password
        except ValueError:
            continue
        if password:
            # Very short passwords are not replaced on their own: that would garble every line.
            pairs += [(p, "***") for p in {password, unquote(password)} if len(p) >= 4]
    return pairs


def _redact(text: str, secrets: list[tuple[str, str]]) -> str:
    for secret, replacement in secrets:
        text = text.replace(secret, replacement)
    return text


class _RedactingFormatter(logging.Formatter):
    """Formats records, then hides the broker password wherever it appears (tracebacks too)."""

    def __init__(self, secrets: list[tuple[str, str]]) -> None:
        super().__init__(LOG_FORMAT)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return _redact(super().format(record), self.secrets)


@dataclasses.dataclass
class _LoggingSetup:
    handler: logging.Handler
    previous_level: int

    def undo(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self.previous_level)
        self.handler.flush()


def setup_logging(options: Options) -> _LoggingSetup:
    """Send log records to stderr in Dramatiq's format; undone when ``main()`` returns."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter(_secrets(options.broker_url)))
    root = logging.getLogger()
    setup = _LoggingSetup(handler, root.level)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if options.verbose else logging.INFO)
    logging.getLogger("pika").setLevel(logging.WARNING)
    return setup


class SignalCatcher:
    """Turns SIGTERM/SIGINT into a wake-up of the main thread, through a socket pair.

    The handlers only write a byte, so they never take a lock the interrupted code may hold.
    With ``kill_on_second`` the second signal raises ``Killed`` in the main thread, which
    interrupts whatever it is waiting for (such as a graceful stop); later ones are ignored.

    Parameters:
      signums: the signals to catch.
      kill_on_second: whether a second signal raises ``Killed``.
      same_within: seconds after the first signal during which a repeat counts as the same one.
    """

    def __init__(
        self, signums: Sequence[int], *, kill_on_second: bool, same_within: float = 0.0
    ) -> None:
        self.signums = list(signums)
        self.kill_on_second = kill_on_second
        self.same_within = same_within
        self.received: list[int] = []
        self._first_at = 0.0
        self._count = 0
        self.stop_requested = False
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._previous: dict[int, Any] = {}
        self._previous_wakeup_fd = -1

    def install(self) -> None:
        """Install the handlers; call from the main thread."""
        for signum in self.signums:
            self._previous[signum] = signal.signal(signum, self._handle)
        # The kernel may deliver the signal to any thread; then only this wake-up fd (written by
        # Python's C-level handler) interrupts the main thread's select().
        self._previous_wakeup_fd = signal.set_wakeup_fd(
            self._wsock.fileno(), warn_on_full_buffer=False
        )

    def restore(self) -> None:
        """Put the previous handlers back and release the sockets."""
        if self._previous:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        self._rsock.close()
        self._wsock.close()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.received and now - self._first_at < self.same_within:
            return
        if not self.received:
            self._first_at = now
        self.received.append(signum)
        self.request_stop(counts_as_signal=True)

    def request_stop(self, *, counts_as_signal: bool = False) -> None:
        """Ask for a graceful stop and wake ``wait()``.

        Parameters:
          counts_as_signal: whether this counts like a signal, so that the next one is the
            second (which kills when ``kill_on_second`` is set); later ones are ignored.
        """
        if counts_as_signal:
            self._count += 1
            if self.kill_on_second and self._count == 2:
                raise Killed()
        self.stop_requested = True
        self.wake()

    def wake(self) -> None:
        """Make ``wait()`` return."""
        try:
            self._wsock.send(b"\0")
        except OSError:  # the buffer is full: a wake-up is already pending
            pass

    def fileno(self) -> int:
        """The file descriptor that becomes readable on a wake-up."""
        return self._rsock.fileno()

    def drain(self) -> None:
        """Consume pending wake-ups."""
        try:
            while self._rsock.recv(4096):
                pass
        except OSError:
            pass

    def wait(self, timeout: float | None = None, *, also: Sequence[int] = ()) -> bool:
        """Block until a wake-up, until a file descriptor in ``also`` is readable or for
        ``timeout`` seconds.

        Returns:
          Whether a file descriptor in ``also`` is readable.
        """
        fds = [self._rsock.fileno(), *also]
        ready, _, _ = select.select(fds, [], [], timeout)
        self.drain()
        return any(fd in ready for fd in also)


def signal_name(signum: int) -> str:
    """Return ``"SIGTERM"`` for SIGTERM, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def termination_signals() -> list[int]:
    """Return the signals that stop a worker on this platform."""
    signums: list[int] = [signal.SIGTERM, signal.SIGINT]
    if hasattr(signal, "SIGBREAK"):  # pragma: no cover - Windows
        signums.append(signal.SIGBREAK)
    return signums


def split_spec(spec: str) -> tuple[str, str | None]:
    """Split ``MODULE[:ATTR]`` and check that MODULE looks like a module name."""
    module_name, _, attr = spec.partition(":")
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        path = module_name.removesuffix(".py")
        folder, name = os.path.split(path)
        hint = f"pass the module name {name!r}" + (f" with --path {folder}" if folder else "")
        raise BootError(
            ExitCode.USAGE, f"{spec!r} looks like a file path, not a module name; {hint} instead."
        )
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise BootError(
            ExitCode.USAGE,
            f"{spec!r} is not a module name; pass MODULE or MODULE:BROKER, e.g. tasks or tasks:broker.",
        )
    if ":" in spec and (not attr or not all(part.isidentifier() for part in attr.split("."))):
        raise BootError(
            ExitCode.USAGE,
            f"{spec!r} does not name an attribute after ':'; pass MODULE:BROKER, e.g. tasks:broker.",
        )
    return module_name, attr or None


def _import(module_name: str) -> Any:
    """Import a user module, turning failures into one clear line."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise BootError(
                ExitCode.USAGE,
                f"Could not import {module_name!r}: {e}; run from the project folder or pass --path.",
            ) from e
        raise BootError(
            ExitCode.USAGE,
            f"Could not import {module_name!r}: {e}; install {missing!r} in this Python environment.",
        ) from e
    except BrokerConnectionError:
        raise
    except Exception as e:
        raise BootError(
            ExitCode.USAGE,
            f"Could not import {module_name!r}: {type(e).__name__}: {e}; fix the error in the "
            f"traceback above.",
            details=traceback.format_exc(),
        ) from e


def _resolve_broker(module: Any, module_name: str, attr: str) -> Broker:
    try:
        value = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise BootError(
            ExitCode.USAGE,
            f"Module {module_name!r} has no attribute {attr!r}; check the name after ':'.",
        ) from None
    if isinstance(value, Broker):
        set_broker(value)
        return value
    if callable(value):
        try:
            value()
        except BrokerConnectionError:
            raise
        except Exception as e:
            raise BootError(
                ExitCode.USAGE,
                f"Calling {module_name}:{attr}() failed: {type(e).__name__}: {e}; fix the error in "
                f"the traceback above.",
                details=traceback.format_exc(),
            ) from e
        return get_broker()
    raise BootError(
        ExitCode.USAGE,
        f"{module_name}:{attr} is a {type(value).__name__}, not a Broker; point MODULE:ATTR at a "
        f"Broker or at a function that sets one up.",
    )


def _broker_from_url(url: str, source: str) -> Broker:
    from .connection import broker_from_url

    try:
        broker = broker_from_url(url)
    except BrokerUnavailable as e:
        raise BootError(ExitCode.USAGE, str(e)) from e
    except ValueError as e:
        raise BootError(
            ExitCode.USAGE, f"The broker URL in {source} is invalid: {e}; fix it and retry."
        ) from e
    set_broker(broker)
    return broker


def add_paths(options: Options) -> None:
    """Put the ``--path`` folders in front of ``sys.path``, first one first.

    Raises:
      BootError: a folder does not exist.
    """
    for path in reversed(options.paths):
        if not os.path.isdir(path):
            raise BootError(
                ExitCode.USAGE, f"--path {path!r} is not a folder; pass the folder of your modules."
            )
        if path not in sys.path:
            sys.path.insert(0, path)


def _boot(options: Options) -> Broker:
    """Pick the broker, emit ``process_boot`` and import every module.

    Raises:
      BootError: a module or broker could not be set up.
      BrokerConnectionError: the broker's server could not be reached.
    """
    add_paths(options)
    specs = [split_spec(spec) for spec in options.modules]
    named = [(module_name, attr) for module_name, attr in specs if attr is not None]
    if len(named) > 1:
        raise BootError(
            ExitCode.USAGE,
            f"Only one MODULE:BROKER may name the broker, got {', '.join(f'{m}:{a}' for m, a in named)}; "
            f"keep one and list the other modules without ':'.",
        )
    if named and options.broker_url is not None and options.broker_url_source == "--broker":
        raise BootError(
            ExitCode.USAGE,
            f"Both --broker and {named[0][0]}:{named[0][1]} name a broker; pass only one of them.",
        )

    remaining = [module_name for module_name, _ in specs]
    if named:
        module_name, attr = named[0]
        remaining.remove(module_name)
        broker = _resolve_broker(_import(module_name), module_name, attr)
    elif options.broker_url is not None:
        broker = _broker_from_url(options.broker_url, options.broker_url_source)
    else:
        _import(remaining.pop(0))
        broker = get_broker()

    broker.emit_after("process_boot")
    for module_name in remaining:
        _import(module_name)
    return broker


def _describe_broker(broker: Broker, options: Options) -> str:
    url = options.broker_url
    if url is None:
        url = getattr(broker, "url", None)
    name = type(broker).__name__
    return f"{name} at {redact_url(url)}" if isinstance(url, str) and url else name


def _log_boot(
    logger: logging.Logger, broker: Broker, options: Options, *, warn_memory: bool
) -> None:
    from .brokers.stub import StubBroker

    logger.info(
        "nbqueue %s is booting: broker %s, %d worker thread(s).",
        version(),
        _describe_broker(broker, options),
        options.threads,
    )
    by_queue: dict[str, list[str]] = {}
    for name in sorted(broker.get_declared_actors()):
        by_queue.setdefault(broker.get_actor(name).queue_name, []).append(name)
    if options.queues is not None:
        for queue in options.queues:
            if queue not in by_queue:
                logger.warning(
                    "--queues names %r, but no imported actor uses that queue; check the spelling "
                    "or import the module that declares it.",
                    queue,
                )
        by_queue = {q: names for q, names in by_queue.items() if q in options.queues}
    if not by_queue:
        logger.warning(
            "No actors to serve; check that %s declare @actor functions%s.",
            ", ".join(options.modules),
            " on the queues given with --queues" if options.queues else "",
        )
    for queue, names in sorted(by_queue.items()):
        logger.info("Queue %r: actors %s.", queue, ", ".join(names))
    if warn_memory and isinstance(broker, StubBroker):
        logger.warning(
            "The broker is in-memory: only messages sent from inside this worker process reach "
            "it. Pass --broker redis://... (or set NBQUEUE_BROKER_URL) to take work from other "
            "processes."
        )


def serve(
    options: Options,
    catcher: SignalCatcher,
    *,
    process_name: str,
    warn_memory: bool = True,
    on_booted: Callable[[], None] | None = None,
    parent_sentinel: int | None = None,
) -> ExitCode:
    """Boot, run one worker until the first signal, then stop it gracefully.

    Parameters:
      options: the command line.
      catcher: the installed signal catcher.
      process_name: names the logger, ``nbqueue.<process_name>``.
      warn_memory: whether to warn when the broker is in-memory.
      on_booted: called once the worker runs.
      parent_sentinel: a file descriptor that becomes readable when the supervising process
        exits; the worker then stops as on a signal rather than run on as an orphan.

    Returns:
      The exit code.

    Raises:
      Killed: a second signal arrived.
    """
    from .worker import Worker

    logger = logging.getLogger(f"nbqueue.{process_name}")
    try:
        broker = _boot(options)
        _log_boot(logger, broker, options, warn_memory=warn_memory)
        worker = Worker(
            broker,
            queues=set(options.queues) if options.queues is not None else None,
            worker_threads=options.threads,
        )
        worker.start()
    except BootError as e:
        if e.details:
            sys.stderr.write(_redact(e.details, _secrets(options.broker_url)))
        report_error(e.message, options)
        return e.code
    except BrokerConnectionError as e:
        where = f" at {redact_url(options.broker_url)}" if options.broker_url else ""
        report_error(
            f"Could not connect to the broker{where}: {e}; check that its server is running and "
            f"reachable.",
            options,
        )
        return ExitCode.CONNECTION_FAILED

    if on_booted is not None:
        on_booted()
    logger.info("Worker is ready; send SIGTERM or press Ctrl-C to stop it.")
    watched = [parent_sentinel] if parent_sentinel is not None else []
    reason = "a stop request"
    while not catcher.stop_requested:
        if catcher.wait(also=watched):
            reason = "the exit of the supervising process"
            catcher.request_stop(counts_as_signal=True)
    if catcher.received:
        reason = signal_name(catcher.received[0])
    logger.info(
        "Received %s: stopping; running messages get up to %d ms to finish, and another "
        "SIGTERM exits at once.",
        reason,
        options.shutdown_timeout,
    )
    stopped = threading.Event()

    def stop() -> None:
        try:
            worker.stop(timeout=options.shutdown_timeout)
            broker.close()
        except Exception:
            logger.exception("The worker did not stop cleanly.")
        finally:
            stopped.set()
            catcher.wake()

    # The stop runs on a helper thread so that the main thread keeps waiting on the signal
    # socket: a second signal must interrupt it even while running messages finish.
    threading.Thread(target=stop, name="nbqueue-shutdown", daemon=True).start()
    while not stopped.is_set():
        catcher.wait()
    logger.info("Worker stopped.")
    return ExitCode.OK


def report_error(message: str, options: Options) -> None:
    sys.stderr.write(f"nbqueue: error: {_redact(message, _secrets(options.broker_url))}\n")
    sys.stderr.flush()


def flush_and_exit(code: int) -> None:
    """Exit the process now, without waiting for worker threads that are still running."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # pragma: no cover - a closed stream
            pass
    os._exit(code)


def _run_single(options: Options, *, own_process: bool) -> int:
    logger = logging.getLogger("nbqueue.MainProcess")
    catcher = SignalCatcher(termination_signals(), kill_on_second=True)
    catcher.install()
    try:
        return int(serve(options, catcher, process_name="MainProcess"))
    except Killed:
        logger.warning(
            "Received a second signal: exiting at once; durable brokers redeliver the messages "
            "that were running."
        )
        if own_process:
            flush_and_exit(ExitCode.KILLED)
        return int(ExitCode.KILLED)
    finally:
        catcher.restore()


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
    try:
        options = parse_options(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else ExitCode.USAGE
    if threading.current_thread() is not threading.main_thread():
        report_error(
            "nbqueue.cli.main() must run in the main thread to receive SIGTERM and SIGINT; "
            "call it from the main thread or start a Worker yourself.",
            options,
        )
        return int(ExitCode.USAGE)

    saved_path = list(sys.path)
    setup = setup_logging(options)
    try:
        if options.processes == 1:
            return _run_single(options, own_process=own_process)
        from .supervisor import run_processes

        return run_processes(options)
    finally:
        setup.undo()
        if not own_process:
            sys.path[:] = saved_path
