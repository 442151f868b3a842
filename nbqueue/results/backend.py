"""The result backend contract: keys, the stored format, and blocking reads that wake at once.

Keys and values are Dramatiq's, so nbqueue and Dramatiq read each other's results: the key is the
MD5 hex digest of ``"<namespace>:<queue>:<actor>:<message id>"`` and a failure is stored as
``{"__t": "dramatiq.results.Result", "exn": {"type": ..., "msg": ..., "tb": ...}}``. Dramatiq's
reader looks only at ``type`` and ``msg``, so the extra ``tb`` (traceback text) is safe.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from typing import TYPE_CHECKING, Any, TypeVar

from ..common import compute_backoff, q_name
from ..encoder import Encoder, JSONEncoder, find_unencodable, get_encoder
from ..errors import EncodeError
from ..services import Services
from .errors import ResultFailure, ResultMissing, ResultTimeout

if TYPE_CHECKING:
    from ..broker import MessageProxy
    from ..message import Message

__all__ = [
    "DEFAULT_TIMEOUT",
    "Missing",
    "ResultBackend",
    "unwrap_result",
    "wrap_exception",
    "wrap_result",
]

R = TypeVar("R")

#: How long a blocking ``get_result`` waits when no timeout is given, in milliseconds.
DEFAULT_TIMEOUT = 10000

#: The first sleep of the polling fallback, in milliseconds (see ``ResultBackend._wait``).
BACKOFF_FACTOR = 100

#: Marks failures in stored results; Dramatiq's value, kept for wire compatibility.
_CANARY = "dramatiq.results.Result"

#: How many stack frames of a traceback are stored with a failure.
_TRACEBACK_LIMIT = 30


class Missing:
    """Sentinel that ``_get`` and ``_wait`` return when no result is stored.

    The class itself is the sentinel (compare with ``is Missing``), as in Dramatiq.
    """


def wrap_result(result: Any) -> Any:
    """Return the value to store for a successful result (the result itself)."""
    return result


def _text(exception: BaseException) -> str:
    try:
        return str(exception)
    except Exception:  # a broken __str__ must not lose the failure
        return f"<unprintable {type(exception).__name__}>"


def _format_traceback(exception: BaseException) -> str | None:
    if exception.__traceback__ is None:
        return None
    lines = traceback.format_exception(
        type(exception), exception, exception.__traceback__, limit=_TRACEBACK_LIMIT
    )
    return "".join(lines)


def wrap_exception(exception: BaseException, *, tb: str | None = None) -> dict[str, Any]:
    """Return the value to store for a failure: Dramatiq's format plus the traceback text.

    Parameters:
      exception: what the actor raised.
      tb: the traceback text; by default it is formatted from ``exception.__traceback__``.
    """
    exn: dict[str, Any] = {"type": type(exception).__name__, "msg": _text(exception)}
    if tb is None:
        tb = _format_traceback(exception)
    if tb:
        exn["tb"] = tb
    return {"__t": _CANARY, "exn": exn}


def unwrap_result(value: Any) -> Any:
    """Return a stored result, or raise ``ResultFailure`` when it describes a failure.

    Raises:
      ResultFailure: the stored value is a failure.
    """
    if isinstance(value, dict) and value.get("__t") == _CANARY:
        exn = value.get("exn")
        if not isinstance(exn, dict):
            exn = {}
        type_name = str(exn.get("type", "Exception"))
        msg = str(exn.get("msg", ""))
        tb = exn.get("tb")
        raise ResultFailure(
            f"actor raised {type_name}: {msg}",
            type_name,
            msg,
            traceback=tb if isinstance(tb, str) else None,
        )
    return value


class ResultBackend(Services):
    """Base class for result backends.

    Subclasses implement ``_get`` and ``_store``, and should implement ``_wait`` so that a
    blocking ``get_result`` wakes the moment a result is stored (with a condition variable, a
    blocking server command, ...). The base ``_wait`` polls with exponential backoff, which keeps
    backends written for Dramatiq working but adds latency.

    Parameters:
      namespace: the prefix of every key.
      encoder: encodes stored values; defaults to the global message encoder (JSON).
      use_namespace_prefix_keys: use ``"<namespace>:<queue>:<actor>:<id>"`` as the key instead
        of its MD5 digest, so that keys can be found by prefix (Dramatiq 2.2).
    """

    def __init__(
        self,
        *,
        namespace: str = "dramatiq-results",
        encoder: Encoder | None = None,
        use_namespace_prefix_keys: bool = False,
    ) -> None:
        self.namespace = namespace
        self.encoder = encoder or get_encoder()
        self.use_namespace_prefix_keys = use_namespace_prefix_keys

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r})"

    def get_result(
        self, message: Message[R], *, block: bool = False, timeout: int | None = None
    ) -> R:
        """Get the result of a message.

        Parameters:
          message: the message, as returned by ``send()``.
          block: wait for the result to be stored; the wait ends as soon as it is.
          timeout: how long to wait when ``block`` is True, in milliseconds (default 10 s).

        Returns:
          The value the actor returned.

        Raises:
          ResultMissing: ``block`` is False and no result is stored.
          ResultTimeout: ``block`` is True and no result was stored in time.
          ResultFailure: the actor failed; the error carries the exception's type name, text
            and traceback.
        """
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        key = self.build_message_key(message)
        value = self._get(key)
        if value is Missing:
            if not block:
                raise ResultMissing(
                    f"The result of {message} (message {message.message_id}) is not stored; "
                    f"pass block=True to wait for it, and check that its actor has "
                    f"store_results=True.",
                    message_id=message.message_id,
                    actor_name=message.actor_name,
                )
            value = self._wait_for(message, key, timeout)
        result: R = self.unwrap_result(value)
        return result

    def _wait_for(self, message: Message[Any], key: str, timeout: int) -> Any:
        deadline = time.monotonic() + timeout / 1000
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(
                    f"The result of {message} (message {message.message_id}) was not stored "
                    f"within {timeout} ms; check that a worker consumes queue "
                    f"{q_name(message.queue_name)!r} and that the actor has store_results=True, "
                    f"or pass a larger timeout.",
                    message_id=message.message_id,
                    actor_name=message.actor_name,
                    timeout=timeout,
                )
            value = self._wait(key, remaining)
            if value is not Missing:
                return value

    def store_result(self, message: Message[Any] | MessageProxy, result: Any, ttl: int) -> None:
        """Store the result of a message.

        When the encoder cannot encode ``result``, a failure describing the problem is stored
        instead, so that a caller waiting for the result learns at once rather than timing out.

        Parameters:
          result: the value the actor returned.
          ttl: how long the result is kept, in milliseconds.

        Raises:
          EncodeError: ``result`` cannot be encoded (the failure was stored).
        """
        key = self.build_message_key(message)
        try:
            self._store_for(message, key, wrap_result(result), ttl)
        except (TypeError, ValueError) as e:  # what encoders raise; EncodeError is both
            path, what = self._describe_unencodable(result, e)
            error = EncodeError(
                f"Actor {message.actor_name!r} returned a result that cannot be stored: {what}; "
                f"return JSON types (str, int, float, bool, None, list, dict), such as a path or "
                f"an id, instead.",
                path=path,
            )
            self._store_for(message, key, wrap_exception(error), ttl)
            raise error from e

    def _describe_unencodable(self, result: Any, error: BaseException) -> tuple[str | None, str]:
        """Return where in ``result`` the unencodable value sits, and what it is."""
        if isinstance(self.encoder, JSONEncoder):
            found = find_unencodable(result, "result")
            if found is not None:
                path, value = found
                if isinstance(value, float):
                    return path, f"{path} is {value!r}, which is not valid JSON"
                return path, f"{path} has type {type(value).__name__}"
        return None, f"{type(error).__name__}: {error}"

    def store_exception(
        self, message: Message[Any] | MessageProxy, exception: BaseException, ttl: int
    ) -> None:
        """Store a failure for a message: the exception's type name, text and traceback.

        Parameters:
          exception: what the actor raised.
          ttl: how long the failure is kept, in milliseconds.
        """
        self._store_for(message, self.build_message_key(message), wrap_exception(exception), ttl)

    def build_message_key(self, message: Message[Any] | MessageProxy) -> str:
        """Return the key under which the result of a message is stored.

        The canonical queue name is used, so delayed and retried copies share the key.
        """
        key = (
            f"{self.namespace}:{q_name(message.queue_name)}:{message.actor_name}:"
            f"{message.message_id}"
        )
        if self.use_namespace_prefix_keys:
            return key
        return hashlib.md5(key.encode("utf-8")).hexdigest()

    def unwrap_result(self, value: Any) -> Any:
        """Return a stored value as a result, or raise ``ResultFailure`` for a stored failure.

        Raises:
          ResultFailure: the value describes a failure.
        """
        return unwrap_result(value)

    def _get(self, message_key: str) -> Any:
        """Return the decoded value stored under ``message_key``, or ``Missing``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement _get(); result backends must implement "
            f"_get() and _store()."
        )

    def _store_for(
        self, message: Message[Any] | MessageProxy, message_key: str, result: Any, ttl: int
    ) -> None:
        """Store ``result`` for ``message``: ``_store``, unless a backend also writes what else
        must be visible no later than the result (Redis: the message's last live status and
        output, in the same round trip)."""
        self._store(message_key, result, ttl)

    def _store(self, message_key: str, result: Any, ttl: int) -> None:
        """Encode and store ``result`` under ``message_key`` for ``ttl`` milliseconds.

        Raises:
          TypeError, ValueError: the encoder cannot encode ``result`` (``EncodeError`` is both).
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement _store(); result backends must implement "
            f"_get() and _store()."
        )

    def _wait(self, message_key: str, timeout: float) -> Any:
        """Wait up to ``timeout`` seconds for a value under ``message_key``.

        Subclasses override this to wake as soon as the value is stored. Returning early with
        ``Missing`` is allowed; the caller checks its deadline and calls again.

        Returns:
          The decoded value, or ``Missing``.
        """
        # Fallback for backends written against Dramatiq's interface, which only have _get().
        deadline = time.monotonic() + timeout
        attempts = 0
        while True:
            attempts, delay = compute_backoff(attempts, factor=BACKOFF_FACTOR)
            pause = min(delay / 1000, deadline - time.monotonic())
            if pause <= 0:
                return Missing
            time.sleep(pause)
            value = self._get(message_key)
            if value is not Missing:
                return value
