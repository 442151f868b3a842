from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import nbqueue
from nbqueue.cli import ExitCode, Options, SignalCatcher, main, termination_signals
from nbqueue.cli.supervisor import Supervisor

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fast_worker_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes inherit this: their threads notice a stop after 100 ms."""
    monkeypatch.setenv("NBQUEUE_WORKER_TIMEOUT", "100")
    monkeypatch.setattr(nbqueue.worker, "WORKER_TIMEOUT", 100)


def write_module(folder: Path, source: str) -> str:
    name = f"sup_mod_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def test_processes_run_then_stop_when_the_supervisor_gets_sigterm(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Each process has its own in-memory broker and runs its own message; the last one to finish
    # sends SIGTERM to the supervisor (this test's process).
    name = write_module(
        tmp_path,
        f"""
        import os
        import pathlib
        import signal

        import nbqueue

        folder = pathlib.Path({str(tmp_path)!r})

        @nbqueue.actor
        def touch():
            (folder / f"{{os.getpid()}}.done").write_text("done")
            if len(list(folder.glob("*.done"))) == 2:
                try:
                    os.close(os.open(folder / "stopper", os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    return
                os.kill(os.getppid(), signal.SIGTERM)

        touch.send()
        """,
    )
    code = main([name, "--processes", "2", "--threads", "1", "-P", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == ExitCode.OK, err
    assert len(list(tmp_path.glob("*.done"))) == 2
    assert "[nbqueue.MainProcess] [INFO] Received SIGTERM: stopping the worker processes." in err
    assert "[nbqueue.WorkerProcess(0)]" in err and "[nbqueue.WorkerProcess(1)]" in err
    assert err.count("The broker is in-memory") == 1


def test_a_crashing_process_is_restarted_until_the_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = write_module(
        tmp_path,
        """
        import os
        import nbqueue

        @nbqueue.actor
        def crash():
            os._exit(7)

        crash.send()
        """,
    )
    options = Options(modules=(name,), processes=1, threads=1, paths=(str(tmp_path),))
    catcher = SignalCatcher(termination_signals(), kill_on_second=False)
    catcher.install()
    try:
        code = Supervisor(options, max_restarts=2, backoff=0.01).run(catcher)
    finally:
        catcher.restore()
    assert code == ExitCode.KILLED
    assert caplog.text.count("exited unexpectedly with code 7; restarting it") == 2
    assert "crashed 3 times in a row (last exit code 7)" in caplog.text


def test_a_boot_failure_stops_every_process_with_its_code(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    name = write_module(tmp_path, "raise RuntimeError('broken settings')\n")
    code = main([name, "--processes", "2", "-P", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == ExitCode.USAGE
    assert "RuntimeError: broken settings; fix the error in the traceback above." in err
    assert "restarting" not in err


def test_a_missing_module_fails_before_any_process_starts(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code = main(["no_such_tasks_xyz", "--processes", "3", "-P", str(tmp_path)])
    err = capfd.readouterr().err
    assert code == ExitCode.USAGE
    assert "starting" not in err
    assert err.endswith("run from the project folder or pass --path.\n")


def test_worker_processes_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    name = write_module(
        tmp_path,
        f"""
        import os
        import pathlib

        import nbqueue

        folder = pathlib.Path({str(tmp_path)!r})

        class Mark(nbqueue.Middleware):
            def after_worker_boot(self, broker, worker):
                (folder / f"{{os.getpid()}}.booted").write_text("")

            def after_worker_shutdown(self, broker, worker):
                (folder / f"{{os.getpid()}}.stopped").write_text("")

        nbqueue.get_broker().add_middleware(Mark())
        """,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["NBQUEUE_WORKER_TIMEOUT"] = "100"
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "nbqueue", name, "-p", "2", "-t", "1", "-P", str(tmp_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def wait_for(suffix: str) -> bool:
        # Other processes: poll for their marker files, with a bounded deadline.
        deadline = time.monotonic() + 10
        while len(list(tmp_path.glob(f"*.{suffix}"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(list(tmp_path.glob(f"*.{suffix}"))) == 2

    try:
        assert wait_for("booted"), "the worker processes did not boot within 10 s"
        supervisor.kill()
        supervisor.wait(timeout=10)
        assert wait_for("stopped"), "orphaned worker processes kept running"
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        for marker in tmp_path.glob("*.booted"):
            if not (tmp_path / f"{marker.stem}.stopped").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(marker.stem), signal.SIGKILL)
