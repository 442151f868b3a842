"""A real jupyter_server with the nbqueue.lab extension (pytest-jupyter's fixtures, loaded
for this directory only: their autouse event loop would change every other test)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403
from traitlets.config import Config

import nbqueue


@pytest.fixture
def lab_redis(redis_url: str, namespace: str) -> Iterator[nbqueue.Broker]:
    """A Redis broker of this test's namespace, the one the server reads (process booted)."""
    from nbqueue.connection import broker_from_url
    from tests.brokers._redis import delete_namespace

    broker = broker_from_url(redis_url, namespace=namespace)
    broker.emit_after("process_boot")
    nbqueue.set_broker(broker)
    yield broker
    delete_namespace(broker.client, namespace)  # type: ignore[attr-defined]
    broker.close()


@pytest.fixture
def history_path(tmp_path: pathlib.Path) -> str:
    return str(tmp_path / "history.sqlite3")


@pytest.fixture  # type: ignore[no-redef]
def jp_server_config(redis_url: str, namespace: str, history_path: str) -> Config:
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"nbqueue.lab": True}},
            "NBQueue": {
                "broker_url": redis_url,
                "namespace": namespace,
                "history_path": history_path,
            },
        }
    )


def body(response: Any) -> Any:
    import json

    return json.loads(response.body.decode())
