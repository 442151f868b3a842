from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

import nbqueue
from nbqueue.live.channel import get_publisher
from nbqueue.live.middleware import transport_for
from tests.lab.conftest import body

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


def settle(broker: nbqueue.Broker) -> None:
    """The producer's batched live writes are out."""
    get_publisher(transport_for(broker)).flush()


async def jobs(jp_fetch: Any, **params: Any) -> Any:
    return body(await jp_fetch("nbqueue", "api", "jobs", params=params))


async def post(jp_fetch: Any, message_id: str, action: str) -> Any:
    return await jp_fetch("nbqueue", "api", "jobs", message_id, action, method="POST", body="")


async def test_list_filter_search_and_detail(
    jp_fetch: Any, lab_redis: nbqueue.Broker, worker_factory: Any
) -> None:
    @nbqueue.actor(store_results=True, max_retries=0)
    def add(x: int, y: int) -> int:
        print("adding", x, y)
        return x + y

    @nbqueue.actor(store_results=True, max_retries=0)
    def boom() -> None:
        raise ValueError("it broke")

    worker_factory(lab_redis)
    good, bad = add.send(1, 2), boom.send()
    assert good.get_result(block=True, timeout=10000) == 3
    with pytest.raises(nbqueue.results.ResultFailure):
        bad.get_result(block=True, timeout=10000)
    settle(lab_redis)

    listed = await jobs(jp_fetch)
    by_id = {job["id"]: job for job in listed["jobs"]}
    assert set(by_id) == {good.message_id, bad.message_id}
    assert by_id[good.message_id]["status"] == "succeeded"
    assert by_id[good.message_id]["args"] == "1, 2"
    assert by_id[good.message_id]["source"] == "redis"
    assert by_id[bad.message_id]["status"] == "failed"
    assert isinstance(listed["version"], int)
    assert {s["name"]: s["ok"] for s in listed["sources"]} == {"local": True, "redis": True}
    assert set(by_id[good.message_id]) >= {
        "id", "actor", "queue", "args", "status", "progress", "enqueued_at", "started_at",
        "finished_at", "duration_ms", "worker", "notebook", "kernel", "source", "retries",
        "dead_reason",
    }  # fmt: skip

    assert [j["id"] for j in (await jobs(jp_fetch, status="failed"))["jobs"]] == [bad.message_id]
    assert [j["id"] for j in (await jobs(jp_fetch, actor="add"))["jobs"]] == [good.message_id]
    assert len((await jobs(jp_fetch, queue="default"))["jobs"]) == 2
    assert (await jobs(jp_fetch, queue="elsewhere"))["jobs"] == []
    prefix = good.message_id[:6]
    assert [j["id"] for j in (await jobs(jp_fetch, q=prefix))["jobs"]] == [good.message_id]

    detail = body(await jp_fetch("nbqueue", "api", "jobs", good.message_id))
    assert detail["output"] == "adding 1 2\n"
    assert detail["result"] == 3 and detail["result_repr"] == "3"
    assert detail["error"] is None
    failed = body(await jp_fetch("nbqueue", "api", "jobs", bad.message_id))
    assert failed["error"]["type"] == "ValueError"
    assert failed["error"]["message"] == "it broke"
    assert "raise ValueError" in failed["error"]["traceback"]

    with pytest.raises(HTTPClientError) as missing:
        await jp_fetch("nbqueue", "api", "jobs", "no-such-job")
    assert missing.value.code == 404
    assert missing.value.response is not None
    assert "no-such-job" in json.loads(missing.value.response.body)["message"]


async def test_a_notebook_filter_matches_the_notebook_the_job_came_from(
    jp_fetch: Any, lab_redis: nbqueue.Broker, jp_root_dir: Any
) -> None:
    from nbqueue.history import set_origin
    from nbqueue.history.base import origin

    previous = origin()

    @nbqueue.actor
    def noop() -> None:
        pass

    try:
        set_origin(str(jp_root_dir / "work" / "a.ipynb"), "kernel-1")  # as JPY_SESSION_NAME
        from_a = noop.send()
        set_origin("b.ipynb", "kernel-2")
        from_b = noop.send()
    finally:
        set_origin(*previous)
    settle(lab_redis)
    found = (await jobs(jp_fetch, notebook="work/a.ipynb"))["jobs"]
    assert [j["id"] for j in found] == [from_a.message_id]
    assert found[0]["notebook"] == "work/a.ipynb" and found[0]["kernel"] == "kernel-1"
    assert [j["id"] for j in (await jobs(jp_fetch, notebook="b.ipynb"))["jobs"]] == [
        from_b.message_id
    ]


