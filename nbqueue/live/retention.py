"""How many finished jobs the embedded broker's in-memory stores keep: bounded by count and bytes.

A notebook that runs a million small jobs must not keep a million results. A finished job's
records (its result in the ``StubBackend``, its status and events in the ``MemoryTransport``) are
released once nobody can ask for them any more:

- the job is not among the newest ``max_jobs`` finished jobs, or the records take more than
  ``max_bytes`` (encoded results plus printed output), and
- no ``Message`` handle of it that ``send()`` returned is still alive (a handle the user still
  holds, in a variable, the list ``send_many`` returned or a job view, keeps its records), and
- no reader is blocked waiting for its events.

Records also expire after their TTL (``result_ttl``), as before. Handles are tracked with weak
references, so tracking never keeps a ``Message`` alive. The stores do the bookkeeping under
their own locks and release in batches (once the count passes ``max_jobs`` by a tenth), so a job
costs a few dictionary operations; this object holds the limits and the shared counts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_JOBS",
    "KEEP_BYTES_ENV",
    "KEEP_JOBS_ENV",
    "Job",
    "Retention",
]

#: How many finished jobs are kept whatever their handles (the newest ones).
DEFAULT_MAX_JOBS = 10_000

#: How many bytes the finished jobs' records may take in all (encoded results, printed output).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

#: The environment variables that set the embedded broker's limits: a count, and bytes (with a
#: ``K``/``M``/``G`` suffix, binary); ``0`` or ``none`` removes the limit.
KEEP_JOBS_ENV = "NBQUEUE_KEEP_JOBS"
KEEP_BYTES_ENV = "NBQUEUE_KEEP_BYTES"

#: A released job: (message id, queue name, actor name), what a result's key is made of.
Job = tuple[str, str, str]

_AMOUNT_RE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)


def _from_env(name: str, default: int, *, size: bool) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in ("0", "none", "off"):
        return None
    match = _AMOUNT_RE.fullmatch(raw) if size else re.fullmatch(r"\d+", raw)
    if match is None:
        example = "64M" if size else "10000"
        raise ValueError(
            f"{name}={raw!r} is not a {'size' if size else 'count'}; set it to a number such as "
            f"{example}, or to 0 for no limit."
        )
    if not size:
        return int(raw)
    shift = {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2).lower()]
    return int(match.group(1)) << shift


class Retention:
    """The limits of what the in-memory stores keep, and what they keep now (see the module
    docstring).

    Parameters:
      max_jobs: how many of the newest finished jobs are kept whatever their handles; ``None``
        for no count limit.
      max_bytes: the most bytes of results and output the stores keep; ``None`` for no limit.

    Raises:
      ValueError: a limit is not a positive int or ``None``.
    """

    def __init__(
        self, *, max_jobs: int | None = DEFAULT_MAX_JOBS, max_bytes: int | None = DEFAULT_MAX_BYTES
    ) -> None:
        for name, value in (("max_jobs", max_jobs), ("max_bytes", max_bytes)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}.")
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        #: bytes of the stored results (kept up to date by the StubBackend)
        self.result_bytes = 0
        #: bytes of the printed output in the live logs (kept up to date by the MemoryTransport)
        self.text_bytes = 0
        #: finished jobs kept now: the newest ones, and older ones held by a handle or a reader
        self.kept = 0
        self.held = 0
        #: finished jobs released by the limits (not by their TTL)
        self.released = 0
        self._release_results: Callable[[list[Job]], None] | None = None

    def __repr__(self) -> str:
        return f"Retention(max_jobs={self.max_jobs!r}, max_bytes={self.max_bytes!r})"

    @classmethod
    def from_environment(cls) -> Retention:
        """The embedded broker's limits: ``$NBQUEUE_KEEP_JOBS`` and ``$NBQUEUE_KEEP_BYTES``,
        else ``DEFAULT_MAX_JOBS`` and ``DEFAULT_MAX_BYTES``.

        Raises:
          ValueError: a variable is not a count or a size.
        """
        return cls(
            max_jobs=_from_env(KEEP_JOBS_ENV, DEFAULT_MAX_JOBS, size=False),
            max_bytes=_from_env(KEEP_BYTES_ENV, DEFAULT_MAX_BYTES, size=True),
        )

    def over_bytes(self) -> bool:
        """Whether the stores keep more bytes than ``max_bytes``."""
        return self.max_bytes is not None and self.result_bytes + self.text_bytes > self.max_bytes

    def bind_results(self, release: Callable[[list[Job]], None]) -> None:
        """Register the results store's callback that forgets released jobs' results."""
        self._release_results = release

    def release_results(self, jobs: list[Job]) -> None:
        """Have the results store forget ``jobs`` (called by the live store, outside its lock)."""
        if jobs and self._release_results is not None:
            self._release_results(jobs)

    def describe(self) -> str:
        """One line for ``%nbqueue status``: the limits and what is kept now."""
        jobs = "no limit" if self.max_jobs is None else f"the newest {self.max_jobs:,}"
        size = "no limit" if self.max_bytes is None else f"{self.max_bytes / 2**20:,.0f} MiB"
        used = (self.result_bytes + self.text_bytes) / 2**20
        return (
            f"{jobs} finished jobs and any whose Message you hold, at most {size}; "
            f"{self.kept + self.held:,} kept ({self.held:,} held, {used:,.1f} MiB), "
            f"{self.released:,} released"
        )
