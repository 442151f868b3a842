"""Schedules on real Redis: a fleet of worker processes sends each tick once, survives kill -9,
skips or catches up missed ticks; and RabbitMQ claims through its Redis result backend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import nbqueue
from nbqueue._redis.client import as_text
from nbqueue.brokers.redis import RedisBroker
from nbqueue.middleware import CurrentMessage
from nbqueue.results import Results
from nbqueue.results.backends.redis import RedisBackend
from nbqueue.scheduler import now_ms
from nbqueue.worker import Worker
from tests.brokers import _redis
from tests.test_schedules import Runs

REPO_ROOT = Path(__file__).resolve().parents[2]

FLEET_MODULE = """
import os
import time

import redis

import nbqueue
from nbqueue.brokers.redis import RedisBroker
from nbqueue.middleware import CurrentMessage

URL, NS = os.environ["SCHED_URL"], os.environ["SCHED_NS"]
client = redis.Redis.from_url(URL)
# A message handed to the killed worker's inbox comes back within heartbeat_timeout + 1 s.
broker = RedisBroker(url=URL, namespace=NS, heartbeat_timeout=2000)
broker.add_middleware(CurrentMessage())


class Announce(nbqueue.Middleware):
    def after_worker_boot(self, broker, worker):
        client.hset(NS + ":test:pids", worker.worker_id, os.getpid())
        client.rpush(NS + ":test:booted", os.getpid())


broker.add_middleware(Announce())


@nbqueue.actor(broker=broker, periodic=nbqueue.every(1000))
def tick():
    message = CurrentMessage.get_current_message()
    at = message.options["scheduled_at"]
    client.rpush(NS + ":test:runs", f"{at} {message.message_id} {os.getpid()} {time.time_ns()}")
