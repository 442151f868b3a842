"""Schedules: rules, the periodic= option, and exactly one message per tick on one process."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.errors import SchedulesUnavailable
from nbqueue.middleware import CurrentMessage
from nbqueue.schedules import schedules_of
from nbqueue.worker import Worker

PARIS = ZoneInfo("Europe/Paris")


def ms(*fields: int, tz: datetime.tzinfo = PARIS, fold: int = 0) -> int:
    return int(datetime.datetime(*fields, tzinfo=tz, fold=fold).timestamp() * 1000)  # type: ignore[arg-type]


def local(when: int) -> str:
    return datetime.datetime.fromtimestamp(when / 1000, PARIS).isoformat()


def ticks(rule: nbqueue.schedules.Rule, start: int, n: int) -> list[str]:
    out = []
    for _ in range(n):
        start = rule.after(start)
        out.append(local(start))
    return out


class Runs:
    """What a scheduled actor records: the ``scheduled_at`` of each run, with an event per
    count reached."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: list[tuple[str, int]] = []
        self.changed = threading.Condition(self.lock)

    def record(self, label: str) -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        with self.changed:
            self.values.append((label, message.options["scheduled_at"]))
            self.changed.notify_all()

    def wait_count(self, label: str, count: int, timeout: float = 30) -> None:
        """Wait until ``label`` ran ``count`` times (the timeout is a safety net)."""
        with self.changed:
            done = self.changed.wait_for(lambda: len(self._of(label)) >= count, timeout)
            assert done, self.values

    def of(self, label: str) -> list[int]:
        with self.lock:
            return self._of(label)

    def _of(self, label: str) -> list[int]:
        return [at for name, at in self.values if name == label]


def test_every_ticks_on_multiples_of_its_period() -> None:
    rule = nbqueue.every(1000)
    assert rule.after(0) == 1000
    assert rule.after(999) == 1000
    assert rule.after(1000) == 2000
    assert str(rule) == "every(1000)"


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "1000"])
def test_every_refuses_a_period_that_is_not_a_positive_whole_ms(bad: Any) -> None:
    with pytest.raises(ValueError, match="every"):
        nbqueue.every(bad)


def test_cron_refuses_a_bad_expression_or_zone_and_says_what_to_write() -> None:
    with pytest.raises(ValueError, match="write five fields"):
        nbqueue.cron("every minute")
    with pytest.raises(ValueError, match="IANA name"):
        nbqueue.cron("* * * * *", tz="Mars/Olympus")


def test_cron_is_utc_by_default() -> None:
    rule = nbqueue.cron("0 9 * * *")
    assert rule.after(ms(2026, 1, 5, 12, tz=datetime.timezone.utc)) == ms(
        2026, 1, 6, 9, tz=datetime.timezone.utc
    )
    assert repr(rule) == "cron('0 9 * * *')"


def test_cron_on_the_spring_forward_day_runs_a_skipped_time_right_after_the_change() -> None:
    # 2026-03-29 in Paris: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day.
    daily = nbqueue.cron("30 2 * * *", tz="Europe/Paris")
    assert ticks(daily, ms(2026, 3, 28, 12), 3) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    half_hourly = nbqueue.cron("*/30 * * * *", tz="Europe/Paris")
    assert ticks(half_hourly, ms(2026, 3, 29, 1, 10), 3) == [
        "2026-03-29T01:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:30:00+02:00",
    ]
    # The hour after 01:30 CET is 03:00 CEST, 30 real minutes later.
    hourly = nbqueue.cron("0 * * * *", tz="Europe/Paris")
    assert hourly.after(ms(2026, 3, 29, 1, 30)) - ms(2026, 3, 29, 1, 30) == 30 * 60 * 1000


