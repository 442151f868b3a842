"""The browser tests' shared fixture: Debian's Chromium."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from .test_quickstart_browser import CHROMIUM, _unavailable


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium, and Playwright to drive it (checked before JupyterLab starts)."""
    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    return CHROMIUM
