"""Small helpers shared by the core: time, queue names, backoff and URL redaction."""

from __future__ import annotations

import ast
import importlib
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, Protocol, TypeVar, overload
from urllib.parse import urlsplit, urlunsplit

from .errors import QueueJoinTimeout

__all__ = [
    "LAZY_BACKENDS",
    "compute_backoff",
    "current_millis",
    "dq_name",
    "field_int",
    "field_text",
    "getenv_int",
    "iter_queue",
    "join_all",
    "join_queue",
    "lazy_backends",
    "parse_python",
    "q_name",
    "redact_url",
    "xq_name",
]

#: The text of the SystemError CPython 3.11 can raise from ast.parse() while another thread builds
#: an AST too (python/cpython#106905): its recursion counter is shared by every thread. Python
#: 3.11's traceback module parses source to place its carets, so any thread logging an
#: exception can set it off.
_AST_RACE = "AST constructor recursion depth mismatch"


@overload
def parse_python(source: str, mode: Literal["exec"] = "exec") -> ast.Module: ...
@overload
def parse_python(source: str, mode: Literal["eval"]) -> ast.Expression: ...
def parse_python(source: str, mode: str = "exec") -> ast.AST:
    """``ast.parse(source, mode=mode)``, safe to call while other threads parse or log tracebacks.

    Parameters:
      source: Python source text.
      mode: ``"exec"`` or ``"eval"``, as for ``ast.parse``.

    Raises:
      SyntaxError: when the source is not valid Python.
    """
    for _ in range(9):
        try:
            return ast.parse(source, mode=mode)
        except SystemError as e:
            if _AST_RACE not in str(e):
                raise
    return ast.parse(source, mode=mode)


#: Queue names must match this (Dramatiq's rule), so they are safe as Redis keys and AMQP names.
QUEUE_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")


def current_millis() -> int:
    """Return the current wall-clock time in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def q_name(queue_name: str) -> str:
    """Return the canonical queue name, without a ``.DQ`` or ``.XQ`` suffix."""
    if queue_name.endswith((".DQ", ".XQ")):
        return queue_name[:-3]
    return queue_name


def dq_name(queue_name: str) -> str:
    """Return the name of the delay queue that belongs to ``queue_name``."""
    if queue_name.endswith(".DQ"):
        return queue_name
    return q_name(queue_name) + ".DQ"


def xq_name(queue_name: str) -> str:
    """Return the name of the dead-letter queue that belongs to ``queue_name``."""
    if queue_name.endswith(".XQ"):
        return queue_name
    return q_name(queue_name) + ".XQ"


def field_int(value: Any) -> int | None:
    """A stored field (str, bytes or a number: a Redis hash's, a JSON record's) as an int, or
    ``None`` when it is missing, empty or not a number."""
    if value is None or value == "" or value == b"":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def field_text(value: Any) -> str | None:
    """A stored field (str or bytes) as text, or ``None`` when it is missing or empty."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text or None


def compute_backoff(
    attempts: int,
    *,
    factor: float = 5,
    jitter: bool = True,
    max_backoff: float = 2000,
    max_exponent: int = 32,
) -> tuple[int, float]:
    """Compute an exponential backoff.

    Parameters:
      attempts: how many attempts were made so far.
      factor: the backoff of the first attempt, in milliseconds.
      jitter: multiply by a random factor in [1, 2) so that retries spread out.
      max_backoff: the cap, in milliseconds; a capped backoff is jittered into [cap/2, cap].
      max_exponent: the largest power of two used.

    Returns:
      ``(attempts + 1, backoff in milliseconds)``.
    """
    exponent = min(attempts, max_exponent)
    backoff: float = factor * 2**exponent
    if jitter:
        backoff = int(backoff * random.uniform(1, 2))
    if backoff > max_backoff:
        backoff = int(max_backoff * random.uniform(0.5, 1)) if jitter else max_backoff
    return attempts + 1, backoff


def getenv_int(name: str, default: int) -> int:
    """Read an integer from the environment, falling back to ``default`` when unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"Environment variable {name} must be an integer, got {value!r}; fix or unset it."
        ) from None


#: Query options whose values are secrets (``?sentinel_password=...``).
_SECRET_OPTION = re.compile(r"((?:^|&)[^=&]*(?:password|secret|token)[^=&]*=)[^&]*", re.I)


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, safe for reprs, logs and widgets.

    ``redis://:secret@host:6379/0`` becomes ``redis://:***@host:6379/0``; so do passwords in the
    query string (``?sentinel_password=***``), and URLs naming several hosts
    (``redis+sentinel://:***@h1,h2/mymaster``). Lists of URLs separated by ``;`` (RabbitMQ
    failover) are redacted one by one.
    """
    if ";" in url:
        return ";".join(redact_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    query = _SECRET_OPTION.sub(r"\1***", parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


#: The server backends of ``results.backends`` and ``rate_limits.backends``, imported on first
#: use: class name -> (submodule, the package it needs, the extra that installs it).
LAZY_BACKENDS: dict[str, tuple[str, str, str]] = {
    "MemcachedBackend": ("memcached", "pylibmc", "memcached"),
    "RedisBackend": ("redis", "redis", "redis"),
}


def lazy_backends(package: str) -> Callable[[str], Any]:
    """Return a module ``__getattr__`` that imports ``<package>.<server>.<Server>Backend`` on
    first use (``RedisBackend``, ``MemcachedBackend``; see ``LAZY_BACKENDS``).

    ``import nbqueue`` then works without the servers' client packages, and using a backend
    without its package says which extra to install.
    """

    def __getattr__(name: str) -> Any:
        if name not in LAZY_BACKENDS:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, needs, extra = LAZY_BACKENDS[name]
        try:
            importlib.import_module(needs)
        except ImportError as e:
            raise ImportError(
                f"{name} needs the {needs} package: pip install 'nbqueue[{extra}]'."
            ) from e
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__


_T = TypeVar("_T")


class _Joinable(Protocol):
    def join(self, timeout: float | None = None) -> Any: ...


def iter_queue(q: queue.Queue[_T]) -> Iterator[_T]:
    """Yield the items of a standard-library queue until it is empty, without blocking."""
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return


def join_queue(q: queue.Queue[Any], timeout: float | None = None) -> None:
    """Wait until every item put on ``q`` was marked done (``Queue.join``), at most ``timeout``
    seconds (``None``: no limit).

    Raises:
      QueueJoinTimeout: the queue still had unfinished items after ``timeout`` seconds.
    """
    if timeout is None:
        q.join()
        return
    done = threading.Event()

    def wait() -> None:
        q.join()
        done.set()

    threading.Thread(target=wait, name="nbqueue-join-queue", daemon=True).start()
    if not done.wait(timeout):
        raise QueueJoinTimeout(f"The queue still had unfinished items after {timeout:.2f} s.")


def join_all(joinables: Iterable[_Joinable], timeout: int) -> None:
    """Join each of ``joinables`` (threads, processes) in turn, within ``timeout`` milliseconds
    in all: each gets what the ones before it left of the budget."""
    deadline = time.monotonic() + timeout / 1000
    for joinable in joinables:
        joinable.join(timeout=max(0.0, deadline - time.monotonic()))
