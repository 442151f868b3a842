from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator

import pytest

pytest.importorskip("prometheus_client")

from nbqueue.brokers.stub import StubBroker  # noqa: E402 - after the skip
from nbqueue.middleware.prometheus import Prometheus  # noqa: E402


@pytest.fixture
def prom_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private multiprocess directory, as a worker process of the CLI would have it.

    A worker process sets ``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is first
    imported; this test process may have imported it already, so the library's value class is
    replaced by a fresh multiprocess one for the test. The directory is short (under /tmp), as
    the queue-count sockets in it must fit a Unix socket path.
    """
    from prometheus_client import values

    from nbqueue._prometheus import settings

    path = tempfile.mkdtemp(prefix="nbqp-", dir="/tmp")
    monkeypatch.setattr(settings, "DB_PATH", path)
    for name in settings.MULTIPROC_ENVS:
        monkeypatch.setenv(name, path)
    value_class = values.MultiProcessValue()
    monkeypatch.setattr(values, "ValueClass", value_class)
    yield path
    close = getattr(value_class, "close_all_files", None)  # prometheus_client >= 0.22
    if close is not None:
        close()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker(prom_dir: str) -> Iterator[StubBroker]:
    """A stub broker with the Prometheus middleware, its metrics set up as in a booted process."""
    broker = StubBroker()
    broker.add_middleware(Prometheus())
    broker.emit_after("process_boot")
    yield broker
    broker.flush_all()
    broker.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET ``url`` and return ``{(sample name, sorted labels): value}``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
