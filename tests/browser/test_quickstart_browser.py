"""The quickstart notebook as a person sees it: JupyterLab in headless Chromium, and the same
notebook executed by nbclient, where no widget manager renders the job view.

The browser test drives Debian's Chromium (``/usr/bin/chromium``) with Playwright's Python API;
it never downloads a browser. Without Chromium it skips, unless ``CI`` is set: then it fails.
The screenshot goes to ``artifacts/browser/quickstart.png`` (git-ignored).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "notebooks" / "01-quickstart.ipynb"
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = Path(os.environ.get("NBQUEUE_CHROMIUM", "/usr/bin/chromium"))
SEND_CELL = "message = %send slow_square 7"
WIDGET = "application/vnd.jupyter.widget-view+json"

# The offline-safe set: no sandbox (root in CI), no GPU, nothing that calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser test (.ci/run installs chromium).")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


class Lab:
    def __init__(self, process: subprocess.Popen[bytes], port: int, token: str, log: Path):
        self.process = process
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        self.log = log

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                _get(f"{self.base}/api/status", self.token)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise AssertionError(f"JupyterLab did not start; its log:\n{self.log.read_text()}")

    def stop(self) -> None:
        try:
            for kernel in _get(f"{self.base}/api/kernels", self.token):
                request = urllib.request.Request(
                    f"{self.base}/api/kernels/{kernel['id']}",
                    method="DELETE",
                    headers={"Authorization": f"token {self.token}"},
                )
                urllib.request.urlopen(request, timeout=10).close()
        except (urllib.error.URLError, OSError):
            pass
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_lab(tmp_path: Path, root: Path, env_changes: dict[str, str]) -> Lab:
    """Start JupyterLab on 127.0.0.1 (a free port, a token) serving ``root``, with its own
    settings (no news toast), workspaces and runtime directories under ``tmp_path``, with
    ``env_changes`` over this process's environment and no ``NBQUEUE_BROKER_URL`` (the kernels
    start on the embedded broker); return it once it answers."""
    settings = tmp_path / "settings"
    notifications = settings / "@jupyterlab" / "apputils-extension"
    notifications.mkdir(parents=True, exist_ok=True)
    # Otherwise the news toast covers the screenshots (and asks the network).
    (notifications / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        IPYTHONDIR=str(tmp_path / "ipython"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
    )
    env.update(env_changes)
    env.pop("NBQUEUE_BROKER_URL", None)
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / "jupyterlab.log"
    args = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.open_browser=False",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Lab(process, port, token, log)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab serving a copy of the quickstart."""
    if importlib.util.find_spec("jupyterlab") is None:
        _unavailable("jupyterlab is not installed (pip install -e '.[test]')")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(QUICKSTART, root / QUICKSTART.name)
    server = start_lab(tmp_path, root, {})
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_the_quickstart_job_view_succeeds_in_jupyterlab(chromium: Path, lab: Lab) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "quickstart.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{lab.base}/lab/tree/{QUICKSTART.name}?reset&token={lab.token}")
            page.wait_for_selector(".jp-NotebookPanel")
            page.wait_for_function(
                "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel"
                "?.status === 'idle'"
            )
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

            try:
                cell = page.locator(".jp-CodeCell").filter(has_text=SEND_CELL)
                cell.scroll_into_view_if_needed()
                view = cell.locator(".jp-OutputArea-output")
                # The job view's own header reaches "succeeded" (not the results table's row).
                view.locator(".widget-html-content", has_text="succeeded").first.wait_for()
                bar = view.locator(".widget-hprogress .progress-bar")
                bar.wait_for()
                assert bar.is_visible()
                assert "progress-bar-success" in (bar.get_attribute("class") or "")
                assert "100%" in (bar.get_attribute("style") or "")
                assert "10/10" in view.inner_text() and "squaring" in view.inner_text()
                result = view.locator(".widget-html-content code", has_text="49")
                result.wait_for()
                text = view.inner_text()
                assert "slow_square(7)" in text, text
                cell.screenshot(path=str(screenshot))
                page.screenshot(path=str(ARTIFACTS / "quickstart-page.png"))
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "quickstart-failed.png"))
                (ARTIFACTS / "quickstart-failed.html").write_text(page.content())
                print(f"failure screenshot and page: {ARTIFACTS}/quickstart-failed.*")
                raise
        finally:
            browser.close()
    print(f"screenshot: {screenshot}")


def test_the_quickstart_without_a_widget_manager_shows_its_text_fallback(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(QUICKSTART, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    (send,) = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(SEND_CELL)]
    (shown,) = [o for o in send.outputs if o.output_type == "execute_result"]
    assert WIDGET in shown.data
    assert shown.data["text/plain"] == "<nbqueue job slow_square(7)>"
    assert "slow_square(7)" in shown.data["text/html"]
    stdout = "".join(
        o.text
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("name") == "stdout"
    )
    assert "49\nsucceeded\n" in stdout
    assert "the square of 7" not in stdout  # the actor's print went to its view only
