"""The local job history: one SQLite file that every kernel of a Jupyter server writes.

The embedded broker's jobs live inside a kernel; this file is what outlives the kernel. Each
kernel that loads the notebook extension records its jobs' status changes here (the memory
store hands them to ``SQLiteHistory.record``, which only queues them); one writer thread per
process writes them in short transactions, in WAL mode, so several kernels write the same file
at once and the Jupyter server reads it meanwhile. The bounds (``Limits``) are enforced in the
same transactions.

The server cannot reach into a kernel, so it leaves commands (cancel, retry, requeue) in the
``commands`` table; the writer thread of the kernel that ran the job checks for its own about
once a second, carries them out and marks them done.

The file is ``<jupyter data dir>/nbqueue/history.sqlite3``, or ``NBQUEUE_HISTORY_PATH``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..common import current_millis, field_int, field_text
from .base import History, HistoryJob, JobQuery, Limits, args_summary, origin

__all__ = ["PATH_ENV", "VERSION_CHECK", "Command", "SQLiteHistory", "default_path"]

logger = logging.getLogger("nbqueue.history")

#: The environment variable naming the history file.
PATH_ENV = "NBQUEUE_HISTORY_PATH"

#: How long a reader or writer waits for another process's transaction, in seconds.
BUSY_TIMEOUT = 10.0

#: How often a kernel's writer thread looks for commands, in seconds (at most).
COMMAND_INTERVAL = 1.0

#: How often a kernel that serves commands says it is alive, in seconds.
HEARTBEAT_INTERVAL = 5.0

#: How long a command waits for its kernel before it is dropped, in milliseconds.
COMMAND_TTL = 60_000

#: How often a reader waiting for a change (the sidebar's long poll) reads the version, in
#: seconds: the delay it adds to a local job's change showing in the sidebar.
VERSION_CHECK = 0.25

#: The most status changes one transaction writes.
BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    actor TEXT,
    queue TEXT,
    args TEXT NOT NULL DEFAULT '',
    progress TEXT,
    enqueued_at INTEGER,
    started_at INTEGER,
    finished_at INTEGER,
    attempt INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    error TEXT,
    notebook TEXT,
    kernel TEXT,
    message TEXT,
    output TEXT,
    result TEXT,
    traceback TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (enqueued_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('version', 0);
CREATE TABLE IF NOT EXISTS commands (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kernel TEXT NOT NULL,
    kind TEXT NOT NULL,
    job TEXT NOT NULL,
    new_id TEXT,
    created_at INTEGER NOT NULL,
    done_at INTEGER,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS kernels (
    id TEXT PRIMARY KEY, pid INTEGER, seen_at INTEGER NOT NULL, schedules TEXT
);
"""

_UPSERT = """
INSERT INTO jobs (id, status, actor, queue, args, progress, enqueued_at, started_at,
                  finished_at, attempt, worker, error, notebook, kernel, message, output, result,
                  traceback)
VALUES (:id, :status, :actor, :queue, :args, :progress, :enqueued_at, :started_at,
        :finished_at, :attempt, :worker, :error, :notebook, :kernel, :message, :output,
        :result, :traceback)
ON CONFLICT (id) DO UPDATE SET
    status = excluded.status,
    actor = COALESCE(excluded.actor, actor),
    queue = COALESCE(excluded.queue, queue),
    args = CASE WHEN excluded.message IS NULL THEN args ELSE excluded.args END,
    progress = excluded.progress,
    enqueued_at = COALESCE(enqueued_at, excluded.enqueued_at),
    started_at = excluded.started_at,
    finished_at = excluded.finished_at,
    attempt = excluded.attempt,
    worker = COALESCE(excluded.worker, worker),
    error = excluded.error,
    notebook = COALESCE(notebook, excluded.notebook),
    kernel = COALESCE(kernel, excluded.kernel),
    message = COALESCE(message, excluded.message),
    output = COALESCE(excluded.output, output),
    result = COALESCE(excluded.result, result),
    traceback = CASE WHEN excluded.status = 'succeeded' THEN NULL
                     ELSE COALESCE(excluded.traceback, traceback) END
"""

#: Columns added after the first release of the file: (table, column, type), added on open.
_ADDED = (
    ("jobs", "result", "TEXT"),
    ("jobs", "traceback", "TEXT"),
    ("kernels", "schedules", "TEXT"),
)

