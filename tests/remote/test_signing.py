from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest

from nbqueue.remote.signing import BadSignature, CodeRecord, python_version, seal, verify

SECRET = b"s3cret-for-tests"


def record(source: str = "def work(x):\n    return x * 2\n", **changes: object) -> CodeRecord:
    fields: dict[str, Any] = {
        "actor_name": "work",
        "queue_name": "notebook",
        "priority": 0,
        "options": {"max_retries": 0},
        "function": "work",
        "source": source,
        "python": python_version(),
        "published_at": 1234,
    }
    fields.update(changes)
    return CodeRecord(**fields)


def test_a_sealed_record_verifies_and_round_trips():
    original = record()
    assert re.fullmatch(r"[0-9a-f]{64}", original.code_hash)
    assert verify(seal(original, SECRET), SECRET, original.code_hash) == original


def test_the_hash_covers_the_content_but_not_the_publish_time():
    assert record().code_hash == record(published_at=99).code_hash
    assert record().code_hash != record(source="def work(x):\n    return x\n").code_hash
    assert record().code_hash != record(options={"max_retries": 1}).code_hash


def _tamper(envelope: bytes, **changes: object) -> bytes:
    outer = json.loads(envelope)
    inner = json.loads(outer["record"])
    inner.update(changes)
    outer["record"] = json.dumps(inner, sort_keys=True, separators=(",", ":"))
    return json.dumps(outer).encode()


def test_tampering_is_refused_before_the_record_is_trusted(tmp_path: pathlib.Path):
    marker = tmp_path / "ran"
    evil = f"open({str(marker)!r}, 'w').write('x')\ndef work(x):\n    return x\n"
    good = record()
    envelope = seal(good, SECRET)
    with pytest.raises(BadSignature, match="bad HMAC-SHA256 signature"):
        verify(_tamper(envelope, source=evil), SECRET, good.code_hash)
    with pytest.raises(BadSignature, match="bad HMAC-SHA256 signature"):
        verify(_tamper(envelope, options={"max_retries": 100}), SECRET, good.code_hash)
    with pytest.raises(BadSignature, match="bad HMAC-SHA256 signature"):
        verify(envelope, b"another secret", good.code_hash)
    with pytest.raises(BadSignature, match="not a signed envelope"):
        verify(b'{"record": "{}"}', SECRET, good.code_hash)
    with pytest.raises(BadSignature, match="no secret"):
        verify(envelope, b"", good.code_hash)
    assert not marker.exists()


def test_a_validly_signed_record_of_another_version_is_refused():
    one, two = record(), record(source="def work(x):\n    return 3\n")
    with pytest.raises(BadSignature, match="does not match its hash"):
        verify(seal(two, SECRET), SECRET, one.code_hash)


def test_the_error_never_contains_the_secret():
    good = record()
    with pytest.raises(BadSignature) as info:
        verify(seal(good, SECRET), b"wrong", good.code_hash)
    assert SECRET.decode() not in str(info.value)
    assert good.code_hash[:12] in str(info.value)


def test_sealing_needs_a_secret():
    with pytest.raises(ValueError, match="NBQUEUE_SECRET"):
        seal(record(), b"")


def test_no_pickle_in_the_remote_package():
    package = pathlib.Path(__file__).parents[2] / "nbqueue" / "remote"
    for path in package.glob("*.py"):
        text = path.read_text()
        pattern = (
            r"^\s*(import|from)\s+(pickle|marshal|dill|cloudpickle|shelve)\b|\bloads\(.*pickle"
        )
        assert not re.search(pattern, text, re.M), path
