"""Spans recorded by the OpenTelemetry SDK, per test: a tracer provider of its own with an
in-memory exporter, handed to the middleware (OpenTelemetry's global provider can be set only
once per process, so no test sets it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import Tracer  # noqa: E402

from nbqueue.middleware.opentelemetry import OpenTelemetry  # noqa: E402


class Spans:
    """A tracer provider and the spans it finished, in the order they ended."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer: Tracer = self.provider.get_tracer("tests")

    def middleware(self) -> OpenTelemetry:
        return OpenTelemetry(tracer_provider=self.provider)

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.finished() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, [span.name for span in self.finished()]
        return found[0]


@pytest.fixture
def spans() -> Iterator[Spans]:
    recorder = Spans()
    yield recorder
    recorder.provider.shutdown()


@pytest.fixture
def sender_spans() -> Iterator[Spans]:
    """The spans of a second process (a notebook that sends), kept apart from the worker's."""
    recorder = Spans()
    yield recorder
    recorder.provider.shutdown()


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id
