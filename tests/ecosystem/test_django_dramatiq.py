"""django-dramatiq on nbqueue: a minimal Django project (SQLite in tmp_path) whose actors run
under ``manage.py rundramatiq`` against real Redis, with django-dramatiq's ``AdminMiddleware``
recording each task in its ``Task`` model.

Every Django process is a fresh interpreter (``manage.py``); ``"nbqueue.django"``, first in
``INSTALLED_APPS``, installs the alias before Django imports ``django_dramatiq``.
"""

from __future__ import annotations

import json
import pathlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from tests.ecosystem._run import child_env

pytest.importorskip("django_dramatiq")
redis = pytest.importorskip("redis")

pytestmark = [pytest.mark.redis, pytest.mark.slow]

MANAGE_PY = """
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""

SETTINGS = """
SECRET_KEY = "only-for-tests"
USE_TZ = True
INSTALLED_APPS = {apps!r}
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {db!r}}}}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
DRAMATIQ_BROKER = {{
    "BROKER": "dramatiq.brokers.redis.RedisBroker",
    "OPTIONS": {{"url": {url!r}, "namespace": {namespace!r}}},
    "MIDDLEWARE": [
        "dramatiq.middleware.AgeLimit",
        "dramatiq.middleware.TimeLimit",
        "dramatiq.middleware.Callbacks",
        "dramatiq.middleware.Retries",
        "django_dramatiq.middleware.AdminMiddleware",
        "django_dramatiq.middleware.DbConnectionsMiddleware",
    ],
}}
"""

TASKS = """
import os

import dramatiq


@dramatiq.actor
def greet(name):
    with open(os.path.join({out!r}, "greeted"), "a") as f:
        f.write(f"{{name}} {{os.getpid()}}\\n")


@dramatiq.actor(max_retries=0)
def refuse(name):
    raise PermissionError(f"not for {{name}}")
"""

SEND = """
import json
from shop.tasks import greet, refuse
print(json.dumps({"greet": greet.send("ada").message_id, "refuse": refuse.send("bob").message_id}))
"""

READ = """
import json
from django_dramatiq.models import Task
print(json.dumps({
    str(task.id): [task.status, task.actor_name, task.message.actor_name, list(task.message.args)]
    for task in Task.tasks.all()
}))
"""


def _project(
    tmp_path: pathlib.Path,
    redis_url: str,
    namespace: str,
    apps: tuple[str, ...] = ("nbqueue.django", "django_dramatiq", "shop"),
) -> pathlib.Path:
    root = tmp_path / "site"
    (root / "project").mkdir(parents=True)
    (root / "shop").mkdir()
    (root / "out").mkdir()
    (root / "manage.py").write_text(textwrap.dedent(MANAGE_PY))
    (root / "project" / "__init__.py").write_text("")
    settings = SETTINGS.format(
        apps=list(apps), db=str(tmp_path / "db.sqlite3"), url=redis_url, namespace=namespace
    )
    (root / "project" / "settings.py").write_text(textwrap.dedent(settings))
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "tasks.py").write_text(textwrap.dedent(TASKS.format(out=str(root / "out"))))
    return root


def _manage(root: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=root,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _statuses(db: pathlib.Path) -> dict[str, str]:
    with sqlite3.connect(db, timeout=30) as connection:
        rows = connection.execute("SELECT id, status FROM django_dramatiq_task").fetchall()
    # Django stores a UUIDField in SQLite as 32 hex digits
    return {row[0]: row[1] for row in rows}


@pytest.fixture
def site(tmp_path: pathlib.Path, redis_url: str, namespace: str) -> Iterator[pathlib.Path]:
    yield _project(tmp_path, redis_url, namespace)
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def test_rundramatiq_runs_the_projects_actors_and_the_admin_model_records_them(site, tmp_path):
    migrate = _manage(site, "migrate", "--verbosity", "0")
    assert migrate.returncode == 0, migrate.stderr
    sent = _manage(site, "shell", "-c", SEND)
    assert sent.returncode == 0, sent.stderr
    ids = {
        name: message_id.replace("-", "")
        for name, message_id in json.loads(sent.stdout.splitlines()[-1]).items()
    }
    db = tmp_path / "db.sqlite3"
    # AdminMiddleware.after_enqueue ran in the sending process
    assert _statuses(db) == {ids["greet"]: "enqueued", ids["refuse"]: "enqueued"}

    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "rundramatiq", "--processes", "2", "--threads", "1"],
        cwd=site,
        env=child_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        expected = {ids["greet"]: "done", ids["refuse"]: "failed"}
        while _statuses(db) != expected and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        assert _statuses(db) == expected, (tmp_path / "worker.log").read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
        log.close()
    output = (tmp_path / "worker.log").read_text()
    assert code == 0, output
    assert ' * Running nbqueue: "nbqueue --path . --processes 2 --threads 1' in output
    assert "django_dramatiq.setup django_dramatiq.tasks shop.tasks" in output
    assert "PermissionError: not for bob" in output
    (greeted,) = (site / "out" / "greeted").read_text().splitlines()
    assert greeted.split()[0] == "ada"
    assert int(greeted.split()[1]) != worker.pid  # a spawned worker process ran it

    read = _manage(site, "shell", "-c", READ)
    assert read.returncode == 0, read.stderr
    tasks = {
        key.replace("-", ""): value
        for key, value in json.loads(read.stdout.splitlines()[-1]).items()
    }
    assert tasks == {
        ids["greet"]: ["done", "greet", "greet", ["ada"]],
        ids["refuse"]: ["failed", "refuse", "refuse", ["bob"]],
    }


def test_listed_after_django_dramatiq_it_refuses_in_one_line(tmp_path, redis_url, namespace):
    root = _project(tmp_path, redis_url, namespace, ("django_dramatiq", "nbqueue.django", "shop"))
    result = _manage(root, "check")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("nbqueue.errors.DramatiqAlreadyImported: The real dramatiq package")
    assert "list 'nbqueue.django' first in INSTALLED_APPS" in last


def test_gevent_is_refused_with_a_clear_error(site):
    result = _manage(site, "rundramatiq", "--use-gevent")
    assert result.returncode == 1
    assert "nbqueue has no gevent worker; drop --use-gevent" in result.stderr
