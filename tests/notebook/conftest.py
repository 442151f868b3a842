"""Fixtures for the notebook layer: a real IPython shell with ``%load_ext nbqueue`` run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("IPython")
pytest.importorskip("ipywidgets")

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

from nbqueue.notebook import embedded  # noqa: E402
from nbqueue.notebook.extension import loaded_magics  # noqa: E402


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    """IPython's shell with the extension loaded; unloaded (worker stopped) at teardown."""
    shell = InteractiveShell.instance()
    embedded._embedded = None
    shell.run_line_magic("load_ext", "nbqueue")
    before = set(shell.user_ns)
    yield shell
    shell.run_line_magic("unload_ext", "nbqueue")
    for name in set(shell.user_ns) - before:
        del shell.user_ns[name]
    embedded._embedded = None


@pytest.fixture
def magics(ip: InteractiveShell) -> Any:
    return loaded_magics(ip)
