"""Dramatiq's own module of the middleware base class, kept for code that imports it from there;
the base class lives in ``nbqueue.middleware.base``."""

from __future__ import annotations

from .base import Middleware, MiddlewareError, SkipMessage

__all__ = ["Middleware", "MiddlewareError", "SkipMessage"]
