"""Re-exports ``nbqueue.threading`` under the path Dramatiq code imports it from."""

from __future__ import annotations

from ..threading import (
    Interrupt,
    current_platform,
    current_thread_ident,
    is_gevent_active,
    raise_thread_exception,
    supported_platforms,
)

__all__ = [
    "Interrupt",
    "current_platform",
    "current_thread_ident",
    "is_gevent_active",
    "raise_thread_exception",
    "supported_platforms",
]
