"""Dramatiq's module of the result wrappers, kept for code that imports them from there; they
live in ``nbqueue.results.backend``."""

from __future__ import annotations

from .backend import unwrap_result, wrap_exception, wrap_result

__all__ = ["unwrap_result", "wrap_exception", "wrap_result"]
