"""nbqueue's JupyterLab extension in Debian's Chromium: the Jobs sidebar, a job's detail and its
actions, and the notification of a long job.

JupyterLab loads the extension built in ``nbqueue/labextension`` (``cd labextension && npm ci &&
npm run build:prod``, or any ``pip install`` with Node.js): the fixture puts a link to it first on
``JUPYTER_PATH``, so the test sees this tree's build even beside an installed copy. Screenshots
go to ``$NBQUEUE_ARTIFACTS/browser`` (default ``artifacts/browser``, git-ignored).
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_quickstart_browser import CHROMIUM_ARGS, Lab, _unavailable, start_lab

ROOT = Path(__file__).resolve().parents[2]
BUILT = ROOT / "nbqueue" / "labextension"
ARTIFACTS = Path(os.environ.get("NBQUEUE_ARTIFACTS", ROOT / "artifacts")) / "browser"
REDIS_URL = os.environ.get("NBQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SIDEBAR_TAB = ".jp-SideBar .lm-TabBar-tab[data-id='nbqueue-sidebar']"

Page = Any  # playwright.sync_api.Page (imported inside the tests, after the skips)


def _start_lab(
    tmp_path: Path,
    server_config: dict[str, Any],
    notebooks: dict[str, list[str]] | None = None,
    lab_settings: dict[str, Any] | None = None,
    env_extra: dict[str, str] | None = None,
) -> Lab:
    if importlib.util.find_spec("jupyterlab") is None:
        _unavailable("jupyterlab is not installed (pip install -e '.[test]')")
    if not (BUILT / "package.json").exists():
        _unavailable(
            "the JupyterLab extension is not built (cd labextension && npm ci && npm run build:prod)"
        )
    root = tmp_path / "root"
    root.mkdir()
    for name, cells in (notebooks or {}).items():
        _write_notebook(root / name, cells)
    jupyter_path = tmp_path / "jupyter"
    (jupyter_path / "labextensions").mkdir(parents=True)
    (jupyter_path / "labextensions" / "nbqueue-labextension").symlink_to(BUILT)
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps(server_config))
    if lab_settings is not None:
        ours = tmp_path / "settings" / "nbqueue-labextension"
        ours.mkdir(parents=True)
        (ours / "plugin.jupyterlab-settings").write_text(json.dumps(lab_settings))
    jupyter_paths = [str(jupyter_path), os.environ.get("JUPYTER_PATH", "")]
    return start_lab(
        tmp_path,
        root,
        {"JUPYTER_PATH": os.pathsep.join(filter(None, jupyter_paths)), **(env_extra or {})},
    )


def _write_notebook(path: Path, cells: list[str]) -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


class Browser:
    """Chromium on one page, collecting the console's errors and the page's exceptions."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        url = (message.location or {}).get("url", "")
        self.errors.append(f"console error: {message.text} ({url})")

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path))
        return path


