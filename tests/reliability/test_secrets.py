"""Plan D3 beyond the Redis broker (test_redis_faults.py): a canary password in amqp:// URLs, in
the CLI's output and logs, in widget state and in a notebook executed with nbclient and saved.

Every sink is collected as text and searched for the canary; the count per sink is recorded.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import traceback
import uuid

import pytest

import nbqueue
from nbqueue.brokers.rabbitmq import RabbitmqBroker
from tests.brokers._redis import private_redis
from tests.reliability import harness


def canary() -> str:
    return f"nbq-CANARY-{uuid.uuid4().hex[:12]}"


def leaks(sinks: dict[str, str], secret: str) -> dict[str, int]:
    return {name: text.count(secret) for name, text in sinks.items() if secret in text}


def error_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


@pytest.mark.rabbitmq
@pytest.mark.timeout(180)
def test_d3_a_canary_in_amqp_urls_reaches_no_sink(
    rabbit_node, namespace, worker_factory, caplog, record
):
    caplog.set_level(logging.DEBUG)
    secret = canary()
    record.plan_id, record.broker = "D3", "rabbitmq"
    rabbit_node.ctl("add_user", "alice", secret)
    rabbit_node.ctl("set_permissions", "alice", ".*", ".*", ".*")
    sinks: dict[str, str] = {}
    port = rabbit_node.port
    try:
        good = f"amqp://alice:{secret}@127.0.0.1:{port}/%2F"
        broker = RabbitmqBroker(url=good)
        broker.emit_after("process_boot")

        @nbqueue.actor(queue_name=namespace, broker=broker, max_retries=0)
        def fails():
            raise ValueError("nothing secret here")

        fails.send()
        worker = worker_factory(broker)
        broker.join(namespace, timeout=20000)
        worker.stop()
        [dead] = broker.get_dead_letters(namespace)
        sinks.update(
            repr=repr(broker),
            str=str(broker),
            dead_letter=repr(dead) + str(dead.error),
            stats=repr(broker.queue_stats()),
        )
        broker.close()
        for name, url in (
            ("wrong_password", f"amqp://alice:{secret}x@127.0.0.1:{port}/%2F"),
            ("wrong_port", f"amqp://alice:{secret}@127.0.0.1:1/%2F"),
            ("tls_to_plain_port", f"amqps://alice:{secret}@127.0.0.1:{port}/%2F"),
        ):
            bad = RabbitmqBroker(url=url, connection_attempts=1)
            try:
                bad.declare_queue(namespace)  # connects
                bad.queue_stats()
                sinks[name] = "no error"
            except Exception as e:  # the error's text and its whole chain are sinks
                sinks[name] = error_text(e) + repr(bad)
            finally:
                bad.close()
    finally:
        rabbit_node.ctl("delete_user", "alice")
    sinks["logs_debug"] = "\n".join(
        r.getMessage() for r in caplog.records if r.name != "nbqueue.worker.WorkerThread"
    )
    found = leaks(sinks, secret)
    record.figures = {"sinks": sorted(sinks), "leaks": found}
    record.bar("0 canary occurrences in every sink", not found)
    record.bar(
        "every bad URL raised",
        all(sinks[k] != "no error" for k in ("wrong_password", "wrong_port")),
    )
    record.check_bars()


CANARY_MODULE = "tests.reliability.canary_actors"


def run_cli(command: list[str], env: dict[str, str], timeout: float = 8) -> str:
    """Run the CLI; return "exit N" (or "timeout") and everything it printed."""
    try:
        done = subprocess.run(
            command, env=env, cwd=harness.ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:  # killed: its output so far is still a sink
        out = (
            (e.stdout or b"").decode(errors="replace")
            if isinstance(e.stdout, bytes)
            else e.stdout or ""
        )
        err = (
            (e.stderr or b"").decode(errors="replace")
            if isinstance(e.stderr, bytes)
            else e.stderr or ""
        )
        return f"timeout\n{out}\n{err}"
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


@pytest.mark.timeout(60)
def test_d3_the_cli_exits_3_when_redis_refuses_the_password(record):
    secret = canary()
    record.plan_id, record.broker = "D3", "redis (CLI exit)"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("NBQUEUE_")}
    env["PYTHONPATH"] = str(harness.ROOT)
    with private_redis("--requirepass", secret) as server:
        url = f"redis://:{secret}x@127.0.0.1:{server.port}/0"
        output = run_cli(
            [sys.executable, "-m", "nbqueue", "worker", CANARY_MODULE, "--broker", url], env
        )
    record.figures = {"first_line": output.split("\n", 1)[0]}
    assert output.startswith("exit 3"), output[:500]


@pytest.mark.timeout(120)
def test_d3_a_canary_in_the_cli_broker_url_reaches_no_output(record, tmp_path):
    secret = canary()
    record.plan_id, record.broker = "D3", "redis (CLI)"
    sinks: dict[str, str] = {}
    python = [sys.executable, "-m", "nbqueue", "worker", CANARY_MODULE]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("NBQUEUE_")}
    env["PYTHONPATH"] = str(harness.ROOT)
    with private_redis("--requirepass", secret) as server:
        url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
        for name, args in (
            ("wrong_password", ["--broker", f"redis://:{secret}x@127.0.0.1:{server.port}/0"]),
            ("unreachable", ["--broker", f"redis://:{secret}@127.0.0.1:1/0"]),
            ("bad_scheme", ["--broker", f"redis+x://:{secret}@127.0.0.1:1/0"]),
            ("help", ["--help"]),
        ):
            sinks[name] = run_cli(python + args + ["-v"], env)
        # a worker that boots, runs a failing actor at DEBUG level, then stops on SIGTERM
        log = tmp_path / "worker.log"
        with open(log, "w") as out:
            worker = subprocess.Popen(
                python + ["--broker", url, "-v", "--threads", "2"],
                env=env,
                cwd=harness.ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            harness.wait_for(lambda: "ready" in log.read_text(), 30, "the worker to boot")
            from nbqueue.brokers.redis import RedisBroker

            producer = RedisBroker(url=url)
            nbqueue.set_broker(producer)
            from tests.reliability import canary_actors

            canary_actors.explode.send()
            producer.join("canary", timeout=20000, fail_fast=False)
            producer.close()
        finally:
            worker.terminate()
            worker.wait(30)
        sinks["worker_output"] = log.read_text()
    found = leaks(sinks, secret)
    record.figures = {
        "sinks": sorted(sinks),
        "leaks": found,
        "exit_codes": {k: v.split("\n", 1)[0] for k, v in sinks.items()},
    }
    record.bar("0 canary occurrences in the CLI's output", not found)
    record.bar("the worker ran the actor", "explode" in sinks["worker_output"])
    record.check_bars()


@pytest.mark.timeout(240)
def test_d3_a_canary_reaches_no_widget_state_or_saved_notebook(tmp_path, namespace, record):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    secret = canary()
    record.plan_id, record.broker = "D3", "redis (notebook)"
    with private_redis("--requirepass", secret) as server:
        # the URL comes from a file, so that no cell source holds it: every hit is a leak
        (tmp_path / "url.txt").write_text(f"redis://:{secret}@127.0.0.1:{server.port}/0")
        (tmp_path / "bad.txt").write_text(f"redis://:{secret}@127.0.0.1:1/0")
        cells = [
            "%load_ext nbqueue",
            "url = open('url.txt').read().strip()\nbad = open('bad.txt').read().strip()",
            f"%nbqueue connect $url --namespace {namespace}",
            "%nbqueue status",
            "%%actor --max-retries 0\ndef boom(x):\n    raise RuntimeError('boom')",
            "m = boom.send(1)\nm",
            "import time\ntry:\n    m.get_result(block=True, timeout=10000)\n"
            "except Exception as e:\n    print(repr(e), str(e))\ntime.sleep(1)\nm",
            "%nbqueue monitor",
            "%nbqueue results",
            "import nbqueue\nb = nbqueue.get_broker()\nprint(repr(b), str(b))\nb",
            "import logging\nlogging.getLogger('nbqueue').setLevel(logging.DEBUG)\n"
            "logging.basicConfig(level=logging.DEBUG)\nboom.send(2).get_result(block=True, "
            "timeout=10000)",
            "%xmode Verbose",
            "%nbqueue connect $bad",
            "nbqueue.get_broker().queue_stats()",
        ]
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
        client = nbclient.NotebookClient(
            nb,
            timeout=60,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(tmp_path)}},
        )
        client.execute()
        saved = tmp_path / "saved.ipynb"
        nbformat.write(nb, saved)
    text = saved.read_text()
    sinks = {f"cell {n} outputs": json.dumps(c.get("outputs", [])) for n, c in enumerate(nb.cells)}
    sinks["widget state"] = json.dumps(nb.metadata.get("widgets", {}))
    sinks["saved file"] = text
    found = leaks(sinks, secret)
    errors = [
        c.outputs[-1].get("ename")
        for c in nb.cells
        if c.outputs and c.outputs[-1].get("output_type") == "error"
    ]
    record.figures = {
        "leaks": found,
        "errors": errors,
        "widget_models": len(
            nb.metadata.get("widgets", {})
            .get("application/vnd.jupyter.widget-state+json", {})
            .get("state", {})
        ),
    }
    record.bar("0 canary occurrences in outputs, widget state and the saved notebook", not found)
    record.bar("the failing cells failed as expected", bool(errors))
    record.check_bars()
