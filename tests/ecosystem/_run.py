"""Run Python code in a fresh interpreter: packages built for Dramatiq import ``dramatiq`` at
import time, and the real Dramatiq is installed for the interop tests, so each test needs a
process where ``nbqueue.install_as_dramatiq()`` comes first."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Mapping

import nbqueue

#: The checkout under test, put first on the children's path so they import this nbqueue.
ROOT = pathlib.Path(nbqueue.__file__).resolve().parent.parent


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child interpreter: this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra or {})
    return env


def run_python(
    code: str,
    *,
    cwd: pathlib.Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) with ``python -c`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=child_env(env),
    )
