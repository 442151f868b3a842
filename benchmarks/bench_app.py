"""The module CLI workers import: ``nbqueue worker bench_app`` / ``dramatiq bench_app``.

It builds the same broker and actors as the benchmark child that started the CLI, from the
``NBQ_BENCH_SPEC`` environment variable, and makes that broker the global one.
"""

from __future__ import annotations

from bench_adapters import app_from_environment

adapter = app_from_environment()
broker = adapter.broker
