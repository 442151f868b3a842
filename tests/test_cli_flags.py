"""Dramatiq's CLI flags in ``nbqueue worker``: parsing and validation, the PID file, the log
file, --skip-logging, and the worker settings read from the environment at import."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import nbqueue
from nbqueue.cli import RET_PIDFILE, ExitCode, main, parse_options

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fast_worker_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nbqueue.worker, "WORKER_TIMEOUT", 100)


def touch_and_stop(folder: Path, out: Path, *, extra: str = "") -> str:
    """Write a module whose actor runs ``extra``, writes ``out`` and SIGTERMs its process."""
    name = f"flags_mod_{uuid.uuid4().hex[:8]}"
    source = f"""
        import os
        import pathlib
        import signal

        import nbqueue

        @nbqueue.actor
        def touch(path):
            {extra or "pass"}
            pathlib.Path(path).write_text("done")
            os.kill(os.getpid(), signal.SIGTERM)

        touch.send({str(out)!r})
    """
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def test_dramatiq_flags_are_accepted_with_dramatiqs_shapes() -> None:
    options = parse_options(
        ["worker", "tasks", "more", "--use-spawn", "--skip-logging", "-f", "m:f", "-f", "a.b:c.d"]
        + ["--worker-fork-timeout", "10", "-Q", "--path", "-v", "-v"]
    )
    assert options.modules == ("tasks", "more")
    assert options.use_spawn and options.skip_logging
    assert options.forks == ("m:f", "a.b:c.d")
    assert options.worker_fork_timeout == 10.0
    assert options.queues is None  # -Q with no queue: all queues, as in Dramatiq
    assert options.paths == ()  # -P with no folder: none
    assert options.verbose == 2
    default = parse_options(["tasks"])
    assert default.worker_fork_timeout == 30_000.0 and default.forks == ()
    assert default.watch_include == ("**.py",) and default.watch_exclude == ()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--worker-fork-timeout", "soon"], "expected milliseconds, got 'soon'"),
        (["--worker-fork-timeout", "9.5"], "9.5 ms is too small; pass at least 10 ms"),
        (["--worker-fork-timeout", "1800001"], "pass at most 1800000 ms (30 minutes)"),
        (["-f", "module_only"], "expected MODULE:FUNCTION, e.g. metrics:serve"),
        (["--watch", "/no/such/folder"], "'/no/such/folder' is not a folder"),
    ],
)
def test_bad_fork_and_watch_arguments_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tasks", *args]) == ExitCode.USAGE
    assert message in capsys.readouterr().err


def test_fork_timeout_bounds_are_inclusive() -> None:
    assert parse_options(["t", "--worker-fork-timeout", "1800000"]).worker_fork_timeout == 1.8e6


def test_help_says_nbqueue_always_spawns_and_documents_code_4(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == ExitCode.OK
    out = " ".join(capsys.readouterr().out.split())
    assert "nbqueue always starts processes with spawn" in out
    assert "4 the --pid-file names a running process, holds garbage or cannot be written" in out


def test_a_pid_file_with_garbage_exits_4_and_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file = tmp_path / "settings.toml"
    pid_file.write_text("[worker]\nthreads = 4\n")
    code = main(["tasks", "-P", str(tmp_path), "--pid-file", str(pid_file)])
    assert code == RET_PIDFILE == 4
    assert "holds something other than a PID" in capsys.readouterr().err
    assert pid_file.read_text() == "[worker]\nthreads = 4\n"


def test_a_pid_file_of_a_running_process_exits_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file = tmp_path / "nbqueue.pid"
    pid_file.write_text(str(os.getppid()))
    assert main(["tasks", "-P", str(tmp_path), "--pid-file", str(pid_file)]) == 4
    assert f"nbqueue is already running with PID {os.getppid()}" in capsys.readouterr().err
    assert pid_file.read_text() == str(os.getppid())


def test_a_stale_pid_file_is_replaced_while_running_and_removed_at_exit(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pid_file = tmp_path / "nbqueue.pid"
    pid_file.write_text(f"{gone.pid}\n")
    out = tmp_path / "out.txt"
    seen = tmp_path / "seen.txt"
    extra = f"pathlib.Path({str(seen)!r}).write_text(pathlib.Path({str(pid_file)!r}).read_text())"
    name = touch_and_stop(tmp_path, out, extra=extra)
    code = main([name, "-P", str(tmp_path), "--threads", "1", "--pid-file", str(pid_file)])
    assert code == ExitCode.OK
    assert seen.read_text() == str(os.getpid())
    assert not pid_file.exists()


def test_log_file_gets_the_lines_and_stderr_none(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "worker.log"
    name = touch_and_stop(tmp_path, tmp_path / "out.txt")
    assert main([name, "-P", str(tmp_path), "--threads", "1", "--log-file", str(log)]) == 0
    assert "[nbqueue.MainProcess] [INFO] Worker stopped." in log.read_text()
    assert "Worker stopped." not in capfd.readouterr().err


def test_skip_logging_configures_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    seen = tmp_path / "seen.txt"
    extra = (
        "import logging; root = logging.getLogger(); "
        f"pathlib.Path({str(seen)!r}).write_text(f'{{len(root.handlers)}} {{root.level}}')"
    )
    name = touch_and_stop(tmp_path, tmp_path / "out.txt", extra=extra)
    assert main([name, "-P", str(tmp_path), "--threads", "1", "--skip-logging"]) == 0
    assert seen.read_text() == f"{len(handlers)} {level}"
    assert "[nbqueue.MainProcess]" not in capfd.readouterr().err


ENV_PROBE = """
import os, sys
import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.worker import Worker
os.environ["dramatiq_queue_prefetch"] = "1"
os.environ["NBQUEUE_DELAY_QUEUE_PREFETCH"] = "2"
os.environ["dramatiq_worker_timeout"] = "3"
os.environ["dramatiq_restart_delay"] = "4"
worker = Worker(StubBroker(), worker_threads=4)
print(worker.queue_prefetch, worker.delay_prefetch, worker.worker_timeout,
      nbqueue.worker.CONSUMER_RESTART_DELAY)
"""


@pytest.mark.parametrize(
    ("before_import", "expected"),
    [
        ({}, "8 4000 1000 3000"),
        (
            {
                "dramatiq_queue_prefetch": "5",
                "dramatiq_delay_queue_prefetch": "6",
                "NBQUEUE_WORKER_TIMEOUT": "7",
                "dramatiq_restart_delay": "9",
            },
            "5 6 7 9",
        ),
    ],
)
def test_worker_environment_variables_are_read_at_import_only(
    before_import: dict[str, str], expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBQUEUE_", "dramatiq_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.update(before_import)
    result = subprocess.run(
        [sys.executable, "-c", ENV_PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected.split()
