"""The notebook layer in a real kernel: a notebook run by nbclient, and a kernel shutdown."""

from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

WIDGET = "application/vnd.jupyter.widget-view+json"


def _outputs(cell, kind):
    return [o for o in cell.outputs if o.output_type == kind]


def _stdout(cell):
    return "".join(o.text for o in cell.outputs if o.output_type == "stream")


def test_a_notebook_defines_sends_and_waits_for_an_actor(tmp_path):
    cells = [
        "%load_ext nbqueue",
        "import threading\ngate = threading.Event()",
        "%%actor\ndef add(x, y):\n    print('adding', x, y)\n    gate.wait(30)\n    return x + y",
        "%send add 1, y=2",
        # %send returned while the job still waits at the gate: it did not wait for the job
        "m = _\nprint(m.status().status.value)\ngate.set()\n"
        "print(m.get_result(block=True, timeout=10000))",
        "await m",
        "%nbqueue status",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    load, _, actor, send, wait, awaited, status = nb.cells
    assert load.outputs == []
    assert _stdout(actor) == "Actors add on queue 'default' (StubBroker, results stored).\n"
    (shown,) = _outputs(send, "execute_result")
    assert WIDGET in shown.data
    assert shown.data["text/plain"] == "<nbqueue job add(1, y=2)>"
    assert "text/html" in shown.data
    assert _stdout(send) == ""
    assert _stdout(wait) in ("enqueued\n3\n", "running\n3\n")
    assert _outputs(awaited, "execute_result")[0].data["text/plain"] == "3"
    assert "Embedded worker: running" in _stdout(status)
    # the actor's print went to its job view, never into a cell
    assert all("adding" not in _stdout(cell) for cell in nb.cells)


@pytest.mark.redis
def test_kernel_shutdown_requeues_running_messages_without_a_kill(redis_url, namespace):
    """jupyter_client asks a kernel to shut down, SIGTERMs it after half of shutdown_wait_time
    (5 s by default) and kills it at the end. The embedded worker's exit budget fits in the
    first half; the kernel is then given far longer, so whether it exits on the request alone
    (and requeues its running messages) does not depend on how loaded the machine is."""
    from jupyter_client.manager import KernelManager, _ShutdownStatus, start_new_kernel

    from nbqueue.brokers.redis import RedisBroker
    from nbqueue.notebook.embedded import EXIT_TIMEOUT
    from tests.brokers._redis import delete_namespace

    assert EXIT_TIMEOUT / 1000 < KernelManager.shutdown_wait_time.default_value / 2
    km, kc = start_new_kernel(kernel_name="python3")
    km.shutdown_wait_time = 40
    broker = RedisBroker(url=redis_url, namespace=namespace)
    try:
        code = [
            "%load_ext nbqueue",
            f"%nbqueue connect {redis_url} --namespace {namespace}",
            "%%actor --max-retries 0\nimport time\n"
            "def slow(i):\n    while True:\n        time.sleep(0.01)",
            "ms = [slow.send(i) for i in range(3)]\n"
            "import nbqueue\n"
            "for m in ms:\n"
            "    for e in m.events(timeout=20000):\n"
            "        if e.status is nbqueue.MessageStatus.running:\n"
            "            break\n"
            "print([str(m.status().status) for m in ms])",
        ]
        for source in code:
            reply = kc.execute_interactive(source, timeout=60, output_hook=lambda msg: None)
            assert reply["content"]["status"] == "ok", (source, reply["content"])
        km.shutdown_kernel(now=False)
        # It exited on the shutdown request: neither SIGTERM nor SIGKILL was needed.
        assert km._shutdown_status is _ShutdownStatus.ShutdownRequest
        broker.declare_queue("default")
        stats = broker.queue_stats()["default"]
        assert (stats.ready, stats.in_flight) == (3, 0), stats
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)
        delete_namespace(broker.client, namespace)
        broker.close()
