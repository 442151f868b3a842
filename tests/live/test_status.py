from __future__ import annotations

import pytest

from nbqueue.common import current_millis
from nbqueue.live import LiveEvent, MessageStatus, Progress, StatusRecord


def test_statuses_are_strings_and_know_whether_they_are_final():
    assert MessageStatus("running") is MessageStatus.running
    assert MessageStatus.running == "running" and str(MessageStatus.running) == "running"
    assert {s.value for s in MessageStatus if s.finished} == {
        "succeeded",
        "failed",
        "skipped",
        "aborted",
        "dead",
    }


def test_records_parse_what_redis_returns():
    record = StatusRecord.from_fields(
        "m1",
        {
            b"status": b"failed",
            b"attempt": b"3",
            b"enqueued_at": b"100",
            b"started_at": b"150",
            b"finished_at": b"400",
            b"error": b"ValueError: boom",
            b"progress": b'{"done": 2, "total": 4, "desc": "half"}',
            b"abort": b"",
            b"eta": b"",
            b"seq": b"12",
        },
    )
    assert record is not None
    assert record.status is MessageStatus.failed and record.finished
    assert (record.attempt, record.duration, record.offset) == (3, 250, 12)
    assert record.error == "ValueError: boom" and record.eta is None
    assert record.progress == Progress(2, 4, "half") and record.progress.fraction == 0.5
    assert not record.abort_requested


def test_records_without_a_status_are_none():
    assert StatusRecord.from_fields("m1", {"seq": 3}) is None
    assert StatusRecord.from_fields("m1", {"status": "nonsense"}) is None


def test_a_running_record_measures_its_duration_so_far():
    record = StatusRecord("m1", MessageStatus.running, started_at=current_millis() - 1000)
    assert record.duration is not None and 1000 <= record.duration < 5000
    assert StatusRecord("m1", MessageStatus.enqueued).duration is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"done": 1}, Progress(1)),
        ({"done": 1, "total": "x", "desc": 3}, Progress(1)),
        ({"total": 3}, None),
        ("junk", None),
    ],
)
def test_progress_data_is_read_defensively(data, expected):
    assert Progress.from_data(data) == expected


def test_progress_fractions_are_clamped_and_need_a_total():
    assert Progress(5, 4).fraction == 1.0
    assert Progress(1, 0).fraction is None
    assert Progress(1).fraction is None


def test_events_expose_their_status_text_and_progress():
    status = LiveEvent(1, "status", {"status": "running"})
    output = LiveEvent(2, "output", {"text": "hi", "stream": "stdout"})
    value = LiveEvent(3, "output", {"value": {"a": 1}, "stream": "stream"})
    progress = LiveEvent(4, "progress", {"done": 1, "total": 2})
    assert status.status is MessageStatus.running and status.text == ""
    assert output.text == "hi" and output.status is None
    assert value.text == "{'a': 1}"
    assert progress.progress == Progress(1, 2) and output.progress is None
    assert LiveEvent(5, "status", {"status": "bogus"}).status is None
