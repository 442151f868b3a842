from __future__ import annotations

import pytest

from nbqueue.live.transport import (
    ABORTED,
    ABORTED_NOW,
    APPLIED,
    REJECTED,
    REQUESTED,
    TOO_LATE,
    abort_outcome,
    decide,
)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, APPLIED),
        ("delayed", APPLIED),  # a delayed message coming due
        ("retrying", APPLIED),
        ("enqueued", REJECTED),
        ("running", REJECTED),  # the worker got there first
        ("succeeded", REJECTED),
        ("aborted", REJECTED),
    ],
)
def test_a_producer_never_overwrites_a_worker(status, expected):
    assert decide("initial", status, 1 if status else 0, False, 0) == expected


def test_a_worker_write_applies_unless_the_record_is_at_a_later_attempt():
    assert decide("worker", "running", 1, False, 1) == APPLIED
    assert decide("worker", "running", 2, False, 1) == REJECTED  # a late "retrying"
    assert decide("worker", "succeeded", 1, False, 2) == APPLIED


def test_aborted_is_final_and_a_start_sees_the_abort_flag():
    assert decide("worker", "aborted", 1, True, 1) == REJECTED
    assert decide("start", "enqueued", 0, True, 1) == ABORTED
    assert decide("start", "enqueued", 0, False, 1) == APPLIED


def test_what_an_abort_does_depends_on_the_status():
    assert abort_outcome(None) == ABORTED_NOW  # not written yet: aborted anyway
    assert abort_outcome("delayed") == ABORTED_NOW
    assert abort_outcome("retrying") == ABORTED_NOW
    assert abort_outcome("running") == REQUESTED
    assert abort_outcome("dead") == TOO_LATE