async def test_cancel_retry_and_requeue(
    jp_fetch: Any, lab_redis: nbqueue.Broker, worker_factory: Any
) -> None:
    started, release = threading.Event(), threading.Event()

    @nbqueue.actor(store_results=True, max_retries=0)
    def slow() -> str:
        started.set()
        # busy in Python code, where the Abort raised in this thread lands (a blocking wait
        # in C would hold it off)
        while not release.is_set():
            time.sleep(0.005)
        return "done"

    worker = worker_factory(lab_redis)
    running = slow.send()
    assert started.wait(10)
    assert body(await post(jp_fetch, running.message_id, "cancel")) == {"ok": True}
    events = list(running.events(timeout=10000))
    assert events[-1].data["status"] == "aborted"

    with pytest.raises(HTTPClientError) as finished:
        await post(jp_fetch, running.message_id, "cancel")
    assert finished.value.code == 409
    with pytest.raises(HTTPClientError) as not_dead:
        await post(jp_fetch, running.message_id, "requeue")
    assert not_dead.value.code == 409

    release.set()
    started.clear()
    answer = body(await post(jp_fetch, running.message_id, "retry"))
    assert answer["ok"] is True and answer["id"] != running.message_id
    copy = nbqueue.Message("default", "slow", (), {}, {}, message_id=answer["id"])
    assert lab_redis.get_results_backend().get_result(copy, block=True, timeout=10000) == "done"

    # a dead letter (no actor of that name anywhere) goes back to its queue
    dead = lab_redis.enqueue(nbqueue.Message("default", "nobody", (), {}, {}))
    lab_redis.join("default", timeout=10000)
    settle(lab_redis)
    detail = body(await jp_fetch("nbqueue", "api", "jobs", dead.message_id))
    assert detail["status"] == "dead" and detail["dead_reason"] == "unknown_actor"
    worker.stop()  # so the requeued letter stays queued
    assert body(await post(jp_fetch, dead.message_id, "requeue")) == {"ok": True}
    settle(lab_redis)
    detail = body(await jp_fetch("nbqueue", "api", "jobs", dead.message_id))
    assert detail["status"] == "enqueued" and detail["dead_reason"] is None
    queues = body(await jp_fetch("nbqueue", "api", "queues"))["queues"]
    # ready: the requeued letter; dead: the aborted job (aborts are dead-lettered)
    assert [(q["name"], q["ready"], q["dead"]) for q in queues] == [("default", 1, 1)]
    assert set(queues[0]) == {"name", "ready", "delayed", "in_flight", "dead", "source"}


async def test_a_request_without_the_token_is_refused(
    jp_fetch: Any, lab_redis: nbqueue.Broker
) -> None:
    for method, parts in (
        ("GET", ("jobs",)),
        ("GET", ("settings",)),
        ("POST", ("jobs", "x", "cancel")),
    ):
        with pytest.raises(HTTPClientError) as refused:
            await jp_fetch(
                "nbqueue", "api", *parts, method=method,
                headers={"Authorization": ""}, body="" if method == "POST" else None,
            )  # fmt: skip
        assert refused.value.code == 403
    # a cookie-style request (no token) without the XSRF header is refused too
    with pytest.raises(HTTPClientError) as xsrf:
        await jp_fetch(
            "nbqueue", "api", "jobs", "x", "cancel", method="POST", body="",
            headers={"Authorization": "", "Cookie": "_xsrf=abc"},
        )  # fmt: skip
    assert xsrf.value.code == 403


async def test_settings(jp_fetch: Any, lab_redis: nbqueue.Broker) -> None:
    settings = body(await jp_fetch("nbqueue", "api", "settings"))
    assert settings == {
        "notify_after_ms": 10000,
        "history_max_jobs": 10000,
        "history_max_age_days": 7.0,
    }


class Heartbeats(nbqueue.Middleware):
    def __init__(self) -> None:
        self.beat = threading.Event()

    def after_worker_heartbeat(self, broker: nbqueue.Broker, worker: nbqueue.Worker) -> None:
        self.beat.set()


async def test_workers_and_schedules_come_from_the_fleet_heartbeats(
    jp_fetch: Any, lab_redis: nbqueue.Broker, worker_factory: Any, namespace: str
) -> None:
    ran = threading.Event()

    @nbqueue.actor(queue_name=f"{namespace}-q")
    def tick() -> None:
        ran.set()

    name = f"{namespace}-every-second"
    nbqueue.schedule(tick, nbqueue.every(1000), name=name)  # on the actor's broker
    beats = Heartbeats()
    lab_redis.add_middleware(beats)
    worker = worker_factory(lab_redis)
    assert await asyncio.to_thread(beats.beat.wait, 30)
    assert await asyncio.to_thread(ran.wait, 30)

    listed = body(await jp_fetch("nbqueue", "api", "workers"))
    (row,) = [w for w in listed["workers"] if w["id"] == worker.worker_id]
    assert row["threads"] == 2 and row["processes"] == 1 and row["source"] == "redis"
    assert f"{namespace}-q" in row["queues"]
    assert {s["name"]: s["ok"] for s in listed["sources"]} == {"local": True, "redis": True}

    found = body(await jp_fetch("nbqueue", "api", "schedules"))["schedules"]
    (entry,) = [s for s in found if s["name"] == name]
    assert entry["actor"] == "tick" and entry["rule"] == str(nbqueue.every(1000))
    assert entry["paused"] is False and entry["next_run"] is not None
    assert entry["last_run"] is not None and entry["last_status"] is not None

    nbqueue.pause_schedule(name, broker=lab_redis)
    found = body(await jp_fetch("nbqueue", "api", "schedules"))["schedules"]
    (entry,) = [s for s in found if s["name"] == name]
    assert entry["paused"] is True and entry["next_run"] is None


async def test_the_long_poll_answers_when_a_job_changes(
    jp_fetch: Any, lab_redis: nbqueue.Broker
) -> None:
    @nbqueue.actor
    def noop() -> None:
        pass

    version = (await jobs(jp_fetch))["version"]
    waiting = asyncio.ensure_future(jobs(jp_fetch, since=version))
    await asyncio.sleep(0)  # the request is sent before the job
    assert not waiting.done()
    sent = await asyncio.get_running_loop().run_in_executor(None, noop.send)
    settle(lab_redis)
    answer = await asyncio.wait_for(waiting, 30)
    assert answer["version"] > version
    assert sent.message_id in [j["id"] for j in answer["jobs"]]
    # an old version answers at once
    assert (await jobs(jp_fetch, since=version))["version"] >= answer["version"]
