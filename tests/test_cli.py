from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

import nbqueue
from nbqueue.cli import ExitCode, main

REPO_ROOT = Path(__file__).resolve().parents[1]

WriteModule = Callable[..., str]


@pytest.fixture(autouse=True)
def fast_worker_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker threads notice a stop after worker_timeout; keep it short in tests."""
    monkeypatch.setenv("NBQUEUE_WORKER_TIMEOUT", "100")
    monkeypatch.setattr(nbqueue.worker, "WORKER_TIMEOUT", 100)


@pytest.fixture
def write_module(tmp_path: Path) -> WriteModule:
    """Write a module into tmp_path under a fresh name and return that name."""

    def write(source: str, *, name: str | None = None) -> str:
        name = name or f"cli_mod_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


def touch_and_stop_source(out: Path) -> str:
    """A module whose actor writes ``out`` and then sends SIGTERM to its own process."""
    return f"""
        import os
        import pathlib
        import signal

        import nbqueue

        @nbqueue.actor
        def touch(path):
            pathlib.Path(path).write_text("done")
            os.kill(os.getpid(), signal.SIGTERM)

        touch.send({str(out)!r})
    """


def test_help_documents_exit_codes_and_the_process_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "exit codes:" in out
    assert "3  the broker's server could not be reached at boot" in out
    assert "--processes defaults to 1" in out


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == ExitCode.OK
    assert capsys.readouterr().out.strip() == f"nbqueue {nbqueue.__version__}"


def test_no_module_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker"]) == ExitCode.USAGE
    assert "the following arguments are required: MODULE[:BROKER]" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--processes", "0"], ["--threads", "x"]])
def test_bad_numbers_are_usage_errors(
    option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tasks", *option]) == ExitCode.USAGE
    assert "nbqueue: error: argument" in capsys.readouterr().err


def test_unknown_module_exits_2_with_one_line_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "no_such_tasks_xyz", "--path", str(tmp_path)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert err == (
        "nbqueue: error: Could not import 'no_such_tasks_xyz': No module named "
        "'no_such_tasks_xyz'; run from the project folder or pass --path.\n"
    )


def test_file_path_instead_of_module_gets_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "src/tasks.py"]) == ExitCode.USAGE
    assert "pass the module name 'tasks' with --path src instead." in capsys.readouterr().err


def test_missing_path_folder_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tasks", "--path", str(tmp_path / "nope")]) == ExitCode.USAGE
    assert "is not a folder" in capsys.readouterr().err


def test_missing_dependency_is_named(
    write_module: WriteModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module("import no_such_dependency_xyz\n")
    assert main([name, "--path", str(tmp_path)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "No module named 'no_such_dependency_xyz'; install 'no_such_dependency_xyz'" in err


def test_module_that_raises_shows_traceback_then_one_line(
    write_module: WriteModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module("1 / 0\n")
    assert main([name, "--path", str(tmp_path)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1] == (
        f"nbqueue: error: Could not import {name!r}: ZeroDivisionError: division by zero; "
        f"fix the error in the traceback above."
    )


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("missing", "has no attribute 'missing'"),
        ("number", "is a int, not a Broker"),
    ],
)
def test_module_attribute_must_be_a_broker_or_callable(
    attr: str,
    message: str,
    write_module: WriteModule,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = write_module("number = 3\n")
    assert main([f"{name}:{attr}", "--path", str(tmp_path)]) == ExitCode.USAGE
    assert message in capsys.readouterr().err


def test_broker_option_and_module_broker_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks:broker", "--broker", "memory://"]) == ExitCode.USAGE
    assert "Both --broker and tasks:broker name a broker" in capsys.readouterr().err


def test_two_module_brokers_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["a:broker", "b:broker"]) == ExitCode.USAGE
    assert "Only one MODULE:BROKER may name the broker" in capsys.readouterr().err


def test_unknown_url_scheme_is_a_usage_error(
    write_module: WriteModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module("")
    code = main([name, "--path", str(tmp_path), "--broker", "kafka://localhost"])
    assert code == ExitCode.USAGE
    assert "Unknown broker URL scheme 'kafka'" in capsys.readouterr().err


def test_worker_runs_actors_then_stops_gracefully_on_sigterm(
    write_module: WriteModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.txt"
    name = write_module(touch_and_stop_source(out))

    assert main(["worker", name, "--path", str(tmp_path), "--threads", "2"]) == ExitCode.OK

    assert out.read_text() == "done"
    err = capsys.readouterr().err
    assert "[nbqueue.MainProcess] [INFO] Queue 'default': actors touch." in err
    assert "Received SIGTERM: stopping" in err
    assert "Worker stopped." in err
    assert err.count("The broker is in-memory: only messages sent from inside") == 1


def test_worker_keyword_is_optional(
    write_module: WriteModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.txt"
    name = write_module(touch_and_stop_source(out))
    assert main([name, "-P", str(tmp_path)]) == ExitCode.OK
    assert out.read_text() == "done"


def test_broker_url_is_set_before_modules_are_imported(
    write_module: WriteModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.txt"
    name = write_module(touch_and_stop_source(out))
    assert main([name, "-P", str(tmp_path), "--broker", "memory://"]) == ExitCode.OK
    assert out.read_text() == "done"
    assert "broker StubBroker at memory://" in capsys.readouterr().err


def test_module_broker_gets_process_boot_before_other_modules_are_imported(
    write_module: WriteModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.txt"
    app = write_module(
        """
        import nbqueue
        from nbqueue.brokers.stub import StubBroker

        events = []

        class Record(nbqueue.Middleware):
            def after_process_boot(self, broker):
                events.append("process_boot")

        broker = StubBroker()
        broker.add_middleware(Record())
        """
    )
    tasks = write_module(
        f"""
        import sys
        sys.modules[{app!r}].events.append("tasks imported")
        """
        + touch_and_stop_source(out)
    )

    assert main([tasks, f"{app}:broker", "-P", str(tmp_path)]) == ExitCode.OK

    assert sys.modules[app].events == ["process_boot", "tasks imported"]
    assert out.read_text() == "done"


def test_module_callable_sets_up_the_broker(
    write_module: WriteModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.txt"
    app = write_module(
        """
        import nbqueue
        from nbqueue.brokers.stub import StubBroker

        def setup():
            nbqueue.set_broker(StubBroker())
        """
    )
    tasks = write_module(touch_and_stop_source(out))
    assert main([f"{app}:setup", tasks, "-P", str(tmp_path)]) == ExitCode.OK
    assert out.read_text() == "done"


def test_queues_option_warns_about_queues_no_actor_uses(
    write_module: WriteModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.txt"
    name = write_module(touch_and_stop_source(out))
    assert main([name, "-P", str(tmp_path), "-Q", "default", "emails"]) == ExitCode.OK
    err = capsys.readouterr().err
    assert "--queues names 'emails', but no imported actor uses that queue" in err
    assert "Queue 'default': actors touch." in err


def test_second_signal_exits_at_once_with_code_1(
    write_module: WriteModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = write_module(
        """
        import os
        import signal
        import threading

        import nbqueue

        stopping = threading.Event()
        release = threading.Event()

        class Spy(nbqueue.Middleware):
            def before_worker_shutdown(self, broker, worker):
                stopping.set()

        nbqueue.get_broker().add_middleware(Spy())

        @nbqueue.actor
        def hang():
            os.kill(os.getpid(), signal.SIGTERM)
            stopping.wait(5)
            os.kill(os.getpid(), signal.SIGTERM)
            release.wait(5)

        hang.send()
        """
    )
    try:
        assert main([name, "-P", str(tmp_path)]) == ExitCode.KILLED
    finally:
        sys.modules[name].release.set()
    assert "Received a second signal: exiting at once" in capsys.readouterr().err


def test_broker_password_never_reaches_the_output(
    write_module: WriteModule,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "hunter2-s3cret"
    url = f"memory://worker:{secret}@localhost/"
    monkeypatch.setenv("NBQUEUE_BROKER_URL", url)
    name = write_module(
        """
        import logging
        import os
        import signal

        # A careless user module that logs the raw URL: the CLI's log format hides it anyway.
        logging.getLogger("tasks").warning("using %s", os.environ["NBQUEUE_BROKER_URL"])
        os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    assert main([name, "-P", str(tmp_path)]) == ExitCode.OK
    err = capsys.readouterr().err
    assert "memory://worker:***@localhost/" in err
    assert secret not in err


