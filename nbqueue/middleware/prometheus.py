"""Dramatiq's import path of the Prometheus middleware; it lives in ``nbqueue._prometheus``
(needs ``nbqueue[prometheus]``)."""

from __future__ import annotations

from .._prometheus import DB_PATH, HTTP_HOST, HTTP_PORT, Prometheus

__all__ = ["DB_PATH", "HTTP_HOST", "HTTP_PORT", "Prometheus"]
