"""``%%actor --remote`` through a real IPython shell, on the in-memory broker."""

from __future__ import annotations

import pytest

pytest.importorskip("IPython")

from IPython.core.error import UsageError  # noqa: E402

import nbqueue  # noqa: E402
from nbqueue.remote import CODE_OPTION, RemoteActor, configure_worker  # noqa: E402
from tests.notebook.conftest import ip, magics  # noqa: E402, F401

CELL = """
import pathlib
OUT = pathlib.Path({out!r})
def where(tag):
    OUT.write_text(f"{{tag}} in {{__name__}}")
"""


def test_remote_needs_the_secret_and_runs_nothing_without_it(ip, tmp_path):  # noqa: F811
    with pytest.raises(UsageError, match="NBQUEUE_SECRET"):
        ip.run_cell_magic("actor", "--remote", CELL.format(out=str(tmp_path / "x")))
    assert "where" not in ip.user_ns


def test_a_remote_actor_runs_the_published_cell_and_the_embedded_worker_skips_its_queue(
    ip,  # noqa: F811
    magics,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
    worker_factory,
):
    monkeypatch.setenv("NBQUEUE_SECRET", "magic-secret")
    out = tmp_path / "out.txt"
    ip.run_cell_magic("actor", "", "def local():\n    pass\n")
    ip.run_cell_magic("actor", "--remote", CELL.format(out=str(out)))
    assert "published for --notebook-actors workers" in capsys.readouterr().out
    where = ip.user_ns["where"]
    assert isinstance(where, RemoteActor) and where.queue_name == "notebook"
    message = ip.run_line_magic("send", "where 'sent'")
    assert message.options[CODE_OPTION] == where.code_hash
    embedded = magics.embedded.worker
    assert embedded is not None and embedded.running
    assert "notebook" not in embedded.consumers and "default" in embedded.consumers
    assert "but notebook" in magics.embedded.status()

    broker = nbqueue.get_broker()
    queues = configure_worker(
        broker, notebook_actors=True, secret=b"magic-secret", queues=["notebook"]
    )
    worker_factory(broker, queues=queues)
    broker.join("notebook", timeout=10000)
    assert out.read_text().startswith("sent in nbqueue_remote_where_")


def test_remote_with_an_explicit_queue(ip, monkeypatch):  # noqa: F811
    monkeypatch.setenv("NBQUEUE_SECRET", "magic-secret")
    ip.run_cell_magic("actor", "--remote --queue gpu --max-retries 0", "def f():\n    pass\n")
    actor = ip.user_ns["f"]
    assert actor.queue_name == "gpu" and actor.options["max_retries"] == 0