def test_password_is_hidden_when_the_broker_fails_at_boot(
    write_module: WriteModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "hunter2-s3cret"
    name = write_module("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    # Port 1 is closed: depending on the extras installed this fails with 2 (no RedisBroker) or
    # 3 (no server); the module stops the worker at once if the broker connects lazily.
    code = main([name, "-P", str(tmp_path), "--broker", f"redis://:{secret}@127.0.0.1:1/0"])
    captured = capsys.readouterr()
    assert code in (ExitCode.OK, ExitCode.USAGE, ExitCode.CONNECTION_FAILED)
    assert secret not in captured.out + captured.err


def test_python_m_nbqueue_runs_a_worker_until_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    (tmp_path / "smoke_tasks.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib
            import nbqueue

            @nbqueue.actor
            def touch(path):
                pathlib.Path(path).write_text("done")

            touch.send({str(out)!r})
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
    env["NBQUEUE_WORKER_TIMEOUT"] = "100"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbqueue", "worker", "smoke_tasks", "--threads", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Another process: poll for its side effect, with a bounded deadline.
        deadline = time.monotonic() + 10
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.exists(), "the worker did not run the actor within 10 s"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Queue 'default': actors touch." in err
    assert "Worker stopped." in err


def test_help_explains_notebook_actors_and_where_the_secret_comes_from(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "--notebook-actors" in out
    assert "--secret-file PATH" in out
    assert "(%%actor\n" in out or "(%%actor --remote)" in " ".join(out.split())
    assert "NBQUEUE_SECRET or in a file with --secret-file, never on" in out
    assert "--worker-shutdown-timeout ms to finish" in " ".join(out.split())


def test_notebook_actors_without_a_secret_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["tasks", "--notebook-actors"]) == ExitCode.USAGE
    assert capsys.readouterr().err == (
        "nbqueue: error: --notebook-actors needs the shared secret that signs notebook actors; "
        "set NBQUEUE_SECRET or pass --secret-file PATH.\n"
    )


def test_an_unreadable_or_empty_secret_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.key"
    assert main(["tasks", "--notebook-actors", "--secret-file", str(missing)]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"Could not read --secret-file {str(missing)!r}: No such file or directory" in err
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    assert main(["tasks", "--secret-file", str(empty)]) == ExitCode.USAGE
    assert "is empty; write the shared secret into it." in capsys.readouterr().err


def test_notebook_actors_with_a_secret_needs_nbqueue_remote(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Hide nbqueue.remote (it may or may not be installed): the flag is refused, clearly.
    monkeypatch.setitem(sys.modules, "nbqueue.remote", None)
    monkeypatch.setenv("NBQUEUE_SECRET", "a-shared-secret")
    assert main(["tasks", "--notebook-actors"]) == ExitCode.USAGE
    assert "--notebook-actors is unavailable" in capsys.readouterr().err


def test_without_nbqueue_remote_the_worker_runs_as_before(
    write_module: WriteModule,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "nbqueue.remote", None)
    out = tmp_path / "out.txt"
    name = write_module(touch_and_stop_source(out))
    assert main([name, "-P", str(tmp_path)]) == ExitCode.OK
    assert out.read_text() == "done"


def test_the_secret_from_a_file_never_reaches_the_output(
    write_module: WriteModule,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "file-secret-9f8e7d"
    key = tmp_path / "worker.key"
    key.write_text(secret + "\n")
    name = write_module(
        f"""
        import logging
        import os
        import signal

        # A careless module that logs the secret: the CLI's log format hides it anyway.
        logging.getLogger("tasks").warning("key %s", open({str(key)!r}).read().strip())
        os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    assert main([name, "-P", str(tmp_path), "--secret-file", str(key)]) == ExitCode.OK
    err = capsys.readouterr().err
    assert "key ***" in err
    assert secret not in err


def test_namespace_needs_a_broker_url(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["tasks", "-P", str(tmp_path), "--namespace", "ns"]) == ExitCode.USAGE
    assert "--namespace applies to a broker built from --broker" in capsys.readouterr().err


def test_boot_log_names_processes_threads_and_the_redis_stores(
    write_module: WriteModule,
    tmp_path: Path,
    redis_url: str,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = write_module(
        f"""
        import os
        import signal

        import nbqueue

        broker = nbqueue.get_broker()
        names = sorted(type(m).__name__ for m in broker.middleware)
        print("middleware", names, flush=True)

        @nbqueue.actor(queue_name={namespace!r})
        def first():
            pass

        @nbqueue.actor(queue_name={namespace!r})
        def second():
            pass

        os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    import redis

    from tests.brokers._redis import delete_namespace

    url = redis_url.replace("redis://", "redis://:pw-hidden-1234@", 1)
    try:
        code = main(
            [name, "-P", str(tmp_path), "-t", "3", "--broker", url, "--namespace", namespace]
        )
    finally:
        delete_namespace(redis.Redis.from_url(redis_url), namespace)
    captured = capsys.readouterr()
    # Redis answers "AUTH without a password configured" or connects lazily: either way the
    # boot line came first, without the password.
    assert "pw-hidden-1234" not in captured.out + captured.err
    assert code in (ExitCode.OK, ExitCode.CONNECTION_FAILED), captured.err
    assert "'AsyncIO'" in captured.out and "'Live'" in captured.out
    assert "'Results'" in captured.out
    assert (
        f"broker RedisBroker at redis://:***@127.0.0.1:6379/15 (namespace {namespace!r}); "
        "results in RedisBackend, live status; 1 process(es) x 3 thread(s)." in captured.err
    )
    assert f"Queue {namespace!r}: actors first, second." in captured.err


def test_a_module_that_sets_its_own_broker_is_served_instead_of_the_url_one(
    write_module: WriteModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.txt"
    name = write_module(
        """
        import nbqueue
        from nbqueue.brokers.stub import StubBroker

        nbqueue.set_broker(StubBroker())
        """
        + touch_and_stop_source(out)
    )
    assert main([name, "-P", str(tmp_path), "--broker", "memory://"]) == ExitCode.OK
    assert out.read_text() == "done"
    err = capsys.readouterr().err
    assert (
        f"{name} set its own broker (StubBroker); serving it instead of the one from --broker."
        in err
    )
    assert "Queue 'default': actors touch." in err
