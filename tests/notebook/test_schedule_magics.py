"""``%%actor --every/--cron`` and ``%nbqueue schedules`` through a real IPython shell, on the
embedded (in-memory) broker and its embedded worker."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from IPython.core.error import UsageError

import nbqueue
from nbqueue.middleware import CurrentMessage
from nbqueue.schedules import schedules_of

RECORDER = """
import threading
from nbqueue.middleware import CurrentMessage

class Recorder:
    def __init__(self):
        self.changed = threading.Condition()
        self.ticks = {}

    def add(self, label):
        message = CurrentMessage.get_current_message()
        with self.changed:
            self.ticks.setdefault(label, []).append(
                (message.options["scheduled_at"], message.message_id)
            )
            self.changed.notify_all()

    def wait(self, label, count, timeout=30):
        with self.changed:
            return self.changed.wait_for(lambda: len(self.ticks.get(label, [])) >= count, timeout)

recorder = Recorder()
"""


@pytest.fixture
def recorder(ip: Any) -> Any:
    nbqueue.get_broker().add_middleware(CurrentMessage())
    ip.run_cell(RECORDER).raise_error()
    return ip.user_ns["recorder"]


def only_schedule() -> Any:
    (entry,) = schedules_of(nbqueue.get_broker())
    return entry


@pytest.mark.parametrize(
    ("period", "ms"),
    [("500ms", 500), ("10s", 10000), ("10m", 600000), ("1h", 3600000), ("1d", 86400000)]
    + [("250", 250)],
)
def test_every_takes_a_period_with_a_unit_or_plain_milliseconds(
    ip: Any, period: str, ms: int, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_cell_magic("actor", f"--every {period}", "def report():\n    pass\n")
    entry = only_schedule()
    assert (entry.name, entry.actor_name, entry.rule) == ("report", "report", nbqueue.every(ms))
    out = capsys.readouterr().out
    assert f"Schedule 'report': every {period}, sent by the embedded worker; next run " in out


@pytest.mark.parametrize("period", ["10x", "0", "-5", "1.5s", "ten", "10 minutes"])
def test_a_bad_period_is_one_sentence_that_names_the_accepted_forms(ip: Any, period: str) -> None:
    with pytest.raises(UsageError) as raised:
        ip.run_cell_magic("actor", f"--every '{period}'", "def report():\n    pass\n")
    text = str(raised.value)
    assert "500ms, 10s, 10m, 1h or 1d, or a number of milliseconds." in text
    assert text.count(". ") == 0, text  # one sentence
    assert schedules_of(nbqueue.get_broker()) == []


def test_cron_with_a_zone_and_the_options_that_do_not_go_together(ip: Any) -> None:
    ip.run_cell_magic(
        "actor", '--cron "0 9 * * 1-5" --tz Europe/Paris', "def morning():\n    pass\n"
    )
    assert only_schedule().rule == nbqueue.cron("0 9 * * 1-5", tz="Europe/Paris")
    cell = "def f():\n    pass\n"
    for line, problem in [
        ('--cron "every day"', "write five fields"),
        ('--cron "0 9 * * *" --tz Mars/Base', "IANA name"),
        ("--every 1s --cron '* * * * *'", "not both"),
        ("--tz Europe/Paris", "add --every PERIOD"),
        ("--every 1s --tz Europe/Paris", "--cron only"),
    ]:
        with pytest.raises(UsageError, match=problem):
            ip.run_cell_magic("actor", line, cell)
    with pytest.raises(UsageError, match="exactly one function"):
        ip.run_cell_magic("actor", "--every 1s", cell + "def g():\n    pass\n")


def test_rerunning_the_cell_replaces_its_schedule_and_without_the_option_ends_it(ip: Any) -> None:
    cell = "def report():\n    pass\n"
    ip.run_cell_magic("actor", "--every 1h", cell)
    ip.run_cell_magic("actor", "--every 2h", cell)
    assert only_schedule().rule == nbqueue.every(7200000)
    ip.run_cell_magic("actor", "", cell)
    assert schedules_of(nbqueue.get_broker()) == []
    assert "report" in nbqueue.get_broker().actors


def test_the_embedded_worker_started_first_runs_a_schedule_declared_later(
    ip: Any, magics: Any, recorder: Any
) -> None:
    ip.run_line_magic("nbqueue", "worker start")
    worker: Any = magics.embedded.worker
    assert worker is not None and worker.scheduler is None  # no schedule yet
    ip.run_cell_magic("actor", "--every 100ms", "def beat():\n    recorder.add('beat')\n")
    assert recorder.wait("beat", 3)
    assert magics.embedded.worker is worker
    assert getattr(worker, "scheduler") is not None  # noqa: B009 - mypy narrowed it to None
    ticks = [at for at, _ in recorder.ticks["beat"]]
    assert len(ticks) == len(set(ticks)) and all(at % 100 == 0 for at in ticks)
    ids = {message_id for _, message_id in recorder.ticks["beat"]}
    assert ids == {nbqueue.schedules.tick_message_id("beat", at) for at in ticks}


def test_nbqueue_schedules_lists_pauses_resumes_and_removes(
    ip: Any, recorder: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_cell_magic("actor", "--every 100ms", "def beat():\n    recorder.add('beat')\n")
    ip.run_cell_magic("actor", "--every 100ms", "def marker():\n    recorder.add('marker')\n")
    assert recorder.wait("beat", 2)
    broker = nbqueue.get_broker()
    nbqueue.get_broker().join("default", timeout=10000)
    table = ip.run_line_magic("nbqueue", "schedules")
    text = repr(table)
    assert text.splitlines()[0].split() == ["name", "actor", "rule", "next", "run", "last"] + [
        "run",
        "status",
    ]
    beat_row = next(line for line in text.splitlines() if line.startswith("beat "))
    assert "every(100)" in beat_row and beat_row.split()[-1] in ("succeeded", "enqueued", "running")
    html = table._repr_html_()
    assert html.startswith('<table class="nbqueue-schedules">') and "<td>beat</td>" in html
    (info,) = [i for i in nbqueue.list_schedules() if i.name == "beat"]
    assert info.last_run is not None and info.last_message_id is not None
    assert info.next_run is not None and info.next_run > info.last_run and not info.paused

    capsys.readouterr()
    ip.run_line_magic("nbqueue", "schedules pause beat")
    assert capsys.readouterr().out.strip() == "Schedule 'beat' paused."
    paused_at = nbqueue.scheduler.now_ms()
    (info,) = [i for i in nbqueue.list_schedules() if i.name == "beat"]
    assert info.paused and info.next_run is None
    assert "paused" in next(
        line
        for line in repr(ip.run_line_magic("nbqueue", "schedules")).splitlines()
        if line.startswith("beat ")
    )
    # Three more ticks of the marker: none of beat's were sent meanwhile.
    seen = len(recorder.ticks["marker"])
    assert recorder.wait("marker", seen + 3)
    broker.join("default", timeout=10000)
    # A tick claimed as the pause was made may still run; none later than that.
    assert [at for at, _ in recorder.ticks["beat"] if at > paused_at + 100] == []

    ip.run_line_magic("nbqueue", "schedules resume beat")
    count = len(recorder.ticks["beat"])
    assert recorder.wait("beat", count + 2)

    ip.run_line_magic("nbqueue", "schedules remove beat")
    assert [i.name for i in nbqueue.list_schedules()] == ["marker"]
    assert "beat" in broker.actors  # the actor stays
    with pytest.raises(UsageError, match="No schedule named 'beat'"):
        ip.run_line_magic("nbqueue", "schedules pause beat")
    with pytest.raises(UsageError, match="pause NAME"):
        ip.run_line_magic("nbqueue", "schedules stop marker")


def test_nbqueue_schedules_with_none_says_how_to_declare_one(ip: Any) -> None:
    table = ip.run_line_magic("nbqueue", "schedules")
    assert repr(table) == "No schedules; declare one with %%actor --every 10m (or --cron ...)."


def test_a_tick_claimed_by_a_sender_that_died_is_taken_over_under_the_same_message_id(
    ip: Any, recorder: Any
) -> None:
    """A worker that claimed a tick and died before sending it: the next worker that asks
    after the claim's lease sends it, as the message the dead one would have sent."""
    broker = nbqueue.get_broker()
    claims = broker.tick_claims()
    assert claims is not None
    now = nbqueue.scheduler.now_ms()
    tick = nbqueue.every(1000).after(now)
    # The dead worker's claim of the coming tick, with a lease that has ended at once.
    assert claims.claim("beat", tick, tick + 1000, "dead", message_id="x", lease=0)
    ip.run_cell_magic(
        "actor", "--every 1s --misfire-grace 60000", "def beat():\n    recorder.add('beat')\n"
    )
    assert recorder.wait("beat", 1)
    first_at, first_id = recorder.ticks["beat"][0]
    assert first_at == tick or first_at < tick  # the grace may also run the one before
    assert recorder.wait("beat", 2 if first_at < tick else 1)
    sent = dict(recorder.ticks["beat"])
    assert sent[tick] == nbqueue.schedules.tick_message_id("beat", tick)
    state = claims.state("beat")
    assert state is not None and state.last_run >= tick


