"""Turning tracing on where users configure: ``NBQUEUE_TRACING`` for brokers built from a URL,
``nbqueue worker --tracing`` for whichever broker a worker serves; off by default."""

from __future__ import annotations

import sys
import textwrap
import uuid

import pytest

from nbqueue.cli import main
from nbqueue.cli.boot import BootError, boot, check_tracing
from nbqueue.cli.options import ExitCode, parse_options
from nbqueue.connection import add_standard_middleware, broker_from_url
from nbqueue.errors import BrokerUnavailable
from nbqueue.middleware import AgeLimit
from nbqueue.middleware.opentelemetry import OpenTelemetry


def tracers(broker):
    return [m for m in broker.middleware if isinstance(m, OpenTelemetry)]


def test_brokers_built_from_a_url_are_not_traced_by_default():
    broker = broker_from_url("memory://")
    assert tracers(broker) == []


@pytest.mark.parametrize("value", ["opentelemetry", " OpenTelemetry ", "otel"])
def test_nbqueue_tracing_puts_the_middleware_first(monkeypatch, value):
    monkeypatch.setenv("NBQUEUE_TRACING", value)
    broker = broker_from_url("memory://")
    assert isinstance(broker.middleware[0], OpenTelemetry)
    assert len(tracers(broker)) == 1
    # a second pass (connect() on a broker that has it) adds none
    assert add_standard_middleware(broker, "memory://") == []
    assert len(tracers(broker)) == 1


@pytest.mark.parametrize("value", ["", "none", "off"])
def test_nbqueue_tracing_can_say_off(monkeypatch, value):
    monkeypatch.setenv("NBQUEUE_TRACING", value)
    assert tracers(broker_from_url("memory://")) == []


def test_an_unknown_tracing_system_is_refused(monkeypatch):
    monkeypatch.setenv("NBQUEUE_TRACING", "zipkin")
    with pytest.raises(BrokerUnavailable, match=r"NBQUEUE_TRACING must be 'opentelemetry'"):
        broker_from_url("memory://")


def test_tracing_without_opentelemetry_names_the_extra(monkeypatch):
    monkeypatch.setenv("NBQUEUE_TRACING", "opentelemetry")
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "nbqueue._opentelemetry.tracing", raising=False)
    with pytest.raises(BrokerUnavailable, match=r"pip install 'nbqueue\[opentelemetry\]'"):
        broker_from_url("memory://")


@pytest.fixture
def module_with_broker(tmp_path):
    """A worker module that configures its own in-memory broker as ``broker``."""
    name = f"otel_cli_{uuid.uuid4().hex[:8]}"
    source = """
        from nbqueue.brokers.stub import StubBroker

        broker = StubBroker()
    """
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    yield name
    sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_the_worker_flag_traces_a_broker_its_module_configured(module_with_broker, tmp_path):
    options = parse_options(["worker", f"{module_with_broker}:broker", "-P", str(tmp_path)])
    assert options.tracing is False
    assert tracers(boot(options)) == []

    options = parse_options(
        ["worker", f"{module_with_broker}:broker", "-P", str(tmp_path), "--tracing"]
    )
    broker = boot(options)
    assert isinstance(broker.middleware[0], OpenTelemetry)
    assert isinstance(broker.middleware[1], AgeLimit)


def test_the_worker_reads_nbqueue_tracing_too(module_with_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("NBQUEUE_TRACING", "opentelemetry")
    broker = boot(parse_options([f"{module_with_broker}:broker", "-P", str(tmp_path)]))
    assert len(tracers(broker)) == 1


def test_the_worker_refuses_tracing_it_cannot_do(monkeypatch, capsys):
    monkeypatch.setenv("NBQUEUE_TRACING", "zipkin")
    with pytest.raises(BootError) as info:
        check_tracing(parse_options(["tasks"]))
    assert info.value.code is ExitCode.USAGE
    assert main(["tasks"]) == ExitCode.USAGE
    assert "NBQUEUE_TRACING must be 'opentelemetry'" in capsys.readouterr().err

    monkeypatch.delenv("NBQUEUE_TRACING")
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "nbqueue._opentelemetry.tracing", raising=False)
    assert main(["tasks", "--tracing"]) == ExitCode.USAGE
    assert "pip install 'nbqueue[opentelemetry]'" in capsys.readouterr().err
