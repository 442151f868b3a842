from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RABBITMQ_URL, REDIS_URL, require_server

from ._cli import Record, Target, tasks_source


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=[pytest.mark.rabbitmq, pytest.mark.redis]),
    ]
)
def target(request: pytest.FixtureRequest, namespace: str) -> Iterator[Target]:
    """The broker under test, Redis or RabbitMQ; executions are recorded in Redis either way."""
    redis_url = require_server("Redis", REDIS_URL)
    if request.param == "redis":
        url = redis_url
    else:
        url = require_server("RabbitMQ", RABBITMQ_URL)
    target = Target(request.param, url, namespace, redis_url)
    yield target
    target.cleanup()


@pytest.fixture
def record(target: Target) -> Iterator[Record]:
    record = Record(target.redis_url, f"{target.namespace}-record")
    yield record
    record.cleanup()


@pytest.fixture
def tasks(tmp_path: Path, target: Target, record: Record) -> str:
    """Write the worker's module into tmp_path and return its name."""
    (tmp_path / "scaleout_tasks.py").write_text(
        tasks_source(target.redis_url, record.prefix, target.queue)
    )
    return "scaleout_tasks"
