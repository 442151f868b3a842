"""A real ``nbqueue worker`` subprocess: fork functions (``--fork-function`` and middleware
``forks``), reloads on SIGHUP (no message lost on Redis) and on file changes with ``--watch``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import nbqueue
from nbqueue.connection import broker_from_url

REPO_ROOT = Path(__file__).resolve().parents[1]


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    """Poll another process's effect until ``condition()`` holds; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Cli:
    """``python -m nbqueue worker ...`` in its own session, its log in a file."""

    def __init__(self, folder: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NBQUEUE_", "dramatiq_"))}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
        env["NBQUEUE_WORKER_TIMEOUT"] = "100"
        self.log = folder / f"cli-{uuid.uuid4().hex[:6]}.log"
        self._file = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nbqueue", "worker", *args]
            + ([] if "-P" in args else ["-P", str(folder)]),
            cwd=folder,
            env=env,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 60) -> None:
        def check() -> object:
            if self.process.poll() is not None:
                raise AssertionError(f"the CLI exited early:\n{self.text()}")
            return condition()

        wait_until(check, what, timeout)

    def stop(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._file.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._file.close()


@pytest.fixture
def clis() -> Iterator[list[Cli]]:
    started: list[Cli] = []
    yield started
    for cli in started:
        cli.kill()


FORKS_MODULE = """
import os
import pathlib
import time

import nbqueue
from nbqueue.middleware import Middleware

FOLDER = pathlib.Path({folder!r})


def record(name):
    (FOLDER / f"{{name}}-{{os.getpid()}}").write_text("")


def cli_fork():
    record("cli_fork")
    while True:
        time.sleep(1)


def middleware_fork():
    record("middleware_fork")
    while True:
        time.sleep(1)


def once():
    record("once")
    return 0


def flaky():
    record("flaky")
    if len(list(FOLDER.glob("flaky-*"))) == 1:
        return 3  # the first run fails: the CLI restarts it
    while True:
        time.sleep(1)


class WithForks(Middleware):
    forks = [middleware_fork]


nbqueue.get_broker().add_middleware(WithForks())
"""


def fork_pids(folder: Path, name: str) -> list[int]:
    return [int(p.name.rsplit("-", 1)[1]) for p in folder.glob(f"{name}-*")]


@pytest.mark.parametrize("processes", [1, 2])
def test_fork_functions_of_the_command_line_and_of_middleware_run_once_each(
    tmp_path: Path, clis: list[Cli], processes: int
) -> None:
    name = f"forks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FORKS_MODULE.format(folder=str(tmp_path))))
    args = [name, "--processes", str(processes), "--threads", "1", "-f", f"{name}:cli_fork"]
    args += ["-f", f"{name}:flaky", "--fork-function", f"{name}:once"]
    cli = Cli(tmp_path, *args, "--worker-fork-timeout", "60000")
    clis.append(cli)
    for fork in ("cli_fork", "middleware_fork", "once"):
        cli.wait_for(lambda fork=fork: fork_pids(tmp_path, fork), f"the fork {fork} to run")
    cli.wait_for(lambda: "Started fork process 3" in cli.text(), "the fork processes to be logged")
    cli.wait_for(lambda: "finished." in cli.text(), "the fork that returns 0 to be reaped")
    cli.wait_for(lambda: len(fork_pids(tmp_path, "flaky")) == 2, "the failed fork's restart")
    assert f"({name}:flaky) exited with code 3; restarting it in 1.0 s." in cli.text()
    running = fork_pids(tmp_path, "cli_fork") + fork_pids(tmp_path, "middleware_fork")
    cli.wait_for(lambda: "Fork process is running" in cli.text(), "a fork to log")
    running.append(max(fork_pids(tmp_path, "flaky"), key=lambda pid: alive(pid)))
    assert all(alive(pid) for pid in running)
    assert os.getpid() not in running and cli.process.pid not in running
    code = cli.stop()
    log = cli.text()
    assert code == 0, log
    # Each function ran in exactly one process, the middleware's one learned from the workers
    # (deduplicated across worker processes) and never restarted.
    assert [len(fork_pids(tmp_path, f)) for f in ("cli_fork", "middleware_fork", "once")] == [1] * 3
    assert f"for {name}:middleware_fork()." in log
    assert f"for {name}:cli_fork()." in log
    wait_until(lambda: not any(alive(pid) for pid in running), "the fork processes to exit")


@pytest.fixture
def record_client(redis_url: str, namespace: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


SLOW_MODULE = """
import os
import time

import redis

import nbqueue

RECORD = redis.Redis.from_url({url!r})
PREFIX = {prefix!r}


@nbqueue.actor(queue_name={queue!r}, actor_name="slow", max_retries=0)
def slow(n):
    RECORD.hincrby(PREFIX + ":starts", str(n), 1)
    time.sleep(0.3)
    pipe = RECORD.pipeline(transaction=False)
    pipe.hincrby(PREFIX + ":pids", str(os.getpid()), 1)
    pipe.hincrby(PREFIX + ":runs", str(n), 1)
    pipe.execute()
"""


@pytest.mark.timeout(180)
def test_sighup_reloads_every_worker_process_and_loses_no_message(
    tmp_path: Path, clis: list[Cli], redis_url: str, namespace: str, record_client: redis.Redis
) -> None:
    prefix = f"{namespace}-record"
    name = f"slow_{uuid.uuid4().hex[:8]}"
    source = SLOW_MODULE.format(url=redis_url, prefix=prefix, queue=namespace)
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))

    def counts(key: str) -> dict[str, int]:
        raw = record_client.hgetall(f"{prefix}:{key}")
        return {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in raw.items()}

    producer = broker_from_url(redis_url, namespace=namespace)
    try:

        @nbqueue.actor(queue_name=namespace, actor_name="slow", broker=producer, max_retries=0)
        def slow(n: int) -> None:
            raise AssertionError("runs in the CLI only")

        total = 60
        for n in range(total):
            slow.send(n)
        cli = Cli(
            tmp_path,
            name,
            "--broker",
            redis_url,
            "--namespace",
            namespace,
            "--processes",
            "2",
            "--threads",
            "3",
        )
        clis.append(cli)
        cli.wait_for(lambda: len(counts("runs")) >= 6, "some messages to run", 90)
        # A hangup of the whole session, as a closing terminal sends it: the main process
        # reloads, the worker processes ignore it (they would die with running messages).
        os.killpg(cli.process.pid, signal.SIGHUP)
        cli.wait_for(lambda: cli.text().count("starting its replacement") == 2, "both replacements")
        cli.wait_for(lambda: len(counts("runs")) == total, "every message to finish", 120)
        code = cli.stop()
        log = cli.text()
        assert code == 0, log
    finally:
        producer.close()
    runs, starts = counts("runs"), counts("starts")
    lost = [n for n in range(total) if runs.get(str(n), 0) == 0]
    assert lost == []
    # Every message that started finished (graceful: nothing was cut short and run again).
    assert starts == runs
    assert "Received SIGHUP: reloading the worker processes" in log
    assert len(counts("pids")) >= 3, "the replacements ran messages too"
    assert "exited unexpectedly" not in log


