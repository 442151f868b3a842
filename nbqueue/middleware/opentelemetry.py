"""The import path of the OpenTelemetry middleware; it lives in ``nbqueue._opentelemetry``
(needs ``nbqueue[opentelemetry]``)."""

from __future__ import annotations

from .._opentelemetry import OpenTelemetry

__all__ = ["OpenTelemetry"]
