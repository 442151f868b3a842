"""The REST handlers of the Jobs sidebar (the contract is ``API.md`` beside this file).

Every handler is a jupyter_server ``APIHandler`` behind ``@tornado.web.authenticated``, so
Jupyter's token or password and its XSRF check apply as to every other handler. Reads of
SQLite and Redis run on a thread pool, each with a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from ..common import redact_url
from ..history.base import HistoryJob, JobQuery, Limits
from ..history.sqlite import VERSION_CHECK
from .sources import ActionRefused, Source

__all__ = ["LONG_POLL", "LabState", "setup_handlers"]

logger = logging.getLogger("nbqueue.lab")

T = TypeVar("T")

#: How long a ``since=`` request is held when nothing changed, in seconds.
LONG_POLL = 25.0

#: The deadline of one blocking read or action, in seconds.
DEADLINE = 15.0

#: The most jobs one list returns.
MAX_LIMIT = 2000

#: What ``settings`` answers besides the history bounds.
NOTIFY_AFTER_MS = 10_000

STATUSES = frozenset(
    {
        "enqueued",
        "delayed",
        "running",
        "retrying",
        "succeeded",
        "failed",
        "skipped",
        "aborted",
        "dead",
    }
)


class LabState:
    """What the handlers share: the sources, the thread pools and the history bounds."""

    def __init__(self, sources: list[Source], limits: Limits, root_dir: str = "") -> None:
        self.sources = sources
        self.limits = limits
        self.root_dir = os.path.abspath(root_dir) if root_dir else ""
        self.pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="nbqueue-lab")
        # long polls hold a thread each while they wait: their own pool
        self.waiters = concurrent.futures.ThreadPoolExecutor(
            16, thread_name_prefix="nbqueue-lab-wait"
        )

    async def run(
        self, call: Callable[..., T], *args: Any, timeout: float = DEADLINE, waiting: bool = False
    ) -> T:
        loop = asyncio.get_running_loop()
        pool = self.waiters if waiting else self.pool
        future = loop.run_in_executor(pool, functools.partial(call, *args))
        return await asyncio.wait_for(future, timeout)

    # -- blocking, on the pools ------------------------------------------------------------

    def version(self) -> int:
        total = 0
        for source in self.sources:
            try:
                total += source.version()
                source.error = None
            except Exception as e:
                source.error = _scrub(e)
        return total

    def wait(self, since: int, timeout: float) -> int:
        """Block until the summed version differs from ``since``: one Redis source blocks on
        its changes channel, ``VERSION_CHECK`` seconds at a time when there is a local source
        too (a second otherwise); SQLite's version is read between (see
        ``SQLiteHistory.wait``)."""
        deadline = time.monotonic() + timeout
        current = self.version()
        redis = [s for s in self.sources if s.name == "redis" and s.history is not None]
        local = [s for s in self.sources if s not in redis and s.history is not None]
        while current == since:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            step = min(VERSION_CHECK if local else 1.0, remaining)
            try:
                if redis:
                    history: Any = redis[0].history
                    history.wait(redis[0].version(), step)
                elif local:
                    history = local[0].history
                    history.wait(local[0].version(), remaining)
                else:
                    break
            except Exception as e:
                logger.warning("nbqueue: waiting for job changes failed: %s", _scrub(e))
                break
            current = self.version()
        return current

    def jobs(self, query: JobQuery) -> list[dict[str, Any]]:
        found: list[HistoryJob] = []
        for source in self.sources:
            try:
                found += source.jobs(query)
                source.error = None
            except Exception as e:
                source.error = _scrub(e)
                logger.warning("nbqueue: reading jobs from %s failed: %s", source.url, source.error)
        found.sort(key=lambda job: job.enqueued_at or 0, reverse=True)
        return [self.relative(job.to_json()) for job in found[: query.limit]]

    def notebooks(self, path: str) -> tuple[str, ...]:
        """The forms a notebook's path may be recorded in: relative, and absolute under the
        server root (what ``JPY_SESSION_NAME`` holds in kernels the server started)."""
        forms = [path]
        if self.root_dir and not os.path.isabs(path):
            forms.append(os.path.join(self.root_dir, path))
        return tuple(forms)

    def relative(self, job: dict[str, Any]) -> dict[str, Any]:
        """``job`` with its notebook path relative to the server root."""
        notebook = job.get("notebook")
        if notebook and self.root_dir and os.path.isabs(notebook):
            if notebook.startswith(self.root_dir + os.sep):
                job["notebook"] = os.path.relpath(notebook, self.root_dir)
        return job

    def find(self, message_id: str) -> tuple[Source, HistoryJob] | None:
        for source in self.sources:
            job = source.job(message_id)
            if job is not None:
                return source, job
        return None

    def detail(self, message_id: str) -> dict[str, Any] | None:
        found = self.find(message_id)
        if found is None:
            return None
        source, job = found
        return {**self.relative(job.to_json()), **source.details(job)}

    def queues(self) -> list[dict[str, Any]]:
        return self.gather("queues")

    def gather(self, what: str) -> list[dict[str, Any]]:
        """Every source's rows of ``what`` (``queues``, ``workers``, ``schedules``); a source
        that fails records its error (in ``sources``) and adds none."""
        rows: list[dict[str, Any]] = []
        for source in self.sources:
            try:
                rows += getattr(source, what)()
            except Exception as e:
                source.error = _scrub(e)
        return rows

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.waiters.shutdown(wait=False)
        for source in self.sources:
            try:
                source.close()
            except Exception:
                logger.debug("nbqueue: closing %s failed", source.url, exc_info=True)


#: The password of a URL anywhere in a text: ``scheme://user:PASSWORD@``.
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)([^\s@/]+)(@)")


def scrub_text(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _CREDENTIALS.sub(r"\1***\3", text) if "://" in text else text


def scrub(value: Any) -> Any:
    """``value`` (JSON data) with every string scrubbed: jobs' arguments, output, errors and
    results may quote a URL with its password, and no response carries one."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def _scrub(error: BaseException) -> str:
    """An error's text without any password a URL in it carries."""
    text = f"{type(error).__name__}: {error}"
    return scrub_text(" ".join(redact_url(w) if "://" in w else w for w in text.split(" ")))


