"""Plan D3 for the server extension: a canary password in the broker URL of the Jupyter server
reaches no REST response and no server log (see tests/reliability/test_secrets.py)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

import nbqueue
from nbqueue.connection import broker_from_url
from nbqueue.live.channel import get_publisher
from nbqueue.live.middleware import transport_for
from tests.brokers._redis import PrivateRedis, private_redis
from tests.reliability.test_secrets import canary, leaks

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

SECRET = canary()


@pytest.fixture
def secret_redis() -> Iterator[PrivateRedis]:
    with private_redis("--requirepass", SECRET) as server:
        yield server


@pytest.fixture
def jp_server_config(secret_redis: PrivateRedis, namespace: str, history_path: str) -> Config:
    url = f"redis://:{SECRET}@127.0.0.1:{secret_redis.port}/0"
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"nbqueue.lab": True}},
            "NBQueue": {"broker_url": url, "namespace": namespace, "history_path": history_path},
        }
    )


async def test_d3_a_canary_in_the_server_broker_url_reaches_no_response_or_log(
    jp_fetch: Any,
    jp_serverapp: Any,
    secret_redis: PrivateRedis,
    namespace: str,
    worker_factory: Any,
) -> None:
    # the server's logs (the worker in this process logs its actor's error as it should)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.DEBUG)
    server_logs = [jp_serverapp.log, logging.getLogger("nbqueue.lab"), logging.getLogger("tornado")]
    for log in server_logs:
        log.addHandler(handler)
    url = f"redis://:{SECRET}@127.0.0.1:{secret_redis.port}/0"
    broker = broker_from_url(url, namespace=namespace)
    broker.emit_after("process_boot")
    nbqueue.set_broker(broker)
    sinks: dict[str, str] = {}
    try:

        @nbqueue.actor(store_results=True, max_retries=0)
        def boom(where: str) -> None:
            raise RuntimeError(f"could not reach {where}")

        worker = worker_factory(broker)
        message = boom.send(url)  # the job's own argument and error quote the URL
        with pytest.raises(nbqueue.results.ResultFailure):
            message.get_result(block=True, timeout=10000)
        get_publisher(transport_for(broker)).flush()
        for name, parts, params in (
            ("jobs", ("jobs",), {}),
            ("search", ("jobs",), {"q": message.message_id[:4]}),
            ("detail", ("jobs", message.message_id), {}),
            ("queues", ("queues",), {}),
            ("workers", ("workers",), {}),
            ("settings", ("settings",), {}),
        ):
            response = await jp_fetch("nbqueue", "api", *parts, params=params)
            sinks[name] = response.body.decode()
        assert message.message_id in sinks["jobs"]
        answer = await jp_fetch(
            "nbqueue", "api", "jobs", message.message_id, "retry", method="POST", body=""
        )
        sinks["retry"] = answer.body.decode()
        worker.stop()
        secret_redis.stop()  # every read now fails: the sources' errors are sinks too
        sinks["jobs_down"] = (await jp_fetch("nbqueue", "api", "jobs")).body.decode()
        with pytest.raises(HTTPClientError) as failed:
            await jp_fetch(
                "nbqueue", "api", "jobs", message.message_id, "cancel", method="POST", body=""
            )
        assert failed.value.response is not None
        sinks["cancel_down"] = failed.value.response.body.decode()
    finally:
        for log in server_logs:
            log.removeHandler(handler)
    sinks["log"] = stream.getvalue()
    assert "cannot be read now" in sinks["cancel_down"]
    assert '"ok": false' in sinks["jobs_down"]
    assert leaks(sinks, SECRET) == {}