_COLUMNS = (
    "id, status, actor, queue, args, progress, enqueued_at, started_at, finished_at, attempt, "
    "worker, error, notebook, kernel"
)

#: What wakes the writer thread without a change to write.
_WAKE: Any = ()

#: What a kernel does with a command: (kind, job id, new id) -> an outcome word.
Command = Callable[[str, str, "str | None"], str]


def default_path() -> str:
    """Return the history file's path: ``NBQUEUE_HISTORY_PATH``, else
    ``<jupyter_data_dir()>/nbqueue/history.sqlite3`` (``~/.local/share/jupyter`` without
    jupyter_core)."""
    path = os.environ.get(PATH_ENV, "").strip()
    if path:
        return os.path.expanduser(path)
    try:
        from jupyter_core.paths import jupyter_data_dir

        data = jupyter_data_dir()
    except ImportError:
        data = os.path.join(os.path.expanduser("~"), ".local", "share", "jupyter")
    return os.path.join(data, "nbqueue", "history.sqlite3")


class SQLiteHistory(History):
    """The local history (see the module docstring); both the recorder a kernel's memory store
    writes to and the store the Jupyter server reads.

    Parameters:
      path: the file (created with its directory); defaults to ``default_path()``.
      limits: the bounds enforced on write; defaults to ``Limits.from_env()`` or ``Limits()``.
      kernel: this kernel's id, recorded with its jobs (defaults to ``origin()``'s).
      notebook: this kernel's notebook path (defaults to ``origin()``'s).
    """

    source = "local"

    def __init__(
        self,
        path: str | None = None,
        *,
        limits: Limits | None = None,
        kernel: str | None = None,
        notebook: str | None = None,
    ) -> None:
        self.path = path or default_path()
        self.limits = limits or Limits.from_env() or Limits()
        here_notebook, here_kernel = origin()
        self.kernel = kernel or here_kernel
        self.notebook = notebook or here_notebook
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            for table, column, kind in _ADDED:
                present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    with contextlib.suppress(sqlite3.OperationalError):  # another process did
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self._queue: queue.Queue[tuple[str, dict[str, Any], Any, str | None] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._commands: Command | None = None
        self._schedules: Callable[[], list[dict[str, Any]]] | None = None
        self._closed = False
        #: how many transactions the writer committed (tests wait on ``flush``)
        self.commits = 0
        self._flushed = threading.Condition()
        self._pending = 0

    def __repr__(self) -> str:
        return f"SQLiteHistory({self.path!r})"

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        return db

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections stay in their thread)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- writing (the kernel) ----------------------------------------------------------------

    def record(
        self, message_id: str, fields: dict[str, Any], message: Any, output: str | None
    ) -> None:
        """Queue a status change for the writer thread (see ``live.transport.Recorder``)."""
        if self._closed:
            return
        with self._flushed:
            self._pending += 1
        self._queue.put((message_id, fields, message, output))
        self._ensure_thread()

    def publish_schedules(self, describe: Callable[[], list[dict[str, Any]]] | None) -> None:
        """Record, with each heartbeat of this kernel (see ``serve_commands``), the rows
        ``describe()`` returns: the contract's ``schedules`` rows of the kernel's own
        schedules, as of that heartbeat."""
        self._schedules = describe

    def serve_commands(self, handler: Command | None) -> None:
        """Carry out the commands the server leaves for this kernel with ``handler`` (checked
        at most once a second by the writer thread); ``None`` stops."""
        self._commands = handler
        if handler is not None:
            self._ensure_thread()
            self._queue.put(_WAKE)  # a writer blocked with no commands to serve

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="nbqueue-history", daemon=True
                )
                self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued change is written; return False on timeout."""
        with self._flushed:
            return self._flushed.wait_for(lambda: self._pending == 0, timeout)

    def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate()`` holds, checked now and after each transaction this
        process's writer commits; return False on timeout."""
        with self._flushed:
            return self._flushed.wait_for(predicate, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer thread."""
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        next_commands = next_heartbeat = 0.0
        while True:
            block = None
            if self._commands is not None:
                block = max(0.0, next_commands - time.monotonic())
            try:
                first = self._queue.get(timeout=block) if block is not None else self._queue.get()
            except queue.Empty:
                first = _WAKE
            batch: list[tuple[str, dict[str, Any], Any, str | None]] = []
            stop = first is None
            if first:
                batch.append(first)
            while not stop and len(batch) < BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                elif item:
                    batch.append(item)
            if batch:
                try:
                    self._write(batch)
                except Exception:
                    logger.warning(
                        "The job history could not write to %s.", self.path, exc_info=True
                    )
                with self._flushed:
                    self._pending -= len(batch)
                    self._flushed.notify_all()
            if self._commands is not None and time.monotonic() >= next_commands:
                next_commands = time.monotonic() + COMMAND_INTERVAL
                try:
                    if time.monotonic() >= next_heartbeat:
                        next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
                        self._heartbeat(alive=True)
                    self._run_commands(self._commands)
                except Exception:
                    logger.warning("The job history could not run commands.", exc_info=True)
            if stop:
                if self._commands is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._heartbeat(alive=False)
                return

    def _heartbeat(self, *, alive: bool) -> None:
        if not self.kernel:
            return
        schedules = None
        if alive and self._schedules is not None:
            try:
                schedules = json.dumps(self._schedules(), separators=(",", ":"))
            except Exception:
                logger.warning("The kernel's schedules could not be described.", exc_info=True)
        with self._transaction() as db:
            if alive:
                db.execute(
                    "INSERT OR REPLACE INTO kernels (id, pid, seen_at, schedules) "
                    "VALUES (?, ?, ?, ?)",
                    (self.kernel, os.getpid(), current_millis(), schedules),
                )
            else:
                db.execute("DELETE FROM kernels WHERE id = ?", (self.kernel,))
        with self._flushed:
            self._flushed.notify_all()  # (``until`` re-checks)

    def kernel_schedules(self, alive_within: int) -> list[dict[str, Any]]:
        """The schedules the kernels seen in the last ``alive_within`` ms recorded with their
        last heartbeat (see ``publish_schedules``), each with its ``kernel``."""
        rows = self._db().execute(
            "SELECT id, schedules FROM kernels WHERE seen_at >= ? AND schedules IS NOT NULL",
            (current_millis() - alive_within,),
        )
        found: list[dict[str, Any]] = []
        for kernel, text in rows.fetchall():
            try:
                entries = json.loads(text)
            except ValueError:
                continue
            found += [{**entry, "kernel": kernel} for entry in entries if isinstance(entry, dict)]
        return found

    def kernel_seen(self, kernel: str) -> int | None:
        """When the kernel ``kernel`` last said it serves commands (ms), or ``None``."""
        row = self._db().execute("SELECT seen_at FROM kernels WHERE id = ?", (kernel,)).fetchone()
        return None if row is None else int(row[0])

    def _row(
        self, message_id: str, fields: dict[str, Any], message: Any, output: str | None
    ) -> dict[str, Any]:
        body = None
        summary = ""
        if message is not None:
            data = message.asdict() if hasattr(message, "asdict") else dict(message)
            try:
                body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
            except (TypeError, ValueError):
                body = None  # sent with a custom encoder: listed, not retried from here
            summary = args_summary(data.get("args"), data.get("kwargs"))
        progress = fields.get("progress")
        worker = field_text(fields.get("worker_id"))
        return {
            "id": message_id,
            "status": str(fields.get("status") or "enqueued"),
            "actor": field_text(fields.get("actor_name")),
            "queue": field_text(fields.get("queue_name")),
            "args": summary,
            "progress": json.dumps(progress) if isinstance(progress, dict) else None,
            "enqueued_at": field_int(fields.get("enqueued_at")),
            "started_at": field_int(fields.get("started_at")),
            "finished_at": field_int(fields.get("finished_at")),
            "attempt": field_int(fields.get("attempt")) or 0,
            "worker": ":".join(worker.split(":")[:2]) if worker else None,
            "error": field_text(fields.get("error")),
            "notebook": self.notebook if message is not None else None,
            "kernel": self.kernel if message is not None else None,
            "message": body,
            "output": output,
            "result": field_text(fields.get("result")),
            "traceback": field_text(fields.get("traceback")),
        }

    def _write(self, batch: list[tuple[str, dict[str, Any], Any, str | None]]) -> None:
        rows = [self._row(*item) for item in batch]
        now = current_millis()
        with self._transaction() as db:
            db.executemany(_UPSERT, rows)
            self._trim(db, now)
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
        self.commits += 1

    def _trim(self, db: sqlite3.Connection, now: int) -> None:
        db.execute("DELETE FROM jobs WHERE enqueued_at < ?", (now - self.limits.max_age,))
        (count,) = db.execute("SELECT COUNT(*) FROM jobs").fetchone()
        excess = count - self.limits.max_jobs
        if excess > 0:
            db.execute(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs ORDER BY enqueued_at, rowid "
                "LIMIT ?)",
                (excess,),
            )

    # -- commands (server -> kernel) ---------------------------------------------------------

    def command(self, kind: str, job: HistoryJob, new_id: str | None = None) -> int:
        """Leave a command for the kernel that ran ``job``; return its number."""
        if not job.kernel:
            raise ValueError(f"Job {job.id} has no kernel recorded, so no kernel can act on it.")
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO commands (kernel, kind, job, new_id, created_at) VALUES (?, ?, ?, ?, ?)",
                (job.kernel, kind, job.id, new_id, current_millis()),
            )
            db.execute(
                "DELETE FROM commands WHERE created_at < ?", (current_millis() - 86_400_000,)
            )
        return int(cursor.lastrowid or 0)

    def command_outcome(self, seq: int) -> str | None:
        """Return what became of a command (``None`` while its kernel has not run it)."""
        row = self._db().execute("SELECT outcome FROM commands WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else row[0]

    def _run_commands(self, handler: Command) -> None:
        if not self.kernel:
            return
        db = self._db()
        now = current_millis()
        rows = db.execute(
            "SELECT seq, kind, job, new_id, created_at FROM commands WHERE kernel = ? AND "
            "done_at IS NULL ORDER BY seq",
            (self.kernel,),
        ).fetchall()
        for seq, kind, job, new_id, created_at in rows:
            if now - created_at > COMMAND_TTL:
                outcome = "expired"
            else:
                try:
                    outcome = handler(kind, job, new_id)
                except Exception as e:
                    logger.warning("The %s command for job %s failed.", kind, job, exc_info=True)
                    outcome = f"error: {type(e).__name__}"
            with self._transaction() as tx:
                tx.execute(
                    "UPDATE commands SET done_at = ?, outcome = ? WHERE seq = ?",
                    (current_millis(), outcome, seq),
                )

    # -- reading (the server, %nbqueue jobs) -------------------------------------------------

    def _job(self, row: tuple[Any, ...]) -> HistoryJob:
        (id_, status, actor, queue_, args, progress, enqueued, started, finished, attempt,
         worker, error, notebook, kernel) = row[:14]  # fmt: skip
        return HistoryJob(
            id=id_,
            status=status,
            actor=actor,
            queue=queue_,
            args=args or "",
            progress=json.loads(progress) if progress else None,
            enqueued_at=enqueued,
            started_at=started,
            finished_at=finished,
            worker=worker,
            notebook=notebook,
            kernel=kernel,
            source=self.source,
            retries=max(int(attempt or 0) - 1, 0),
            error=error,
        )

    def jobs(self, query: JobQuery | None = None) -> list[HistoryJob]:
        query = query or JobQuery()
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("status", query.status),
            ("actor", query.actor),
            ("queue", query.queue),
        ):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if query.notebooks:
            where.append(f"notebook IN ({', '.join('?' * len(query.notebooks))})")
            params += list(query.notebooks)
        if query.q:
            where.append("substr(id, 1, ?) = ?")
            params += [len(query.q), query.q]
        sql = f"SELECT {_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY enqueued_at DESC, rowid DESC LIMIT ?"
        rows = self._db().execute(sql, (*params, max(0, query.limit))).fetchall()
        return [self._job(row) for row in rows]

    def job(self, message_id: str) -> HistoryJob | None:
        row = (
            self._db()
            .execute(
                f"SELECT {_COLUMNS}, message, output, result, traceback FROM jobs WHERE id = ?",
                (message_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        job = self._job(row)
        job.message = json.loads(row[14]) if row[14] else None
        job.output, job.result, job.traceback = row[15], row[16], row[17]
        return job

    def count(self) -> int:
        """How many jobs the file holds."""
        return int(self._db().execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def version(self) -> int:
        row = self._db().execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else 0

    def wait(self, version: int, timeout: float) -> int:
        """Read the version every ``VERSION_CHECK`` seconds (SQLite has no cross-process
        notification; a read is one row of a small table) until it moves or ``timeout``
        seconds pass."""
        deadline = time.monotonic() + timeout
        stop = threading.Event()
        current = self.version()
        while current == version:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            stop.wait(min(VERSION_CHECK, remaining))
            current = self.version()
        return current
