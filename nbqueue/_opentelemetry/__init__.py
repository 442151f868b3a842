"""OpenTelemetry tracing, in one package (needs ``nbqueue[opentelemetry]``).

* ``middleware``: the ``OpenTelemetry`` middleware, its hooks, and the error naming the extra
  when opentelemetry-api is missing;
* ``tracing``: the spans and the trace context in the message's ``otel`` option; the one
  module that imports ``opentelemetry``, once a middleware is made.

``nbqueue.middleware.opentelemetry`` re-exports the public names from here. Nothing here
imports another server's package.
"""

from __future__ import annotations

from .middleware import OpenTelemetry

__all__ = ["OpenTelemetry"]
