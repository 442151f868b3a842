"""Booting a worker process: pick the broker, import the modules, set up notebook actors, and
log what the process serves."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .._opentelemetry import OpenTelemetry
from ..broker import Broker, get_broker, set_broker
from ..brokers.stub import StubBroker
from ..common import redact_url
from ..connection import REDIS_SCHEMES, add_tracing, broker_from_url, tracing_from_environment
from ..errors import BrokerConnectionError, BrokerUnavailable
from ..live import Live
from ..results import Results
from .logs import SECRET_ENV, read_secret
from .options import ExitCode, Options, version

__all__ = [
    "BootError",
    "add_paths",
    "boot",
    "check_notebook_actors",
    "check_tracing",
    "configure_notebook_actors",
    "log_boot",
    "split_spec",
]


class BootError(Exception):
    """A problem found while booting, reported as one line and mapped to an exit code."""

    def __init__(self, code: ExitCode, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


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


def _broker_from_url(options: Options) -> Broker:
    url = options.broker_url
    assert url is not None
    kwargs: dict[str, Any] = {}
    if options.namespace is not None:
        if urlsplit(url).scheme.lower() not in REDIS_SCHEMES:
            raise BootError(
                ExitCode.USAGE,
                f"--namespace applies to Redis brokers only, but {options.broker_url_source} is "
                f"{redact_url(url)!r}; leave --namespace out.",
            )
        kwargs["namespace"] = options.namespace
    if options.queue_type is not None:
        if urlsplit(url).scheme.lower() not in ("amqp", "amqps"):
            raise BootError(
                ExitCode.USAGE,
                f"--queue-type applies to RabbitMQ brokers only, but {options.broker_url_source} "
                f"is {redact_url(url)!r}; leave --queue-type out.",
            )
        kwargs["queue_type"] = options.queue_type
    try:
        broker = broker_from_url(url, **kwargs)
    except BrokerUnavailable as e:
        raise BootError(ExitCode.USAGE, str(e)) from e
    except ValueError as e:
        raise BootError(
            ExitCode.USAGE,
            f"The broker URL in {options.broker_url_source} is invalid: {e}; fix it and retry.",
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


def _configure_worker() -> Callable[..., list[str]] | None:
    """Return ``nbqueue.remote.configure_worker``, or ``None`` when this nbqueue lacks it."""
    try:
        remote = importlib.import_module("nbqueue.remote")
    except ImportError:
        return None
    function: Callable[..., list[str]] | None = getattr(remote, "configure_worker", None)
    return function


def check_notebook_actors(options: Options) -> bytes | None:
    """Check what ``--notebook-actors`` and ``--secret-file`` need, before any process starts.

    Returns:
      The secret, or ``None`` when there is none.

    Raises:
      BootError: the secret file cannot be read, ``--notebook-actors`` has no secret, or this
        nbqueue cannot load notebook actors.
    """
    try:
        secret = read_secret(options)
    except OSError as e:
        raise BootError(
            ExitCode.USAGE,
            f"Could not read --secret-file {options.secret_file!r}: {e.strerror or e}; pass a "
            f"readable file that holds the shared secret.",
        ) from None
    if options.secret_file is not None and secret is None:
        raise BootError(
            ExitCode.USAGE,
            f"--secret-file {options.secret_file!r} is empty; write the shared secret into it.",
        )
    if not options.notebook_actors:
        return secret
    if secret is None:
        raise BootError(
            ExitCode.USAGE,
            f"--notebook-actors needs the shared secret that signs notebook actors; set "
            f"{SECRET_ENV} or pass --secret-file PATH.",
        )
    if _configure_worker() is None:
        raise BootError(
            ExitCode.USAGE,
            "--notebook-actors is unavailable: this nbqueue has no nbqueue.remote package; "
            "upgrade nbqueue or leave the flag out.",
        )
    return secret


def check_tracing(options: Options) -> bool:
    """Return whether to trace with OpenTelemetry (``--tracing`` or ``NBQUEUE_TRACING``),
    checked before any process starts.

    Raises:
      BootError: ``NBQUEUE_TRACING`` holds an unknown value, or tracing is asked for and
        opentelemetry-api is not installed.
    """
    try:
        tracing = options.tracing or tracing_from_environment()
    except BrokerUnavailable as e:
        raise BootError(ExitCode.USAGE, str(e)) from e
    if tracing:
        try:
            OpenTelemetry()
        except ImportError as e:
            raise BootError(ExitCode.USAGE, str(e)) from None
    return tracing


def configure_notebook_actors(broker: Broker, options: Options) -> list[str]:
    """Install the unknown-actor rule (always) and, with ``--notebook-actors``, the loader of
    notebook actors; declare and return the extra queues this worker must consume."""
    configure_worker = _configure_worker()
    if configure_worker is None:
        # An nbqueue without notebook actors: nothing to install (check_notebook_actors refused
        # the flag already).
        return []
    secret = check_notebook_actors(options)
    try:
        extra = configure_worker(
            broker,
            notebook_actors=options.notebook_actors,
            secret=secret if options.notebook_actors else None,
            queues=list(options.queues) if options.queues is not None else None,
        )
    except ValueError as e:
        raise BootError(ExitCode.USAGE, str(e)) from e
    for queue in extra:
        broker.declare_queue(queue)
    return list(extra)


def boot(options: Options) -> Broker:
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
    if options.namespace is not None and (named or options.broker_url is None):
        raise BootError(
            ExitCode.USAGE,
            "--namespace applies to a broker built from --broker or NBQUEUE_BROKER_URL; set the "
            "namespace in your module's RedisBroker(namespace=...) instead.",
        )
    if options.queue_type is not None and (named or options.broker_url is None):
        raise BootError(
            ExitCode.USAGE,
            "--queue-type applies to a broker built from --broker or NBQUEUE_BROKER_URL; pass "
            "RabbitmqBroker(queue_type=...) in your module instead.",
        )

    remaining = [module_name for module_name, _ in specs]
    if named:
        module_name, attr = named[0]
        remaining.remove(module_name)
        broker = _resolve_broker(_import(module_name), module_name, attr)
    elif options.broker_url is not None:
        broker = _broker_from_url(options)
    else:
        _import(remaining.pop(0))
        broker = get_broker()

    broker.emit_after("process_boot")
    for module_name in remaining:
        _import(module_name)
    current = get_broker()
    if current is not broker and not named:
        # A module configured its own broker (config.py calling set_broker(), often from
        # NBQUEUE_BROKER_URL itself): its actors are declared on that one, so serve it.
        logging.getLogger("nbqueue.MainProcess").info(
            "%s set its own broker (%s); serving it instead of the one from %s.",
            ", ".join(m for m, _ in specs),
            type(current).__name__,
            options.broker_url_source if options.broker_url is not None else "the default",
        )
        broker.close()
        broker = current
        broker.emit_after("process_boot")
    if check_tracing(options):
        try:
            add_tracing(broker)
        except BrokerUnavailable as e:
            raise BootError(ExitCode.USAGE, str(e)) from e
    return broker


def _describe_broker(broker: Broker, options: Options) -> str:
    url = options.broker_url
    if url is None:
        url = getattr(broker, "url", None)
    name = type(broker).__name__
    where = f" at {redact_url(url)}" if isinstance(url, str) and url else ""
    namespace = getattr(broker, "namespace", None)
    if isinstance(namespace, str):
        where += f" (namespace {namespace!r})"
    if getattr(broker, "queue_type", None) == "quorum":
        where += " (quorum queues)"
    return name + where


def _stores(broker: Broker) -> str:
    parts = []
    if any(isinstance(m, Results) for m in broker.middleware):
        try:
            backend = broker.get_results_backend()
        except Exception:  # pragma: no cover - a Results middleware without a backend
            backend = None
        parts.append(f"results in {type(backend).__name__}" if backend else "results")
    if any(isinstance(m, Live) for m in broker.middleware):
        parts.append("live status")
    return "; " + ", ".join(parts) if parts else "; no results store"


def log_boot(
    logger: logging.Logger,
    broker: Broker,
    options: Options,
    *,
    process: str,
    extra_queues: list[str],
    warn_memory: bool,
) -> None:
    """Log what this process serves: the broker (password hidden), processes and threads, and
    one line per queue with its actors."""
    logger.info(
        "nbqueue %s is booting %s: broker %s%s; %d process(es) x %d thread(s).",
        version(),
        process,
        _describe_broker(broker, options),
        _stores(broker),
        options.processes,
        options.threads,
    )
    by_queue: dict[str, list[str]] = {}
    for name in sorted(broker.get_declared_actors()):
        by_queue.setdefault(broker.get_actor(name).queue_name, []).append(name)
    if options.queues is not None:
        for queue in options.queues:
            if queue not in by_queue and queue not in extra_queues:
                logger.warning(
                    "--queues names %r, but no imported actor uses that queue; check the spelling "
                    "or import the module that declares it.",
                    queue,
                )
        by_queue = {q: names for q, names in by_queue.items() if q in options.queues}
    if not by_queue and not extra_queues:
        logger.warning(
            "No actors to serve; check that %s declare @actor functions%s.",
            ", ".join(options.modules),
            " on the queues given with --queues" if options.queues else "",
        )
    for queue, names in sorted(by_queue.items()):
        logger.info("Queue %r: actors %s.", queue, ", ".join(names))
    for queue in extra_queues:
        if queue not in by_queue:
            logger.info("Queue %r: notebook actors, loaded when their messages arrive.", queue)
    if warn_memory and isinstance(broker, StubBroker):
        logger.warning(
            "The broker is in-memory: only messages sent from inside this worker process reach "
            "it. Pass --broker redis://... (or set NBQUEUE_BROKER_URL) to take work from other "
            "processes."
        )
