"""End to end: an actor defined in a real notebook kernel runs on a CLI worker process started
with the shared secret, and is refused by one started with another secret."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

SECRET = "e2e-shared-secret"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_worker(tmp_path, url, namespace, secret, name):
    (tmp_path / "nbq_no_actors.py").write_text("# this worker only runs notebook actors\n")
    log = open(tmp_path / f"{name}.log", "wb")
    env = {**os.environ, "NBQUEUE_SECRET": secret, "PYTHONPATH": ROOT}
    command = [sys.executable, "-m", "nbqueue", "worker", "nbq_no_actors", "--path", str(tmp_path)]
    command += ["--broker", url, "--namespace", namespace, "--notebook-actors", "--threads", "2"]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b"Worker is ready" not in (tmp_path / f"{name}.log").read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError((tmp_path / f"{name}.log").read_text())
        time.sleep(0.05)
    return process


def stop_worker(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _stdout(cell):
    return "".join(o.text for o in cell.outputs if o.output_type == "stream")


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(180)
def test_a_notebook_actor_runs_on_a_cli_worker_with_the_secret_and_not_with_another(
    redis_url, namespace, tmp_path
):
    from nbqueue.brokers.redis import RedisBroker
    from tests.brokers._redis import delete_namespace, wait_until

    url = f"{redis_url}"
    cells = [
        "%load_ext nbqueue",
        f"import os\nos.environ['NBQUEUE_SECRET'] = {SECRET!r}",
        f"%nbqueue connect {url} --namespace {namespace}",
        "%%actor --remote\nimport os\ndef whoami(x):\n    return [x * 2, os.getpid()]",
        "m = %send whoami 21",
        "print(m.get_result(block=True, timeout=60000))\nprint(os.getpid())",
        "m2 = %send whoami 1\nprint(m2.message_id)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        nb, timeout=90, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    broker = RedisBroker(url=redis_url, namespace=namespace)
    good = start_worker(tmp_path, url, namespace, SECRET, "good")
    bad = None
    try:
        with client.setup_kernel():
            for index in range(6):
                client.execute_cell(nb.cells[index], index)
            assert "published for --notebook-actors workers" in _stdout(nb.cells[3])
            result, kernel_pid = _stdout(nb.cells[5]).splitlines()
            assert result == f"[42, {good.pid}]" and int(kernel_pid) != good.pid
            stop_worker(good)

            bad = start_worker(tmp_path, url, namespace, "another-secret", "bad")
            client.execute_cell(nb.cells[6], 6)
            refused_id = _stdout(nb.cells[6]).strip()
            wait_until(lambda: broker.get_dead_letters("notebook"), 60, "a dead letter")
        (dead,) = broker.get_dead_letters("notebook")
        assert dead.message is not None
        assert dead.reason == "bad_signature" and dead.message.message_id == refused_id
        log = (tmp_path / "bad.log").read_text()
        assert "Refused notebook actor 'whoami'" in log and "another-secret" not in log
        assert "bad_signature" in log
        assert "Loaded notebook actor 'whoami'" in (tmp_path / "good.log").read_text()
    finally:
        stop_worker(good)
        if bad is not None:
            stop_worker(bad)
        delete_namespace(broker.client, namespace)
        broker.close()
