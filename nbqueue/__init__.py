"""nbqueue: a Dramatiq-compatible task queue built for Jupyter.

Declare actors with ``@nbqueue.actor`` (or ``%%actor`` in a notebook), ``send()`` them, and a
worker runs them in the background: on threads inside the kernel or on other machines through
Redis or RabbitMQ. With nothing configured an in-memory broker serves.
"""

from __future__ import annotations

from typing import Any

from . import broker as _broker
from . import errors, middleware
from .actor import Actor, actor
from .broker import Broker, Consumer, MessageProxy, get_broker, set_broker
from .compat import install_as_dramatiq
from .composition import group, pipeline
from .connection import connect
from .connection import default_broker as _default_broker
from .connection import start_counter_for as _start_counter_for
from .encoder import Encoder, JSONEncoder
from .errors import (
    Abort,
    ActorNotFound,
    BrokerConnectionError,
    BrokerError,
    ConnectionClosed,
    ConnectionFailed,
    DecodeError,
    DramatiqError,
    EncodeError,
    NbqueueError,
    QueueJoinTimeout,
    QueueNotFound,
    RateLimitExceeded,
    Retry,
    WaitTimeout,
)
from .generic import GenericActor
from .history.lookup import attach
from .live import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    MessageStatus,
    as_completed,
    progress,
    stream,
    wait,
)
from .logging import get_logger
from .message import Message, MessageList, get_encoder, set_encoder
from .middleware import Middleware
from .middleware import crash_limit as _crash_limit
from .remote import publish_actor
from .schedule_control import (
    ScheduleInfo,
    list_schedules,
    pause_schedule,
    remove_schedule,
    resume_schedule,
)
from .schedules import cron, every, schedule
from .services import RunningMessage, WorkerInfo
from .worker import ConsumerThread, Worker, WorkerThread, workers

__version__ = "0.1.0"

# The core makes the default broker, and CrashLimit(redis=...) its counters, through the face,
# which knows the servers.
_broker.default_broker_factory = _default_broker
_crash_limit.redis_counter_factory = _start_counter_for

__all__ = [
    "ALL_COMPLETED",
    "Abort",
    "Actor",
    "ActorNotFound",
    "Broker",
    "BrokerConnectionError",
    "BrokerError",
    "ConnectionClosed",
    "ConnectionFailed",
    "Consumer",
    "ConsumerThread",
    "DecodeError",
    "DramatiqError",
    "EncodeError",
    "Encoder",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "GenericActor",
    "JSONEncoder",
    "Message",
    "MessageList",
    "MessageProxy",
    "MessageStatus",
    "Middleware",
    "NbqueueError",
    "QueueJoinTimeout",
    "QueueNotFound",
    "RateLimitExceeded",
    "Retry",
    "RunningMessage",
    "ScheduleInfo",
    "WaitTimeout",
    "Worker",
    "WorkerInfo",
    "WorkerThread",
    "__version__",
    "actor",
    "as_completed",
    "attach",
    "connect",
    "cron",
    "every",
    "get_broker",
    "get_encoder",
    "get_logger",
    "group",
    "install_as_dramatiq",
    "list_schedules",
    "middleware",
    "pause_schedule",
    "pipeline",
    "progress",
    "publish_actor",
    "remove_schedule",
    "resume_schedule",
    "schedule",
    "set_broker",
    "set_encoder",
    "stream",
    "wait",
    "workers",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbqueue``: register the ``%%actor``, ``%send`` and ``%nbqueue`` magics."""
    # The notebook app needs IPython; it is imported only when IPython loads the extension.
    from .notebook.extension import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbqueue``: stop the embedded worker and remove the magics."""
    # The notebook app needs IPython; it is imported only when IPython loads the extension.
    from .notebook.extension import unload_ipython_extension as unload

    unload(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds nbqueue's prebuilt frontend extension (the Jobs sidebar).

    Read by ``jupyter labextension develop .``; a wheel installs the same files under
    ``share/jupyter/labextensions/nbqueue-labextension``.
    """
    return [{"src": "labextension", "dest": "nbqueue-labextension"}]


def __getattr__(name: str) -> Any:
    if name == "ConnectionError":
        # Dramatiq's name shadows the builtin, so it is served on demand, not star-imported.
        return errors.ConnectionError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
