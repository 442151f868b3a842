"""Fixtures of the reliability suite: the oracle, the private RabbitMQ node, and the records.

Every test here is marked ``reliability`` and ``slow``. Each writes a JSON record through the
``record`` fixture; the summary table of this run's records is printed at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import _rabbitmq
from tests.reliability import harness

_RUN_DIR = pytest.StashKey[Path]()
_RECORDS = pytest.StashKey[list[Path]]()
_REPORT = pytest.StashKey[pytest.TestReport]()


def pytest_configure(config: pytest.Config) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    config.stash[_RUN_DIR] = harness.results_dir() / f"run-{stamp}-{harness.SIZE}"
    config.stash[_RECORDS] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        item.stash[_REPORT] = report
    return report


@pytest.fixture(scope="session")
def oracle() -> Iterator[harness.Oracle]:
    """The execution record: a private redis-server with AOF always, never faulted."""
    server = harness.durable_redis()
    yield harness.Oracle(server.url)
    server.stop()


@pytest.fixture(scope="session")
def _rabbit_session() -> Iterator[_rabbitmq.PrivateRabbit]:
    node = _rabbitmq.PrivateRabbit()
    node.start()
    yield node
    node.stop()


@pytest.fixture
def rabbit_node(_rabbit_session: _rabbitmq.PrivateRabbit) -> _rabbitmq.PrivateRabbit:
    """A private RabbitMQ node (own node name, ports and dirs), started once per session and
    started again if a test killed it and could not restart it."""
    if _rabbit_session.process is None or _rabbit_session.process.poll() is not None:
        _rabbit_session.start()
    return _rabbit_session


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[harness.Record]:
    """The test's JSON record; written at teardown with the test's outcome."""
    rec = harness.Record(test_id=request.node.nodeid.split("::", 1)[-1])
    yield rec
    rec.runtime = time.monotonic() - rec.started
    report = request.node.stash.get(_REPORT, None)
    if report is None:
        rec.outcome = "unknown"
    elif hasattr(report, "wasxfail"):
        rec.outcome = "xfailed" if report.skipped else "xpassed"
    else:
        rec.outcome = report.outcome
    config = request.config
    config.stash[_RECORDS].append(rec.write(config.stash[_RUN_DIR]))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    paths = config.stash.get(_RECORDS, [])
    if not paths:
        return
    records = [json.loads(p.read_text()) for p in paths]
    terminalreporter.section(f"reliability summary ({harness.SIZE} size)")
    terminalreporter.write_line(harness.summary_table(records))
    terminalreporter.write_line(f"records: {config.stash[_RUN_DIR]}")
