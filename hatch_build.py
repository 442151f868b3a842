"""Build hook: the JupyterLab extension (labextension/, TypeScript) goes into the wheel.

When the built files in ``nbqueue/labextension`` are missing or older than the sources and npm
is on PATH, it runs ``npm ci`` and ``npm run build:prod`` in ``labextension/`` (JupyterLab's
builder, ``jupyter-builder``, comes with the build environment). Without npm, the wheel is
built with the Python package alone and a warning says how to get the Jobs sidebar: a plain
``pip install .`` never needs Node.js. A wheel built from an sdist finds the built files there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCES = ("src", "style", "schema", "package.json", "package-lock.json", "tsconfig.json")
TARGET = "share/jupyter/labextensions/nbqueue-labextension"


def _newest(paths: list[Path]) -> float:
    newest = 0.0
    for path in paths:
        if path.is_dir():
            for child in path.rglob("*"):
                if child.is_file():
                    newest = max(newest, child.stat().st_mtime)
        elif path.exists():
            newest = max(newest, path.stat().st_mtime)
    return newest


class LabExtensionHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        source = root / "labextension"
        built = root / "nbqueue" / "labextension"
        marker = built / "static" / "style.js"
        stale = source.is_dir() and (
            not marker.exists() or _newest([source / p for p in SOURCES]) > marker.stat().st_mtime
        )
        if stale and os.environ.get("NBQUEUE_SKIP_LABEXTENSION") != "1":
            npm = shutil.which("npm")
            if npm is None:
                if not marker.exists():
                    self._warn(
                        "npm is not on PATH, so the JupyterLab extension (the Jobs sidebar) is "
                        "not built into this install; install Node.js 18+ and npm, then "
                        "install again to get it."
                    )
            else:
                try:
                    self._build(npm, source)
                except (OSError, subprocess.CalledProcessError) as e:
                    # (offline, say): the install goes on, with an earlier build if there is one
                    self._warn(
                        f"The JupyterLab extension (the Jobs sidebar) could not be built ({e}); "
                        f"installing {'its earlier build' if marker.exists() else 'without it'}. "
                        f"Run `npm ci && npm run build:prod` in labextension/ to see why."
                    )
        if marker.exists():
            shared = build_data.setdefault("shared_data", {})
            shared["nbqueue/labextension"] = TARGET
            shared["labextension/install.json"] = f"{TARGET}/install.json"

    def _build(self, npm: str, source: Path) -> None:
        # the build environment's scripts (jupyter-builder) first on PATH
        env = {
            **os.environ,
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
        }
        for command in (
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            [npm, "run", "--silent", "build:prod"],
        ):
            self.app.display_info(f"labextension: {' '.join(command[1:])}")
            subprocess.run(command, cwd=source, env=env, check=True)

    def _warn(self, text: str) -> None:
        self.app.display_warning(text)