def test_cron_on_the_fall_back_day_runs_a_daily_time_once_and_hourly_ticks_in_both_hours() -> None:
    # 2026-10-25 in Paris: 03:00 CEST becomes 02:00 CET; 02:00-02:59 happens twice.
    daily = nbqueue.cron("30 2 * * *", tz="Europe/Paris")
    assert ticks(daily, ms(2026, 10, 24, 12), 2) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    hourly = nbqueue.cron("0 * * * *", tz="Europe/Paris")
    assert ticks(hourly, ms(2026, 10, 25, 0, 50), 4) == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    # From inside the repeated hour (its second pass), the next tick is the next real hour.
    assert local(hourly.after(ms(2026, 10, 25, 2, 10, fold=1))) == "2026-10-25T03:00:00+01:00"


def test_periodic_option_declares_a_schedule_named_after_the_actor(
    stub_broker: StubBroker,
) -> None:
    @nbqueue.actor(periodic=nbqueue.every(60000), misfire_grace=5000)
    def report() -> None:
        pass

    nbqueue.schedule(report, nbqueue.cron("0 9 * * 1-5"), args=("fr",), name="report-fr")
    names = [(s.name, str(s.rule), s.args, s.misfire_grace) for s in schedules_of(stub_broker)]
    assert names == [
        ("report", "every(60000)", (), 5000),
        ("report-fr", "cron('0 9 * * 1-5')", ("fr",), 0),
    ]


def test_periodic_refuses_what_is_not_a_rule(stub_broker: StubBroker) -> None:
    with pytest.raises(TypeError, match=r"nbqueue.every\(ms\)"):
        nbqueue.actor(periodic="*/5 * * * *")
    with pytest.raises(ValueError, match="only applies to a periodic actor"):
        nbqueue.actor(misfire_grace=1000)


def test_two_workers_on_the_memory_broker_send_each_tick_once(
    stub_broker: StubBroker, worker_factory: Callable[..., Worker]
) -> None:
    stub_broker.add_middleware(CurrentMessage())
    runs = Runs()

    @nbqueue.actor(periodic=nbqueue.every(100))
    def beat() -> None:
        runs.record("beat")

    @nbqueue.actor
    def greet(name: str) -> None:
        runs.record(name)

    nbqueue.schedule(greet, nbqueue.every(100), args=("ada",), name="greet-ada")
    nbqueue.schedule(greet, nbqueue.every(100), args=("bob",), name="greet-bob")
    first, second = worker_factory(stub_broker), worker_factory(stub_broker)
    assert first.scheduler is not None and second.scheduler is not None
    runs.wait_count("beat", 6)
    first.stop()
    second.stop()
    assert not any(worker.scheduler for worker in (first, second))
    for label in ("beat", "ada", "bob"):
        seen = runs.of(label)
        assert len(seen) == len(set(seen)), seen
        assert all(b - a == 100 for a, b in zip(sorted(seen), sorted(seen)[1:], strict=False))
    assert len(runs.of("beat")) >= 6


def test_a_worker_without_schedules_starts_no_scheduler(
    stub_broker: StubBroker, worker_factory: Callable[..., Worker]
) -> None:
    @nbqueue.actor
    def plain() -> None:
        pass

    assert worker_factory(stub_broker).scheduler is None


def test_a_worker_not_consuming_the_queue_takes_no_part(
    stub_broker: StubBroker, worker_factory: Callable[..., Worker]
) -> None:
    @nbqueue.actor(queue_name="reports", periodic=nbqueue.every(1000))
    def report() -> None:
        pass

    assert worker_factory(stub_broker, queues=["default"]).scheduler is None
    assert worker_factory(stub_broker, queues=["reports"]).scheduler is not None


def test_a_broker_with_no_store_for_claims_refuses_to_start_a_scheduling_worker() -> None:
    class NoClaims(StubBroker):
        def tick_claims(self) -> None:  # type: ignore[override]
            return None

    broker = NoClaims()

    @nbqueue.actor(broker=broker, periodic=nbqueue.every(1000))
    def report() -> None:
        pass

    worker = Worker(broker, worker_timeout=100)
    with pytest.raises(SchedulesUnavailable, match="add a Results middleware with a RedisBackend"):
        worker.start()
    assert not worker.running
