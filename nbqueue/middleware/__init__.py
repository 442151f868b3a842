"""Middleware: hooks around the life of a message.

``default_middleware`` lists what a broker created with ``middleware=None`` gets. ``AsyncIO``,
``CurrentMessage`` and result storage are opt-in: add them with ``broker.add_middleware()``.
"""

from __future__ import annotations

from ..threading import Interrupt, raise_thread_exception
from .age_limit import AgeLimit
from .asyncio import AsyncIO
from .base import Middleware, MiddlewareError, SkipMessage
from .callbacks import Callbacks
from .crash_limit import CrashLimit
from .current_message import CurrentMessage
from .group_callbacks import GroupCallbacks
from .pipelines import Pipelines
from .retries import Retries
from .shutdown import Shutdown, ShutdownNotifications
from .time_limit import TimeLimit, TimeLimitExceeded

__all__ = [
    "AgeLimit",
    "AsyncIO",
    "Callbacks",
    "CrashLimit",
    "CurrentMessage",
    "GroupCallbacks",
    "Interrupt",
    "Middleware",
    "MiddlewareError",
    "Pipelines",
    "Retries",
    "Shutdown",
    "ShutdownNotifications",
    "SkipMessage",
    "TimeLimit",
    "TimeLimitExceeded",
    "default_middleware",
    "raise_thread_exception",
]

#: Middleware classes a broker instantiates when it is created with ``middleware=None``.
default_middleware: list[type[Middleware]] = [
    AgeLimit,
    TimeLimit,
    ShutdownNotifications,
    Callbacks,
    Pipelines,
    Retries,
]