"""


@pytest.fixture
def client(redis_url: str, namespace: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, socket_timeout=10)
    yield connection
    _redis.delete_namespace(connection, namespace)
    connection.close()


def start_fleet(
    tmp_path: Path,
    redis_url: str,
    namespace: str,
    n: int,
    module: str = FLEET_MODULE,
    extra: tuple[str, ...] = (),
    **env_vars: str,
) -> list[Any]:
    (tmp_path / "sched_fleet.py").write_text(textwrap.dedent(module))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
    env.update(
        NBQUEUE_WORKER_TIMEOUT="100",
        SCHED_URL=redis_url,
        SCHED_NS=namespace,
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
        **env_vars,
    )
    command = [sys.executable, "-m", "nbqueue", "worker", "sched_fleet:broker", "--threads", "2"]
    command += list(extra)
    fleet = []
    for i in range(n):
        log = (tmp_path / f"worker-{i}.log").open("wb")
        fleet.append(
            subprocess.Popen(
                command, cwd=tmp_path, env=env, stdout=log, stderr=log, start_new_session=True
            )
        )
    return fleet


def stop_fleet(fleet: list[Any]) -> None:
    for process in fleet:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in fleet:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class RunLog:
    """The runs the fleet records, read with BLPOP: ``(scheduled_at, message id, pid)``."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client, self.key = client, f"{namespace}:test:runs"
        self.runs: list[tuple[int, str, int]] = []
        #: per run: how late the actor started after its tick, in ms
        self.lateness: list[float] = []

    def until(self, done: Any, timeout: float = 60) -> None:
        """Block until the runs so far satisfy ``done(set of scheduled_at)``."""
        while not done({at for at, _, _ in self.runs}):
            popped = self.client.blpop([self.key], timeout=timeout)
            assert popped is not None, f"no run within {timeout} s; runs so far: {self.runs}"
            self.add(popped[1])

    def drain(self) -> None:
        while (item := self.client.lpop(self.key)) is not None:
            self.add(item)

    def add(self, item: Any) -> None:
        at, message_id, pid, started = as_text(item).split()
        self.runs.append((int(at), message_id, int(pid)))
        self.lateness.append(int(started) / 1e6 - int(at))

    def jitter(self) -> str:
        """The tick jitter (scheduled time to actor start): p50 and p99 in ms."""
        late = sorted(self.lateness)
        p50 = late[len(late) // 2]
        p99 = late[min(len(late) - 1, round(0.99 * (len(late) - 1)))]
        return f"tick jitter over {len(late)} runs: p50 {p50:.1f} ms, p99 {p99:.1f} ms"


def test_three_worker_processes_send_each_tick_once_and_survive_a_kill_9(
    tmp_path: Path, redis_url: str, namespace: str, client: redis.Redis
) -> None:
    fleet = start_fleet(tmp_path, redis_url, namespace, 3)
    runs = RunLog(client, namespace)
    try:
        for _ in fleet:  # every process has started its worker (and its scheduler)
            assert client.blpop([f"{namespace}:test:booted"], timeout=60) is not None
        start = now_ms()
        # Ten ticks of the fleet: those scheduled in (start, start + 10 s].
        runs.until(lambda ticks: max(ticks, default=0) >= start + 10000)
        # kill -9 the process that claimed the latest tick; the next ticks still run.
        state = client.hgetall(f"{namespace}:__nbq__:schedules:tick")
        killed_tick = int(state[b"last"])
        pid = int(client.hget(f"{namespace}:test:pids", state[b"worker"]) or 0)
        victim = next(p for p in fleet if p.pid == pid)
        os.kill(pid, signal.SIGKILL)
        victim.wait(timeout=20)
        # The next ticks run; one handed to the dead worker as it died is redelivered.
        after = {killed_tick + 1000, killed_tick + 2000, killed_tick + 3000}
        runs.until(lambda ticks: after <= ticks)
    finally:
        stop_fleet(fleet)
    runs.drain()
    messages: dict[int, set[str]] = {}
    for at, message_id, _ in runs.runs:
        messages.setdefault(at, set()).add(message_id)
    # One message per tick (a message run again after its worker died is the same message).
    assert all(len(ids) == 1 for ids in messages.values()), messages
    ticks = sorted(messages)
    # Every tick from the first to the last, but for at most the one the killed process had
    # claimed and not yet sent when it died (the tick in flight: its last claim, or one it made
    # between the read of the store and the kill).
    assert all((b - a) % 1000 == 0 for a, b in zip(ticks, ticks[1:], strict=False)), ticks
    missing = set(range(ticks[0], ticks[-1], 1000)) - set(ticks)
    assert len(missing) <= 1 and missing <= {killed_tick, killed_tick + 1000}, (missing, ticks)
    assert len([t for t in ticks if start < t <= start + 10000]) == 10
    assert len([t for t in ticks if t > killed_tick]) >= 3
    assert len({pid for _, _, pid in runs.runs}) >= 2, "the survivors ran the later ticks"
    logs = [(tmp_path / f"worker-{i}.log").read_text() for i in range(3)]
    assert all("schedules: tick every(1000) next-run " in log for log in logs), logs[0]
    print(f"Redis {runs.jitter()}")


def test_ticks_missed_while_no_worker_ran_are_skipped_unless_misfire_grace_allows_one(
    redis_url: str, namespace: str, client: redis.Redis
) -> None:
    broker = RedisBroker(url=redis_url, namespace=namespace)
    broker.add_middleware(CurrentMessage())
    recorder = Runs()
    minute = 60000

    @nbqueue.actor(broker=broker)
    def job(label: str) -> None:
        recorder.record(label)

    nbqueue.schedule(job, nbqueue.every(minute), args=("skip",), name="skip")
    nbqueue.schedule(
        job, nbqueue.every(minute), args=("grace",), name="grace", misfire_grace=300000
    )
    # The marker runs at its first tick; the scheduler handled the boot of every schedule in
    # the same pass before it, so what the others have not run by then they never run.
    nbqueue.schedule(job, nbqueue.every(100), args=("marker",), name="marker")
    # The fleet last ran both minute schedules three ticks ago, then every worker stopped.
    claims = broker.tick_claims()
    latest = nbqueue.every(minute).after(now_ms()) - minute
    for name in ("skip", "grace"):
        assert claims.claim(name, latest - 3 * minute, latest - 2 * minute, "gone")
    boot = now_ms()
    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        recorder.wait_count("marker", 1)
        recorder.wait_count("grace", 1)
    finally:
        worker.stop(timeout=5000)
        broker.close()
    grace = recorder.of("grace")
    # The latest tick when the scheduler first looked (the minute may have turned since).
    assert grace[0] in (latest, latest + minute)
    assert latest - 2 * minute not in grace and latest - minute not in grace, "one catch-up"
    assert len(grace) == len(set(grace))
    assert [t for t in recorder.of("skip") if t <= boot] == [], "missed ticks are skipped"
    state = claims.state("grace")
    assert state is not None and state.last_run >= grace[0]
    assert state.worker_id == worker.worker_id


def test_redis_claims_win_once_and_never_go_back(redis_url: str, namespace: str) -> None:
    broker = RedisBroker(url=redis_url, namespace=namespace)
    try:
        claims = broker.tick_claims()
        assert claims is broker.tick_claims()
        t = nbqueue.every(1000).after(now_ms())
        assert claims.state("s") is None
        assert claims.claim("s", t, t + 1000, "a")
        assert not claims.claim("s", t, t + 1000, "b")
        assert not claims.claim("s", t - 1000, t, "b"), "an earlier tick is never claimed late"
        assert claims.claim("s", t + 1000, t + 2000, "b")
        state = claims.state("s")
        assert state is not None
        assert (state.last_run, state.next_run, state.worker_id) == (t + 1000, t + 2000, "b")
        ttl = broker.client.pttl(f"{namespace}:__nbq__:schedules:s")
        assert ttl > 0
    finally:
        _redis.delete_namespace(broker.client, namespace)
        broker.close()


@pytest.mark.rabbitmq
def test_rabbitmq_claims_ticks_in_its_redis_result_backend(
    rabbitmq_url: str, redis_url: str, namespace: str, client: redis.Redis
) -> None:
    from tests.brokers import _rabbitmq

    broker = _rabbitmq.make_broker(rabbitmq_url, namespace)
    recorder = Runs()
    try:
        broker.add_middleware(CurrentMessage())

        @nbqueue.actor(broker=broker, queue_name=namespace, periodic=nbqueue.every(200))
        def beat() -> None:
            recorder.record("beat")

        bare = Worker(broker, worker_timeout=100)
        with pytest.raises(nbqueue.errors.SchedulesUnavailable, match="RedisBackend"):
            bare.start()
        backend = RedisBackend(url=redis_url, namespace=namespace)
        broker.add_middleware(Results(backend=backend))
        with Worker(broker, worker_timeout=100, worker_threads=2):
            recorder.wait_count("beat", 3)
        seen = sorted(recorder.of("beat"))
        assert len(seen) == len(set(seen))
        assert client.exists(f"{namespace}:__nbq__:schedules:beat")
    finally:
        _rabbitmq.cleanup(broker, namespace)


def test_redis_claims_take_over_an_unconfirmed_tick_and_refuse_a_paused_schedule(
    redis_url: str, namespace: str
) -> None:
    broker = RedisBroker(url=redis_url, namespace=namespace)
    try:
        claims = broker.tick_claims()
        t = nbqueue.every(1000).after(now_ms())
        assert claims.claim("s", t, t + 1000, "a", message_id="m1", lease=60000)
        lost = claims.claim("s", t, t + 1000, "b")
        assert lost.outcome == "lost" and lost.retry_at is not None and lost.retry_at > now_ms()
        state = claims.state("s")
        assert state is not None and not state.confirmed and state.message_id == "m1"
        claims.confirm("s", t)
        state = claims.state("s")
        assert state is not None and state.confirmed
        assert claims.claim("s", t, t + 1000, "b").retry_at is None, "confirmed: nothing to wait"
        # A claimant that died before it sent: its lease ends and the next asker takes over,
        # even after a later tick was claimed.
        assert claims.claim("s", t + 1000, t + 2000, "a", message_id="m2", lease=0)
        assert claims.claim("s", t + 2000, t + 3000, "b", lease=60000)
        taken = claims.claim("s", t + 1000, t + 2000, "c", lease=60000)
        assert taken and taken.taken_over
        assert claims.claim("s", t + 1000, t + 2000, "d").retry_at is not None
        claims.set_paused("s", True)
        assert claims.claim("s", t + 3000, t + 4000, "b").outcome == "paused"
        key = f"{namespace}:__nbq__:schedules:s"
        assert broker.client.pttl(key) == -1, "a paused schedule's record does not expire"
        state = claims.state("s")
        assert state is not None and state.paused
        claims.set_paused("s", False)
        assert broker.client.pttl(key) > 0
        assert claims.claim("s", t + 3000, t + 4000, "b")
        claims.forget("s")
        assert claims.state("s") is None
        claims.set_paused("never-ran", True)
        state = claims.state("never-ran")
        assert state is not None and state.paused and state.last_run == 0
        claims.set_paused("never-ran", False)
        assert claims.state("never-ran") is None
    finally:
        _redis.delete_namespace(broker.client, namespace)
        broker.close()


def test_a_pause_from_another_process_holds_for_every_worker_of_the_fleet(
    redis_url: str, namespace: str, client: redis.Redis
) -> None:
    recorder = Runs()
    fleet = []
    for _ in range(2):  # two brokers on one namespace: what two worker processes have
        broker = RedisBroker(url=redis_url, namespace=namespace)
        broker.add_middleware(CurrentMessage())

        @nbqueue.actor(broker=broker, actor_name="job")
        def job(label: str) -> None:
            recorder.record(label)

        nbqueue.schedule(job, nbqueue.every(100), args=("beat",), name="beat")
        nbqueue.schedule(job, nbqueue.every(100), args=("marker",), name="marker")
        fleet.append(Worker(broker, worker_timeout=100, worker_threads=2))
    notebook = RedisBroker(url=redis_url, namespace=namespace)  # declares no schedule
    try:
        for worker in fleet:
            worker.start()
        recorder.wait_count("beat", 2)
        nbqueue.pause_schedule("beat", broker=notebook)
        paused_at = now_ms()
        seen = len(recorder.of("marker"))
        recorder.wait_count("marker", seen + 5)
        # A tick claimed as the pause was made may still run; none later than that.
        assert [t for t in recorder.of("beat") if t > paused_at + 100] == []
        with pytest.raises(ValueError, match="No schedule named 'nope'"):
            nbqueue.pause_schedule("nope", broker=notebook)
        nbqueue.resume_schedule("beat", broker=notebook)
        count = len(recorder.of("beat"))
        recorder.wait_count("beat", count + 2)
    finally:
        for worker in fleet:
            worker.stop(timeout=5000)
            worker.broker.close()
        notebook.close()
    beats = recorder.of("beat")
    assert len(beats) == len(set(beats)), "each tick once across the two workers"


RABBIT_FLEET_MODULE = """
import os
import time

import redis

import nbqueue
from nbqueue.brokers.rabbitmq import RabbitmqBroker
from nbqueue.middleware import CurrentMessage
from nbqueue.results import Results
from nbqueue.results.backends.redis import RedisBackend

URL, NS = os.environ["SCHED_URL"], os.environ["SCHED_NS"]
client = redis.Redis.from_url(URL)
broker = RabbitmqBroker(url=os.environ["SCHED_AMQP"], max_priority=10)
broker.add_middleware(CurrentMessage())
broker.add_middleware(Results(backend=RedisBackend(url=URL, namespace=NS)))


class Announce(nbqueue.Middleware):
    def after_worker_boot(self, broker, worker):
        client.rpush(NS + ":test:booted", os.getpid())


broker.add_middleware(Announce())


@nbqueue.actor(broker=broker, queue_name=NS, periodic=nbqueue.every(1000))
def tick():
    started = time.time_ns()
    message = CurrentMessage.get_current_message()
    at = message.options["scheduled_at"]
    client.rpush(NS + ":test:runs", f"{at} {message.message_id} {os.getpid()} {started}")
"""


@pytest.mark.slow
@pytest.mark.rabbitmq
@pytest.mark.timeout(180)
def test_three_rabbitmq_worker_processes_send_each_tick_once_claimed_in_redis(
    tmp_path: Path, rabbitmq_url: str, redis_url: str, namespace: str, client: redis.Redis
) -> None:
    from tests.brokers import _rabbitmq

    fleet = start_fleet(
        tmp_path,
        redis_url,
        namespace,
        3,
        module=RABBIT_FLEET_MODULE,
        extra=("--queues", namespace),
        SCHED_AMQP=rabbitmq_url,
    )
    runs = RunLog(client, namespace)
    try:
        for _ in fleet:
            assert client.blpop([f"{namespace}:test:booted"], timeout=60) is not None
        start = nbqueue.every(1000).after(now_ms())
        # Ten seconds of ticks, (start, start + 10 s], then one more so that every run of the
        # window has arrived whichever worker ran it.
        runs.until(lambda ticks: max(ticks, default=0) >= start + 11000)
    finally:
        stop_fleet(fleet)
        cleaner = _rabbitmq.make_broker(rabbitmq_url, namespace)
        cleaner.declare_queue(namespace)
        _rabbitmq.cleanup(cleaner, namespace)
    runs.drain()
    window = [at for at, _, _ in runs.runs if start < at <= start + 10000]
    assert 9 <= len(window) <= 11, window
    assert len(window) == len(set(window)), "no tick ran twice"
    per_tick: dict[int, set[str]] = {}
    for at, message_id, _ in runs.runs:
        per_tick.setdefault(at, set()).add(message_id)
    assert all(len(ids) == 1 for ids in per_tick.values()), per_tick
    assert len({pid for _, _, pid in runs.runs}) >= 2, "the ticks are spread over the fleet"
    print(f"RabbitMQ {runs.jitter()}")