class BaseHandler(APIHandler):
    """Shared by the handlers: the state, JSON answers, 404s."""

    @property
    def state(self) -> LabState:
        state: LabState = self.settings["nbqueue_lab"]
        return state

    def answer(self, body: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(scrub(body), default=lambda v: scrub_text(repr(v))))

    def refuse(self, status: int, message: str) -> None:
        self.answer({"message": message}, status)


class JobsHandler(BaseHandler):
    """``GET jobs``: the list, with the filters and the ``since=`` long poll."""

    @tornado.web.authenticated
    async def get(self) -> None:
        status = self.get_query_argument("status", None) or None
        if status is not None and status not in STATUSES:
            return self.refuse(400, f"Unknown status {status!r}; use one of {sorted(STATUSES)}.")
        try:
            limit = int(self.get_query_argument("limit", "200"))
            since_arg = self.get_query_argument("since", None)
            since = int(since_arg) if since_arg not in (None, "") else None
        except ValueError:
            return self.refuse(400, "limit and since must be integers.")
        state = self.state
        notebook = self.get_query_argument("notebook", None)
        query = JobQuery(
            status=status,
            actor=self.get_query_argument("actor", None) or None,
            queue=self.get_query_argument("queue", None) or None,
            notebooks=state.notebooks(notebook) if notebook else (),
            q=self.get_query_argument("q", None) or None,
            limit=max(1, min(limit, MAX_LIMIT)),
        )
        if since is not None:
            version = await state.run(
                state.wait, since, LONG_POLL, timeout=LONG_POLL + DEADLINE, waiting=True
            )
        else:
            version = await state.run(state.version)
        jobs = await state.run(state.jobs, query)
        self.answer(
            {
                "jobs": jobs,
                "version": version,
                "sources": [source.describe() for source in state.sources],
            }
        )