def test_sighup_with_one_process_reexecutes_the_command_in_place(
    tmp_path: Path, clis: list[Cli]
) -> None:
    boots = tmp_path / "boots.txt"
    name = f"boot_{uuid.uuid4().hex[:8]}"
    source = f"""
        import os

        with open({str(boots)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
    """
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    pid_file = tmp_path / "cli.pid"
    cli = Cli(tmp_path, name, "--threads", "1", "--pid-file", str(pid_file))
    clis.append(cli)
    cli.wait_for(lambda: "Worker is ready" in cli.text(), "the worker to boot")
    cli.process.send_signal(signal.SIGHUP)
    cli.wait_for(lambda: cli.text().count("Worker is ready") == 2, "the worker to boot again")
    assert boots.read_text().split() == [str(cli.process.pid)] * 2
    assert pid_file.read_text() == str(cli.process.pid)
    assert cli.stop() == 0, cli.text()
    assert not pid_file.exists()


WATCHED_MODULE = """
import pathlib

import nbqueue

VERSION = {version!r}


@nbqueue.actor
def report():
    (pathlib.Path({folder!r}) / f"ran-{{VERSION}}").write_text("")


report.send()
"""


@pytest.mark.parametrize("polling", [False, True])
def test_watch_reloads_the_workers_when_a_module_changes(
    tmp_path: Path, clis: list[Cli], polling: bool
) -> None:
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    name = f"watched_{uuid.uuid4().hex[:8]}"
    module = code_dir / f"{name}.py"
    module.write_text(WATCHED_MODULE.format(version="v1", folder=str(tmp_path)))
    args = [name, "--threads", "1", "-P", str(code_dir), "--watch", str(code_dir), "-x", "skip_*"]
    cli = Cli(tmp_path, *args, *(["--watch-use-polling"] if polling else []))
    clis.append(cli)
    cli.wait_for(lambda: (tmp_path / "ran-v1").exists(), "the first version to run")
    cli.wait_for(lambda: "Watching" in cli.text(), "the watcher to start")
    # The excluded file's change comes first: had it counted, its reload would be logged first.
    (code_dir / "skip_me.py").write_text("x = 1\n")
    module.write_text(WATCHED_MODULE.format(version="v2", folder=str(tmp_path)))
    cli.wait_for(lambda: (tmp_path / "ran-v2").exists(), "the new code to run")
    reloads = [line for line in cli.text().splitlines() if "changed: reloading" in line]
    assert reloads and all(f"{name}.py changed" in line for line in reloads)
    # A module broken by an edit waits for the next edit instead of ending the command.
    module.write_text("this is not Python\n")
    cli.wait_for(lambda: "failed to boot (exit code 2)" in cli.text(), "the broken boot")
    module.write_text(WATCHED_MODULE.format(version="v3", folder=str(tmp_path)))
    cli.wait_for(lambda: (tmp_path / "ran-v3").exists(), "the fixed code to run")
    assert cli.stop() == 0, cli.text()


def test_watch_without_watchdog_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "watchdog").mkdir()
    (blocker / "watchdog" / "__init__.py").write_text("raise ImportError('no watchdog here')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(REPO_ROOT)])
    result = subprocess.run(
        [sys.executable, "-m", "nbqueue", "worker", "tasks", "--watch", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "nbqueue: error: --watch needs the watchdog package; install it with "
        "pip install 'nbqueue[watch]'.\n"
    )
