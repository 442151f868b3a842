"""``manage.py rundramatiq``: django-dramatiq's command, running nbqueue's worker CLI.

django-dramatiq's own command ``exec``s the ``dramatiq`` program; this one takes the same
options, discovers the same task modules (``DRAMATIQ_AUTODISCOVER_MODULES``,
``DRAMATIQ_IGNORED_MODULES``) and ``exec``s ``python -m nbqueue.django`` with the command line
it would have given ``dramatiq``. The broker is the one ``settings.DRAMATIQ_BROKER`` configures
(``django_dramatiq.setup``, the first module, sets it up).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import CommandError
from django_dramatiq.management.commands.rundramatiq import Command as DjangoDramatiqCommand


class Command(DjangoDramatiqCommand):
    """Run nbqueue workers for the project's actors (the options of django-dramatiq's command)."""

    help = "Runs nbqueue workers (django-dramatiq's rundramatiq, served by nbqueue)."

    def handle(self, *args: Any, **options: Any) -> None:
        """Replace this process with ``python -m nbqueue.django`` and the worker's arguments.

        Raises:
          CommandError: ``--use-gevent`` was given, or ``NBQUEUE_BROKER_URL`` is set (it would
            take precedence over ``settings.DRAMATIQ_BROKER``).
        """
        argv = self.worker_arguments(**options)
        self.stdout.write(f' * Running nbqueue: "{" ".join(["nbqueue", *argv])}"\n\n')
        self.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "nbqueue.django", *argv])

    def worker_arguments(self, **options: Any) -> list[str]:
        """The worker's command line for the command's options, as django-dramatiq builds it.

        Raises:
          CommandError: as ``handle``.
        """
        if options["use_gevent"]:
            raise CommandError(
                "nbqueue has no gevent worker; drop --use-gevent (nbqueue runs actors on "
                "threads, and async actors on an event loop)."
            )
        if os.environ.get("NBQUEUE_BROKER_URL", "").strip():
            raise CommandError(
                "NBQUEUE_BROKER_URL is set and would replace the broker of "
                "settings.DRAMATIQ_BROKER; unset it to run rundramatiq."
            )
        argv = [
            "--path",
            *options["path"],
            "--processes",
            str(options["processes"]),
            "--threads",
            str(options["threads"]),
            "--worker-shutdown-timeout",
            str(options["worker_shutdown_timeout"]),
        ]
        if options["watch_dir"]:
            argv += ["--watch", options["watch_dir"]]
            if options["use_polling_watcher"]:
                argv.append("--watch-use-polling")
        for function in options["forks"]:
            argv += ["--fork-function", function]
        argv += ["-v"] * (options["verbosity"] - 1)
        argv += self.discover_tasks_modules()
        if options["queues"]:
            argv += ["--queues", *options["queues"]]
        if options["pid_file"]:
            argv += ["--pid-file", options["pid_file"]]
        if options["log_file"]:
            argv += ["--log-file", options["log_file"]]
        if options["skip_logging"]:
            argv.append("--skip-logging")
        if options["use_spawn"]:
            argv.append("--use-spawn")
        return argv