def test_a_claim_lost_to_an_unconfirmed_claimant_waits_for_its_lease() -> None:
    from nbqueue.services import MemoryTickClaims

    claims = MemoryTickClaims()
    assert claims.claim("s", 1000, 2000, "a", message_id="m", lease=60000)
    lost = claims.claim("s", 1000, 2000, "b")
    assert not lost and lost.outcome == "lost" and lost.retry_at is not None
    claims.confirm("s", 1000)
    done = claims.claim("s", 1000, 2000, "b")
    assert not done and done.retry_at is None
    assert claims.claim("s", 2000, 3000, "b", lease=0)
    taken = claims.claim("s", 2000, 3000, "c")
    assert taken and taken.taken_over
    claims.set_paused("s", True)
    assert claims.claim("s", 3000, 4000, "c").outcome == "paused"
    state = claims.state("s")
    assert state is not None and state.paused and state.last_run == 2000
    claims.set_paused("s", False)
    assert claims.claim("s", 3000, 4000, "c")
    claims.forget("s")
    assert claims.state("s") is None


def test_threads_do_not_leak(ip: Any) -> None:
    ip.run_cell_magic("actor", "--every 1h", "def report():\n    pass\n")
    ip.run_line_magic("nbqueue", "worker stop")
    assert not [t for t in threading.enumerate() if t.name == "nbqueue-scheduler" and t.is_alive()]
