"""Published actor records: their canonical bytes, content hash and HMAC-SHA256 signature.

A record is JSON, never pickle. Its *content* is what decides how a message runs: the actor's
name, queue, priority and options, the function's name, the source and the Python version
(``major.minor``) it was published from. The content hash is the SHA-256 of the canonical bytes
of the content (keys sorted, no whitespace, ASCII only), so publishing the same cell twice gives
the same hash. The stored *envelope* is::

    {"record": "<canonical JSON of the content plus hash and published_at>", "signature": "<hex>"}

where the signature is HMAC-SHA256 over the UTF-8 bytes of ``record``, with the shared secret as
key. ``verify()`` checks the signature (``hmac.compare_digest``) before it parses ``record``,
then recomputes the content hash and compares it with the hash the message names; only then may
the source be compiled. Nothing here ever compiles or runs code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import sys
from typing import Any

from ..errors import BadSignature

__all__ = [
    "BadSignature",
    "CodeRecord",
    "canonical",
    "python_version",
    "seal",
    "verify",
]

#: Fields of a record's content, in the order the dataclass lists them.
_CONTENT = ("actor_name", "queue_name", "priority", "options", "function", "source", "python")


def python_version() -> str:
    """This interpreter's ``major.minor`` version, e.g. ``"3.11"``."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def canonical(data: Any) -> bytes:
    """Return the canonical JSON bytes of ``data`` (sorted keys, no spaces, ASCII only)."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


@dataclasses.dataclass(frozen=True)
class CodeRecord:
    """One published version of a notebook actor.

    ``priority`` and ``options`` are the actor's declaration; ``function`` names the function the
    source defines; ``published_at`` is in milliseconds since the epoch (not part of the hash).
    """

    actor_name: str
    queue_name: str
    priority: int
    options: dict[str, Any]
    function: str
    source: str
    python: str
    published_at: int = 0
    #: the actor's schedule, published with it (``%%actor --remote --every``): ``{"name":
    #: ..., "rule": Rule.spec(), "misfire_grace": ms}``, or ``None``
    schedule: dict[str, Any] | None = None

    def content(self) -> dict[str, Any]:
        """The fields the content hash covers (``schedule`` only when there is one, so that
        the versions published before schedules keep their hash)."""
        content = {name: getattr(self, name) for name in _CONTENT}
        if self.schedule is not None:
            content["schedule"] = self.schedule
        return content

    @property
    def code_hash(self) -> str:
        """The SHA-256 hex digest of the canonical content."""
        return hashlib.sha256(canonical(self.content())).hexdigest()


def seal(record: CodeRecord, secret: bytes) -> bytes:
    """Return the signed envelope of ``record``, ready to store.

    Raises:
      ValueError: ``secret`` is empty.
    """
    if not secret:
        raise ValueError("Publishing an actor needs a non-empty shared secret (NBQUEUE_SECRET).")
    body = canonical(
        {**record.content(), "hash": record.code_hash, "published_at": record.published_at}
    )
    signature = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return canonical({"record": body.decode("ascii"), "signature": signature})


def verify(envelope: bytes, secret: bytes, code_hash: str) -> CodeRecord:
    """Check an envelope's signature, then its content hash, and return the record.

    Parameters:
      code_hash: the version the message was sent with; the record must be exactly that one.

    Raises:
      BadSignature: not an envelope, no or a wrong signature (tampered, or another secret), or
        the content is not the version ``code_hash`` names.
    """

    def refuse(why: str, actor_name: str = "") -> BadSignature:
        return BadSignature(
            f"Refused published code {code_hash[:12]} ({why}); nothing was run. Check that the "
            f"worker and the notebook share the same NBQUEUE_SECRET and republish the actor.",
            code_hash=code_hash,
            actor_name=actor_name,
        )

    if not secret:
        raise refuse("this worker has no secret")
    try:
        outer = json.loads(envelope)
        body = outer["record"].encode("ascii")
        signature = outer["signature"]
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeError):
        raise refuse("not a signed envelope") from None
    if not isinstance(signature, str):
        raise refuse("unsigned")
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode("ascii", "replace")):
        raise refuse("bad HMAC-SHA256 signature")
    # Signed by someone holding the secret: parsing the JSON is now safe to trust.
    try:
        data = json.loads(body)
        schedule = data.get("schedule")
        if schedule is not None and not isinstance(schedule, dict):
            raise TypeError("schedule")
        record = CodeRecord(
            **{name: data[name] for name in _CONTENT},
            published_at=int(data["published_at"]),
            schedule=schedule,
        )
    except (ValueError, TypeError, KeyError):
        raise refuse("malformed record") from None
    if record.code_hash != code_hash or data.get("hash") != code_hash:
        raise refuse("content does not match its hash", record.actor_name)
    return record
