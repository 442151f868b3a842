"""Serving: boot one worker, run it until the first signal, then stop it gracefully."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable

from ..common import redact_url
from ..errors import BrokerConnectionError
from ..worker import Worker
from .boot import BootError, boot, configure_notebook_actors, log_boot
from .logs import redact, report_error, secrets_of
from .options import ExitCode, Options
from .signals import Killed, SignalCatcher, flush_and_exit, signal_name, termination_signals

__all__ = ["run_single", "serve"]


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
        worker = Worker(broker, queues=queues, worker_threads=options.threads)
        worker.start()
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


def run_single(options: Options, *, own_process: bool) -> int:
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