def _browse(chromium: Path, test: Callable[[Browser], None], failure_name: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.set_default_timeout(60_000)
            session = Browser(page)
            try:
                test(session)
            except Exception:
                session.shot(f"{failure_name}-failed.png")
                (ARTIFACTS / f"{failure_name}-failed.html").write_text(page.content())
                print(f"failure screenshot and page: {ARTIFACTS}/{failure_name}-failed.*")
                print("\n".join(session.errors))
                raise
        finally:
            browser.close()


def _open_sidebar(page: Page) -> Any:
    page.locator(SIDEBAR_TAB).click()
    sidebar = page.locator("[data-testid='nbq-sidebar']")
    sidebar.wait_for(state="visible")
    return sidebar


@pytest.fixture
def lab_without_server_extension(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab with the frontend extension and without its server half: the API is a 404."""
    lab = _start_lab(tmp_path, {"ServerApp": {"jpserver_extensions": {"nbqueue.lab": False}}})
    try:
        yield lab
    finally:
        lab.stop()


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_the_sidebar_loads_and_says_when_the_server_extension_is_missing(
    chromium: Path, lab_without_server_extension: Lab
) -> None:
    lab = lab_without_server_extension

    def test(session: Browser) -> None:
        page = session.page
        page.goto(f"{lab.base}/lab?reset&token={lab.token}")
        page.wait_for_function("() => window.jupyterapp?.commands.hasCommand('nbqueue:open-jobs')")
        assert page.evaluate("window.jupyterapp.commands.hasCommand('nbqueue:open-job')")
        palette = page.evaluate("() => window.jupyterapp.commands.label('nbqueue:open-jobs')")
        assert palette == "nbqueue: Show Jobs"
        sidebar = _open_sidebar(page)
        source = sidebar.locator("[data-testid='nbq-sources'] .nbq-source[data-ok='false']")
        source.wait_for()
        assert "404" in source.inner_text() and "nbqueue[lab]" in source.inner_text()
        assert sidebar.locator(".nbq-jobs-table th").all_inner_texts()[:4] == [
            "id",
            "actor",
            "args",
            "status",
        ]
        # the filters are there, the status one offers every status of the contract
        options = sidebar.locator("[data-testid='nbq-filter-status'] option").all_inner_texts()
        assert options[0] == "any status" and "dead" in options and "retrying" in options
        session.shot("sidebar-no-server.png")
        sidebar.locator(".nbq-tab[data-tab='workers']").click()
        error = sidebar.locator("[data-pane='workers'] [data-testid='nbq-pane-error']")
        error.wait_for()
        assert "404" in error.inner_text()
        # its settings schema is installed with the extension, with the contract's defaults
        schema = page.evaluate(
            "async () => (await window.jupyterapp.serviceManager.settings"
            ".fetch('nbqueue-labextension:plugin')).schema.properties"
        )
        assert schema["notifications"]["default"] is True
        assert schema["notifyAfterSeconds"]["default"] == 10
        # the long poll backs off instead of hammering the missing API: by now at most a few asks
        unexpected = [e for e in session.errors if "/nbqueue/api/" not in e or "404" not in e]
        assert unexpected == [], unexpected
        asks = [e for e in session.errors if "/nbqueue/api/jobs" in e]
        assert 1 <= len(asks) <= 6, asks

    _browse(chromium, test, "sidebar-no-server")


# --- with the server extension (nbqueue.lab): two notebooks, the embedded broker and Redis ---

ACTORS = """%%actor --max-retries 0
import time

import nbqueue


def stepper(n):
    for i in range(1, n + 1):
        time.sleep(0.5)
        nbqueue.progress(i, total=n, desc="stepping")
    print(f"stepper made {n} steps")
    return n * 10


def boom():
    print("about to fail")
    raise ValueError("boom on purpose")


def spinner():
    for i in range(100_000):
        time.sleep(0.1)
        nbqueue.progress(i, desc="spinning")
"""

STALE = """%%actor --max-age 1
def stale():
    return "never runs: older than its 1 ms age limit when it comes due"
"""


def _run_all(page: Page, lab: Lab, name: str) -> None:
    page.goto(f"{lab.base}/lab/tree/{name}?token={lab.token}")
    page.wait_for_selector(".jp-NotebookPanel")
    # (the workspace may restore the other notebook first: wait for this one to be current)
    page.wait_for_function(
        "name => { const w = window.jupyterapp?.shell.currentWidget;"
        " return w?.context?.path === name"
        " && w.sessionContext?.session?.kernel?.status === 'idle'; }",
        arg=name,
    )
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")


def _api(lab: Lab, path: str, method: str = "GET") -> Any:
    """A Jupyter server REST call with the token (``path``: under nbqueue/api/, or absolute)."""
    url = lab.base + (path if path.startswith("/") else f"/nbqueue/api/{path}")
    request = urllib.request.Request(
        url,
        method=method,
        data=b"" if method == "POST" else None,
        headers={"Authorization": f"token {lab.token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read() or b"null")


def _row(sidebar: Any, actor: str, status: str, notebook: str | None = None) -> Any:
    selector = f".nbq-jobs-row[data-status='{status}']"
    rows = sidebar.locator(selector).filter(
        has=sidebar.page.locator(".nbq-col-actor", has_text=actor)
    )
    if notebook:
        rows = rows.filter(has=sidebar.page.locator(".nbq-col-notebook", has_text=notebook))
    return rows.first


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as e:
        _unavailable(f"no Redis at {REDIS_URL} ({type(e).__name__})")
    namespace = f"nbq-lab-{uuid.uuid4().hex[:8]}"
    try:
        yield namespace
    finally:
        keys = list(client.scan_iter(match=f"{namespace}*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def lab_with_jobs(tmp_path: Path, redis_namespace: str) -> Iterator[Lab]:
    embedded = [
        "%load_ext nbqueue",
        ACTORS,
        STALE,
        "%%actor --every 1h\ndef hourly_report():\n    return 'report'",
        "done = %send stepper 6",
        "failing = %send boom",
        "spinning = %send spinner",
        "stale_message = %send stale --delay 300",
    ]
    on_redis = [
        "%load_ext nbqueue",
        f"%nbqueue connect {REDIS_URL} --namespace {redis_namespace}",
        ACTORS,
        "remote = %send stepper 4",
    ]
    lab = _start_lab(
        tmp_path,
        {
            "ServerApp": {"jpserver_extensions": {"nbqueue.lab": True}},
            "NBQueue": {"broker_url": REDIS_URL, "namespace": redis_namespace},
        },
        notebooks={"embedded.ipynb": embedded, "on-redis.ipynb": on_redis},
        # a notification for any job of a notebook longer than a second
        lab_settings={"notifications": True, "notifyAfterSeconds": 1},
        env_extra={"NBQUEUE_HISTORY_PATH": str(tmp_path / "history.sqlite3")},
    )
    try:
        yield lab
    finally:
        lab.stop()


@pytest.mark.browser
@pytest.mark.redis
@pytest.mark.timeout(300)
def test_the_sidebar_follows_jobs_of_two_notebooks_and_acts_on_them(
    chromium: Path, lab_with_jobs: Lab
) -> None:
    lab = lab_with_jobs

    def test(session: Browser) -> None:
        page = session.page
        _run_all(page, lab, "on-redis.ipynb")
        _run_all(page, lab, "embedded.ipynb")
        sidebar = _open_sidebar(page)
        sources = sidebar.locator("[data-testid='nbq-sources']")
        sources.locator(".nbq-source[data-source='redis'][data-ok='true']").wait_for()
        sources.locator(".nbq-source[data-source='local'][data-ok='true']").wait_for()

        # both notebooks' jobs are listed, and their status follows the jobs
        _row(sidebar, "stepper", "running", "embedded.ipynb").wait_for()
        redis_done = _row(sidebar, "stepper", "succeeded", "on-redis.ipynb")
        redis_done.wait_for()
        assert redis_done.get_attribute("data-source") == "redis"
        local_done = _row(sidebar, "stepper", "succeeded", "embedded.ipynb")
        local_done.wait_for()
        seen_at = page.evaluate("Date.now()")
        assert local_done.get_attribute("data-source") == "local"
        session.shot("sidebar-jobs.png")
        # measured, not asserted: from the job's end in its kernel to the row showing it
        local_id = local_done.get_attribute("data-job-id")
        finished = _api(lab, f"jobs/{local_id}")["finished_at"]
        latency["status_to_sidebar_ms"] = seen_at - finished

        # a long job's end (6 steps, 3 s > notifyAfterSeconds) is announced, with a link (3 s:
        # long enough that the list shows it running, above, on a loaded machine)
        toast = page.locator(".Toastify__toast", has_text="stepper(6) succeeded").first
        toast.wait_for()
        session.shot("sidebar-notification.png")
        toast.get_by_role("button", name="Show job").click()
        detail = sidebar.locator("[data-testid='nbq-detail'][data-status='succeeded']")
        detail.wait_for()
        assert "stepper made 6 steps" in detail.locator("[data-testid='nbq-output']").inner_text()
        assert "60" in detail.locator("[data-testid='nbq-result']").inner_text()
        session.shot("sidebar-job-detail.png")
        detail.locator("[data-testid='nbq-back']").click()

        # Cancel stops the running spinner
        _row(sidebar, "spinner", "running").click()
        detail = sidebar.locator("[data-testid='nbq-detail']")
        clicked_at = page.evaluate("Date.now()")
        detail.locator(".nbq-action[data-action='cancel']").click()
        sidebar.locator("[data-testid='nbq-detail-info']", has_text="cancel requested").wait_for()
        sidebar.locator("[data-testid='nbq-detail'][data-status='aborted']").wait_for()
        spinner_id = detail.get_attribute("data-job-id")
        aborted = _api(lab, f"jobs/{spinner_id}")
        assert aborted["status"] == "aborted"
        latency["cancel_click_to_stopped_ms"] = aborted["finished_at"] - clicked_at
        assert detail.locator(".nbq-action[data-action='cancel']").count() == 0
        detail.locator("[data-testid='nbq-back']").click()

        # a failed job shows its traceback, and Retry sends a copy that fails the same way
        _row(sidebar, "boom", "failed").click()
        failed = sidebar.locator("[data-testid='nbq-detail'][data-status='failed']")
        failed.wait_for()
        failed_id = failed.get_attribute("data-job-id")
        error = failed.locator("[data-testid='nbq-error']").inner_text()
        assert error == "ValueError: boom on purpose", error
        traceback = failed.locator("[data-testid='nbq-traceback']").inner_text()
        assert "ValueError: boom on purpose" in traceback, traceback
        assert "about to fail" in failed.locator("[data-testid='nbq-output']").inner_text()
        failed.locator(".nbq-action[data-action='retry']").click()
        sidebar.locator("[data-testid='nbq-detail-info']", has_text="sent again as").wait_for()
        retried = sidebar.locator("[data-testid='nbq-detail'][data-status='failed']")
        retried.wait_for()
        assert retried.get_attribute("data-job-id") != failed_id
        retried.locator("[data-testid='nbq-back']").click()

        # a dead letter shows its reason, and Requeue moves it back to its queue
        _row(sidebar, "stale", "dead").click()
        dead = sidebar.locator("[data-testid='nbq-detail'][data-status='dead']")
        dead.wait_for()
        assert dead.locator("[data-testid='nbq-dead-reason']").inner_text().startswith("dead: ")
        dead.locator(".nbq-action[data-action='requeue']").click()
        sidebar.locator("[data-testid='nbq-detail-info']", has_text="moved back").wait_for()
        assert sidebar.locator("[data-testid='nbq-detail-error']").count() == 0
        dead.locator("[data-testid='nbq-back']").click()

        # filters: the notebook filter keeps the Redis notebook's job alone
        sidebar.locator("[data-testid='nbq-filter-notebook']").select_option("on-redis.ipynb")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.nbq-jobs-row .nbq-col-notebook')]"
            ".every(c => c.textContent === 'on-redis.ipynb') && "
            "document.querySelectorAll('.nbq-jobs-row').length > 0"
        )
        sidebar.locator(".nbq-tab[data-tab='queues']").click()
        sidebar.locator(".nbq-queues-row[data-queue='default']").first.wait_for()
        # (whether a kernel's embedded worker is listed is the server's call: the table is here)
        sidebar.locator(".nbq-tab[data-tab='workers']").click()
        sidebar.locator("[data-testid='nbq-workers']").wait_for()
        # the Redis notebook's embedded worker, by its heartbeat in the namespace's registry
        sidebar.locator(".nbq-workers-row").first.wait_for()
        session.shot("sidebar-workers.png")
        # the embedded notebook's schedule, from its kernel's heartbeat in the history
        sidebar.locator(".nbq-tab[data-tab='schedules']").click()
        schedule = sidebar.locator(".nbq-schedules-row[data-schedule='hourly_report']")
        schedule.wait_for()
        assert schedule.get_attribute("data-paused") == "false"
        session.shot("sidebar-schedules.png")
        unexpected = [e for e in session.errors if "nbqueue" in e or "page error" in e]
        assert unexpected == [], unexpected

        # the embedded notebook's kernel restarts: its jobs stay listed (the history outlives it)
        sidebar.locator(".nbq-tab[data-tab='jobs']").click()
        sidebar.locator("[data-testid='nbq-filter-notebook']").select_option("embedded.ipynb")
        for job_id in (local_id, spinner_id):
            sidebar.locator(f".nbq-jobs-row[data-job-id='{job_id}']").wait_for()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.nbq-jobs-row .nbq-col-notebook')]"
            ".every(c => c.textContent === 'embedded.ipynb')"
        )
        before = {
            row.get_attribute("data-job-id") for row in sidebar.locator(".nbq-jobs-row").all()
        }
        assert local_id in before and spinner_id in before
        (kernel,) = [
            s["kernel"]["id"] for s in _api(lab, "/api/sessions") if s["path"] == "embedded.ipynb"
        ]
        _api(lab, f"/api/kernels/{kernel}/restart", method="POST")
        page.reload()
        page.wait_for_function("() => window.jupyterapp?.commands.hasCommand('nbqueue:open-jobs')")
        # (the restored layout may have the sidebar open already: the command only opens it)
        page.evaluate("window.jupyterapp.commands.execute('nbqueue:open-jobs')")
        sidebar = page.locator("[data-testid='nbq-sidebar']")
        sidebar.wait_for(state="visible")
        sidebar.locator(".nbq-tab[data-tab='jobs']").click()
        sidebar.locator("[data-testid='nbq-filter-notebook']").select_option("embedded.ipynb")
        sidebar.locator(
            f".nbq-jobs-row[data-job-id='{local_id}'][data-status='succeeded']"
        ).wait_for()
        after = {row.get_attribute("data-job-id") for row in sidebar.locator(".nbq-jobs-row").all()}
        assert before <= after
        session.shot("sidebar-after-restart.png")

    latency: dict[str, int] = {}
    _browse(chromium, test, "sidebar-jobs")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "sidebar-latency.json").write_text(json.dumps(latency))
    print("sidebar latency (ms):", latency)
