"""Serving: boot one worker, run it until the first signal, then stop it gracefully."""

from __future__ import annotations

import logging
import select
import signal
import sys
import threading
import time
from collections.abc import Callable

from ..broker import Broker
from ..common import redact_url
from ..errors import BrokerConnectionError, SchedulesUnavailable
from ..worker import Worker
from .boot import BootError, boot, configure_notebook_actors, log_boot
from .forks import ForkGroup, middleware_forks
from .logs import redact, report_error, secrets_of
from .options import ExitCode, Options
from .signals import Killed, SignalCatcher, flush_and_exit, signal_name, termination_signals

__all__ = ["Reload", "run_single", "serve"]


class Reload(Exception):
    """Raised by ``run_single`` after a SIGHUP stopped the worker: re-execute the command."""


def _readable(fd: int) -> bool:
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)


def _timeout(forks: ForkGroup | None) -> float | None:
    deadline = forks.next_deadline() if forks is not None else None
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def serve(
    options: Options,
    catcher: SignalCatcher,
    *,
    process_name: str,
    warn_memory: bool = True,
    on_booted: Callable[[Broker], None] | None = None,
    parent_sentinel: int | None = None,
    forks: ForkGroup | None = None,
) -> ExitCode:
    """Boot, run one worker until the first signal, then stop it gracefully.

    Parameters:
      options: the command line.
      catcher: the installed signal catcher.
      process_name: names the logger, ``nbqueue.<process_name>``.
      warn_memory: whether to warn when the broker is in-memory.
      on_booted: called with the broker once the worker runs.
      parent_sentinel: a file descriptor that becomes readable when the supervising process
        exits; the worker then stops as on a signal rather than run on as an orphan.
      forks: when given (a single-process CLI), the fork processes of ``--fork-function`` and
        of the middleware are started in it once the worker runs, and stopped with it.

    Returns:
      The exit code.

    Raises:
      Killed: a second signal arrived.
    """
    logger = logging.getLogger(f"nbqueue.{process_name}")
    try:
        broker = boot(options)
        extra_queues = configure_notebook_actors(broker, options)
        log_boot(
            logger,
            broker,
            options,
            process=process_name,
            extra_queues=extra_queues,
            warn_memory=warn_memory,
        )
        queues = None if options.queues is None else {*options.queues, *extra_queues}
        # A wrong address or password is a boot failure (exit 3), not a consumer that retries
        # forever: the Redis and RabbitMQ brokers check their server here.
        broker.check_server()
        worker = Worker(
            broker,
            queues=queues,
            worker_threads=options.threads,
            heartbeat_ttl=options.heartbeat_ttl,
            processes=options.processes,
        )
        worker.start()
        if worker.scheduler is not None:
            for line in worker.scheduler.describe():
                logger.info("schedules: %s", line)
    except SchedulesUnavailable as e:
        report_error(str(e), options)
        return ExitCode.USAGE
    except BootError as e:
        if e.details:
            sys.stderr.write(redact(e.details, secrets_of(options)))
        report_error(e.message, options)
        return e.code
    except BrokerConnectionError as e:
        where = f" at {redact_url(options.broker_url)}" if options.broker_url else ""
        text = str(e).rstrip(" .")
        if "check" not in text:  # the brokers' own errors already say what to check
            text = (
                f"Could not connect to the broker{where}: {text}; check that its server is "
                f"running and reachable"
            )
        report_error(f"{text}.", options)
        return ExitCode.CONNECTION_FAILED

    if on_booted is not None:
        on_booted(broker)
    if forks is not None:
        try:
            forks.add([*options.forks, *middleware_forks(broker)])
        except ValueError as e:
            logger.error("%s", e)
            forks.add(options.forks)
    logger.info("Worker is ready; send SIGTERM or press Ctrl-C to stop it.")
    watched = [parent_sentinel] if parent_sentinel is not None else []
    reason = "a stop request"
    while not catcher.stop_requested:
        fork_fds = forks.sentinels() if forks is not None else []
        if catcher.wait(_timeout(forks), also=[*watched, *fork_fds]):
            if parent_sentinel is not None and _readable(parent_sentinel):
                reason = "the exit of the supervising process"
                catcher.request_stop(counts_as_signal=True)
        if forks is not None:
            forks.poll()
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
    if forks is not None:
        forks.stop()
    while not stopped.is_set() or (forks is not None and forks.running()):
        catcher.wait(_timeout(forks), also=forks.sentinels() if forks is not None else [])
        if forks is not None:
            forks.poll()
    logger.info("Worker stopped.")
    return ExitCode.OK


def run_single(options: Options, *, own_process: bool) -> int:
    """Run the worker in this process until a signal; return the exit code.

    Parameters:
      options: the command line.
      own_process: whether this call owns the process: then a second signal exits at once
        and SIGHUP reloads (the worker stops gracefully, then ``Reload`` is raised).

    Raises:
      Reload: SIGHUP stopped the worker; the caller re-executes the command.
    """
    logger = logging.getLogger("nbqueue.MainProcess")
    signums = termination_signals()
    if own_process and hasattr(signal, "SIGHUP"):
        signums.append(signal.SIGHUP)
    catcher = SignalCatcher(signums, kill_on_second=True)
    catcher.install()
    forks = ForkGroup(options)
    try:
        code = int(serve(options, catcher, process_name="MainProcess", forks=forks))
    except Killed:
        forks.kill()
        logger.warning(
            "Received a second signal: exiting at once; durable brokers redeliver the messages "
            "that were running."
        )
        if own_process:
            flush_and_exit(ExitCode.KILLED)
        return int(ExitCode.KILLED)
    finally:
        catcher.restore()
    if code == ExitCode.OK and catcher.received[:1] == [getattr(signal, "SIGHUP", None)]:
        raise Reload()
    return code
