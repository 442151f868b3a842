"""The JSON encoder writes and reads exactly what the stdlib (and so Dramatiq) does, with or
without the optional orjson accelerator."""

from __future__ import annotations

import enum
import json
import math
import random
import struct
import uuid

import pytest

from nbqueue import encoder as encoder_module
from nbqueue.encoder import JSONEncoder
from nbqueue.errors import EncodeError


def _dramatiq_bytes(data: object) -> bytes:
    # Dramatiq's JSONEncoder: compact separators, ASCII escapes, UTF-8.
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


def _random_floats(count: int) -> list[float]:
    rng = random.Random(9)
    values = [0.0, -0.0, 1.0, 0.1, 1e-4, 1e-5, 1e15, 1e16, 9999999999999998.0, 5e-324, 1e308]
    while len(values) < count:
        bits = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        if math.isfinite(bits):
            values.append(bits)
        values.append(rng.random() * 10 ** rng.randint(-7, 18))
    return values


@pytest.mark.parametrize(
    "value",
    [
        {"args": [1, "two", None, True, False], "kwargs": {"k": [1.5, {"x": -3}]}},
        {"text": "caf\u00e9 \u2603 \U0001f600"},
        {"lone": "\ud800"},
        {"big": 2**64, "small": -(2**63) - 1, "edge": 2**64 - 1},
        {"int_keys_are_strings": {1: "a", 2.5: "b", None: "c", False: "d"}},
        {"tuple": (1, (2, 3)), "nested": [[[[]]]], "empty": {}},
    ],
)
def test_encoding_is_byte_identical_to_the_stdlib(value):
    assert JSONEncoder().encode(value) == _dramatiq_bytes(value)


def test_floats_are_written_as_the_stdlib_writes_them():
    # One at a time: a single float the fast path refuses sends the whole message to the stdlib.
    encoder = JSONEncoder()
    for value in _random_floats(20000):
        assert encoder.encode({"v": [value]}) == _dramatiq_bytes({"v": [value]}), value


def test_types_json_cannot_carry_are_still_refused():
    class Colour(enum.Enum):
        RED = "red"

    for value in (Colour.RED, uuid.uuid4(), {1, 2}, b"bytes", float("nan"), float("inf")):
        with pytest.raises(EncodeError):
            JSONEncoder().encode({"args": [value], "kwargs": {}, "options": {}})


def test_str_and_int_subclasses_are_written_as_the_stdlib_writes_them():
    class Level(enum.IntEnum):
        HIGH = 3

    class Name(str):
        pass

    value = {"level": Level.HIGH, "name": Name("n")}
    assert JSONEncoder().encode(value) == _dramatiq_bytes(value)


@pytest.mark.parametrize(
    "body",
    [
        b'{"n":123456789012345678901234567890}',
        b'{"n":-9223372036854775809,"m":18446744073709551616}',
        b'{"f":1.5e-7,"g":-0.0,"h":1e400}',
        b'{"nan":NaN,"inf":-Infinity}',
        b'{"s":"\\ud800 caf\\u00e9","t":"caf\xc3\xa9"}',
        b'{"a":1,"a":2}',
    ],
)
def test_decoding_reads_what_the_stdlib_reads(body):
    decoded = JSONEncoder().decode(body)
    expected = json.loads(body.decode("utf-8"))
    assert repr(decoded) == repr(expected)


def test_the_stdlib_alone_gives_the_same_bytes(monkeypatch):
    values = {"args": [1, 2.5, "caf\u00e9", None], "kwargs": {"x": [1e20]}, "options": {}}
    fast = JSONEncoder().encode(values)
    monkeypatch.setattr(encoder_module, "_orjson", None)
    assert JSONEncoder().encode(values) == fast == _dramatiq_bytes(values)
    assert JSONEncoder().decode(fast) == json.loads(fast)


@pytest.mark.parametrize(
    "value",
    [
        {"status": "running", "attempt": 1, "worker_id": "host:12:ab"},
        {"text": 'caf\u00e9 \u2603 \U0001f600\n\t\x01"/'},
        {"lone": "\ud800"},
        {"nan": math.nan, "inf": -math.inf},
        {"big": 2**64, "float": 1e20, "tiny": 5e-324},
        {1: "a", None: "b"},
        [1, (2, 3), {"x": []}],
    ],
)
def test_compact_json_is_the_stdlibs_unescaped_compact_text(value, monkeypatch):
    stdlib = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert encoder_module.compact_json(value) == stdlib
    monkeypatch.setattr(encoder_module, "_orjson", None)
    assert encoder_module.compact_json(value) == stdlib


@pytest.mark.parametrize(
    "value",
    [
        {"message": {"args": [1, "two", None, [2.5]], "kwargs": {"k": "caf\u00e9"}}},
        {"big": 2**70},  # orjson refuses it: the stdlib writes it
        {1: "a"},  # likewise
        {"lone": "\ud800"},
    ],
)
def test_checked_compact_json_reads_back_as_the_stdlibs(value):
    stdlib = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert json.loads(encoder_module.compact_json(value, checked=True)) == json.loads(stdlib)


def test_encoded_bodies_hold_no_more_memory_than_their_length():
    # orjson returns its write buffer (4 KiB) as the bytes object; queued bodies must not keep it.
    import tracemalloc

    encoder = JSONEncoder()
    data = {"queue_name": "default", "actor_name": "noop", "args": [1], "kwargs": {}}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        bodies = [encoder.encode(data) for _ in range(1000)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1000 * (len(bodies[0]) + 200), held
