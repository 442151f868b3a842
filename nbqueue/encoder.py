"""Message encoders. JSON is the default and the only one reachable without opting in.

There is deliberately no pickle encoder: a pickle body from a broker is remote code execution.
"""

from __future__ import annotations

import abc
import json
import math
import re
from typing import Any

from .errors import DecodeError, EncodeError

_orjson: Any
try:  # an optional accelerator (``pip install 'nbqueue[fast]'``); the stdlib does the same job
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised when orjson is not installed
    _orjson = None

__all__ = [
    "Encoder",
    "JSONEncoder",
    "MessageData",
    "compact_json",
    "describe_unencodable",
    "find_unencodable",
    "get_encoder",
    "set_encoder",
]

#: A run of 19 digits: a number orjson may read as a float where the stdlib reads an int.
_LONG_NUMBER = re.compile(rb"\d{19}")
#: orjson writes these exactly as the stdlib does.
_ORJSON_INT_MIN, _ORJSON_INT_MAX = -(2**63), 2**64 - 1

#: The type of data an encoder works with: a JSON-compatible dict.
MessageData = dict[str, Any]


class Encoder(abc.ABC):
    """Base class for message encoders (process-global, see ``set_encoder``)."""

    @abc.abstractmethod
    def encode(self, data: MessageData) -> bytes:
        """Encode ``data`` to bytes; raise ``EncodeError`` when a value cannot be encoded."""

    @abc.abstractmethod
    def decode(self, data: bytes) -> MessageData:
        """Decode bytes to data; raise ``DecodeError`` when they cannot be decoded."""


class JSONEncoder(Encoder):
    """Compact JSON, UTF-8, ASCII-escaped: byte-for-byte what Dramatiq's JSONEncoder writes.

    NaN and infinities are rejected (they are not JSON, and other consumers choke on them).
    """

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
        self._decoder = json.JSONDecoder()

    def encode(self, data: MessageData) -> bytes:
        if _orjson is not None and _plain(data, 0):
            try:
                fast: bytes = _orjson.dumps(data)
            except _orjson.JSONEncodeError:
                pass  # a lone surrogate, say: the stdlib writes it escaped
            else:
                if fast.isascii():  # otherwise the stdlib escapes it, as Dramatiq does
                    # orjson's bytes keep their 4 KiB write buffer; a queued or stored body
                    # would hold ~4 KiB for a 200-byte message. A copy is exact (~0.2 µs).
                    return bytes(memoryview(fast))
        try:
            return self._encoder.encode(data).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as e:
            raise describe_unencodable(data, e) from e

    def decode(self, data: bytes) -> MessageData:
        if _orjson is not None and type(data) is bytes and _LONG_NUMBER.search(data) is None:
            try:
                fast: MessageData = _orjson.loads(data)
            except _orjson.JSONDecodeError:
                pass  # the stdlib decides: it reads NaN and lone surrogates, and words the error
            else:
                return fast
        try:
            text = (
                data.decode("utf-8") if isinstance(data, (bytes, bytearray, memoryview)) else data
            )
            result: MessageData = self._decoder.decode(text)
            return result
        except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as e:
            raise DecodeError(
                f"Could not decode a message body as JSON ({e}); it was dead-lettered.",
                data,
                e,
                reason="undecodable",
            ) from e


#: The process-global encoder used by messages (and by result backends created without one).
global_encoder: Encoder = JSONEncoder()


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def compact_json(data: Any, *, checked: bool = False) -> str:
    """Return ``data`` as compact JSON text, not ASCII-escaped: what ``json.dumps(data,
    separators=(",", ":"), ensure_ascii=False)`` returns, written by orjson where it writes the
    same (the live channel's fields and events, several per message).

    Parameters:
      checked: the caller knows ``data`` holds only JSON's own types with finite floats (a
        message the encoder took, an event nbqueue built), where orjson's text, if not always
        the same bytes, reads back as the same values: the check is skipped.

    Raises:
      TypeError, ValueError: as ``json.dumps``.
    """
    if _orjson is not None and (checked or _plain(data, 0)):
        try:
            return str(_orjson.dumps(data).decode())
        except (_orjson.JSONEncodeError, TypeError):
            pass  # a lone surrogate or a 65-bit integer, say: the stdlib writes it
    return _COMPACT.encode(data)


def get_encoder() -> Encoder:
    """Return the process-global message encoder."""
    return global_encoder


def set_encoder(encoder: Encoder) -> None:
    """Replace the process-global message encoder (every producer and worker must agree on it)."""
    global global_encoder
    global_encoder = encoder


def _plain(value: Any, depth: int) -> bool:
    """Whether orjson writes ``value`` byte for byte as the stdlib does (before the ASCII check).

    Exact JSON types only (subclasses, enums, UUIDs, dates are left to the stdlib, which keeps
    its errors), 64-bit integers, and floats that the stdlib writes without an exponent.
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(_ORJSON_INT_MIN <= value <= _ORJSON_INT_MAX)
    if kind is float:
        return bool(value == 0.0 or 1e-4 <= abs(value) < 1e16)
    if depth > 64:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            if not _plain(item, depth + 1):
                return False
        return True
    return False


def find_unencodable(value: Any, path: str, depth: int = 0) -> tuple[str, Any] | None:
    """Return the path and value of the first thing JSON cannot carry inside ``value``."""
    if depth > 100:
        return path, value
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = find_unencodable(item, f"{path}[{i}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                return f"{path} key {key!r}", key
            found = find_unencodable(item, f"{path}[{key!r}]", depth + 1)
            if found:
                return found
        return None
    return path, value


def describe_unencodable(data: Any, error: BaseException) -> EncodeError:
    """Build an ``EncodeError`` that names the argument or option JSON could not encode."""
    found = None
    if isinstance(data, dict) and {"args", "kwargs", "options"} <= data.keys():
        for field in ("args", "kwargs", "options"):
            found = find_unencodable(data[field], field)
            if found:
                break
    else:
        found = find_unencodable(data, "value")
    if found is None:
        return EncodeError(f"Could not encode the message as JSON: {error}.")
    path, value = found
    if isinstance(value, float):
        what = f"{value!r} is not valid JSON"
    else:
        what = f"a {type(value).__name__} cannot be sent as JSON"
    return EncodeError(
        f"Could not encode {path}: {what}; pass JSON types (str, int, float, bool, None, "
        f"list, dict) such as an id or a path, and load the object inside the actor.",
        path=path,
    )