class JobHandler(BaseHandler):
    """``GET jobs/<id>``: one job with its output tail, result or error."""

    @tornado.web.authenticated
    async def get(self, message_id: str) -> None:
        try:
            detail = await self.state.run(self.state.detail, message_id)
        except Exception as e:
            return self.refuse(503, f"Job {message_id} cannot be read now: {_scrub(e)}")
        if detail is None:
            return self.refuse(404, f"No job {message_id!r} in the history.")
        self.answer(detail)


class ActionHandler(BaseHandler):
    """``POST jobs/<id>/cancel|retry|requeue``."""

    @tornado.web.authenticated
    async def post(self, message_id: str, action: str) -> None:
        state = self.state
        try:
            found = await state.run(state.find, message_id)
        except Exception as e:
            return self.refuse(503, f"Job {message_id} cannot be read now: {_scrub(e)}")
        if found is None:
            return self.refuse(404, f"No job {message_id!r} in the history.")
        source, job = found
        if action == "requeue" and job.status != "dead":
            return self.refuse(
                409, f"Job {message_id} is {job.status}, not dead: only dead letters requeue."
            )
        try:
            if action == "cancel":
                await state.run(source.cancel, job)
                return self.answer({"ok": True})
            if action == "retry":
                new_id = await state.run(source.retry, job)
                return self.answer({"ok": True, "id": new_id})
            await state.run(source.requeue, job)
            return self.answer({"ok": True})
        except ActionRefused as e:
            return self.refuse(409, str(e))
        except Exception as e:
            logger.warning("nbqueue: %s of job %s failed: %s", action, message_id, _scrub(e))
            return self.refuse(500, f"The {action} of job {message_id} failed: {_scrub(e)}")


class QueuesHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        state = self.state
        rows = await state.run(state.gather, "queues")
        self.answer({"queues": rows, "sources": [s.describe() for s in state.sources]})


class WorkersHandler(BaseHandler):
    """``GET workers``: the live workers of each source, by heartbeat."""

    @tornado.web.authenticated
    async def get(self) -> None:
        state = self.state
        rows = await state.run(state.gather, "workers")
        self.answer({"workers": rows, "sources": [s.describe() for s in state.sources]})


class SchedulesHandler(BaseHandler):
    """``GET schedules``: the schedules the live workers of each source take part in, with
    their last runs and pauses from the store the fleet shares."""

    @tornado.web.authenticated
    async def get(self) -> None:
        state = self.state
        rows = await state.run(state.gather, "schedules")
        self.answer({"schedules": rows, "sources": [s.describe() for s in state.sources]})


class SettingsHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        limits = self.state.limits
        self.answer(
            {
                "notify_after_ms": NOTIFY_AFTER_MS,
                "history_max_jobs": limits.max_jobs,
                "history_max_age_days": limits.max_age_days,
            }
        )


def setup_handlers(web_app: Any, state: LabState) -> None:
    """Register the handlers under ``<base_url>nbqueue/api/``."""
    base = url_path_join(web_app.settings["base_url"], "nbqueue", "api")
    web_app.settings["nbqueue_lab"] = state
    job_id = r"(?P<message_id>[^/]+)"
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "jobs"), JobsHandler),
            (url_path_join(base, "jobs", job_id), JobHandler),
            (
                url_path_join(base, "jobs", job_id, r"(?P<action>cancel|retry|requeue)"),
                ActionHandler,
            ),
            (url_path_join(base, "queues"), QueuesHandler),
            (url_path_join(base, "workers"), WorkersHandler),
            (url_path_join(base, "schedules"), SchedulesHandler),
            (url_path_join(base, "settings"), SettingsHandler),
        ],
    )
