from __future__ import annotations

import datetime
import json
import math
import os
import uuid
from typing import Any

import pytest

from nbqueue import DecodeError, EncodeError, Message
from nbqueue.message import generate_unique_id, get_encoder


def make(**overrides: Any) -> Message[Any]:
    fields: dict[str, Any] = dict(
        queue_name="q1", actor_name="add", args=(1, 2), kwargs={}, options={}
    )
    fields.update(overrides)
    return Message(**fields)


def test_messages_encode_to_dramatiq_compact_json_with_exactly_seven_fields():
    message = make(message_id="a1", message_timestamp=1795848595803)
    assert message.encode() == (
        b'{"queue_name":"q1","actor_name":"add","args":[1,2],"kwargs":{},"options":{},'
        b'"message_id":"a1","message_timestamp":1795848595803}'
    )


def test_non_ascii_text_is_escaped_like_dramatiq_does():
    assert b"\\u00e9t\\u00e9" in make(args=("été",)).encode()


def test_decode_round_trips_and_turns_args_into_a_tuple():
    message = make(kwargs={"x": [1, {"y": None}]}, options={"eta": 5})
    decoded = Message.decode(message.encode())
    assert decoded == message
    assert isinstance(decoded.args, tuple)


def test_messages_get_a_fresh_uuid_and_a_millisecond_timestamp():
    a, b = make(), make()
    assert a.message_id != b.message_id
    assert len(a.message_id) == 36
    assert abs(
        a.message_datetime - datetime.datetime.now(datetime.timezone.utc)
    ) < datetime.timedelta(seconds=5)


def test_decoding_bytes_that_are_not_json_is_undecodable():
    with pytest.raises(DecodeError) as info:
        Message.decode(b"\x80not json")
    assert info.value.reason == "undecodable"
    assert info.value.data == b"\x80not json"


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        {"queue_name": "q", "actor_name": "a", "args": [], "kwargs": {}},
        {"queue_name": "q", "actor_name": "a", "args": {}, "kwargs": {}, "options": {}},
        {"queue_name": "q", "actor_name": "a", "args": [], "kwargs": {}, "options": {}, "extra": 1},
        {"queue_name": "", "actor_name": "a", "args": [], "kwargs": {}, "options": {}},
        {
            "queue_name": "q",
            "actor_name": "a",
            "args": [],
            "kwargs": {},
            "options": {},
            "message_timestamp": "x",
        },
    ],
)
def test_decoding_json_that_is_not_a_message_is_invalid(body):
    with pytest.raises(DecodeError) as info:
        Message.decode(json.dumps(body).encode())
    assert info.value.reason == "invalid"


def test_missing_id_and_timestamp_are_filled_in_as_dramatiq_does():
    body = {"queue_name": "q", "actor_name": "a", "args": [], "kwargs": {}, "options": {}}
    message = Message.decode(json.dumps(body).encode())
    assert message.message_id and message.message_timestamp > 0


def test_an_argument_json_cannot_carry_is_named_in_the_error():
    with pytest.raises(EncodeError) as info:
        make(args=(1, object())).encode()
    assert info.value.path == "args[1]"
    assert "args[1]" in str(info.value) and "object" in str(info.value)
    assert isinstance(info.value, TypeError)


def test_nested_keyword_argument_paths_are_named():
    with pytest.raises(EncodeError) as info:
        make(kwargs={"when": {"at": datetime.date(2024, 1, 1)}}).encode()
    assert info.value.path == "kwargs['when']['at']"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_rejected(value):
    with pytest.raises(EncodeError, match="not valid JSON"):
        make(args=(value,)).encode()


def test_copy_merges_options_and_keeps_the_id():
    message = make(options={"a": 1})
    copy = message.copy(queue_name="q2", options={"b": 2})
    assert copy.options == {"a": 1, "b": 2}
    assert copy.message_id == message.message_id
    assert message.options == {"a": 1}


def test_str_reads_like_a_call():
    assert str(make(args=(1, "x"), kwargs={"k": 2})) == "add(1, 'x', k=2)"


def test_namedtuple_style_helpers_still_work():
    message = make()
    assert message._asdict() == message.asdict()
    assert message._replace(actor_name="sub").actor_name == "sub"
    assert "message_id" in Message._fields


def test_the_default_encoder_is_json():
    assert type(get_encoder()).__name__ == "JSONEncoder"


def test_message_ids_are_distinct_uuid4_strings():
    ids = [generate_unique_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for value in ids[::97]:
        parsed = uuid.UUID(value)
        assert (str(parsed), parsed.version, parsed.variant) == (value, 4, uuid.RFC_4122)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_repeats_its_parents_next_message_id():
    generate_unique_id()  # the parent now holds unused random bytes
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write_end, generate_unique_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read_end, 100).decode()
    os.close(read_end)
    os.close(write_end)
    assert child_id != generate_unique_id()
