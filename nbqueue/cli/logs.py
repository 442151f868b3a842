"""Logging of the ``nbqueue`` command: Dramatiq's line layout, with secrets hidden.

Every line a worker writes, tracebacks included, passes through ``RedactingFormatter``, which
replaces the broker URL's password, the results URL's password and the notebook-actor secret
(from ``--secret-file`` or ``NBQUEUE_SECRET``) wherever they appear, even in a user module that
logs them by mistake.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from urllib.parse import unquote, urlsplit

from ..common import redact_url
from .options import RESULTS_URL_ENV, Options

__all__ = [
    "LOG_FORMAT",
    "redact",
    "report_error",
    "secrets_of",
    "setup_logging",
    "url_secrets",
]

#: Dramatiq's log line layout, so log tooling written for Dramatiq keeps working.
LOG_FORMAT = (
    "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"
)

#: Secrets shorter than this are not replaced on their own: that would garble every line.
MIN_SECRET_LENGTH = 4

SECRET_ENV = "NBQUEUE_SECRET"


def url_secrets(url: str | None) -> list[tuple[str, str]]:
    """Return (text, replacement) pairs that hide the password of ``url`` (of each of its
    ``;``-separated parts), and the whole URL by its redacted form."""
    if not url:
        return []
    pairs = [(url, redact_url(url))]
    for part in url.split(";"):
        try:
            password = urlsplit(part).password
        except ValueError:
            continue
        if password:
            pairs += [(p, "***") for p in {password, unquote(password)} if len(p) >= 4]
    return pairs


def read_secret(options: Options) -> bytes | None:
    """Return the notebook-actor secret: the ``--secret-file`` content (stripped), else
    ``NBQUEUE_SECRET``, else ``None``.

    Raises:
      OSError: the secret file cannot be read.
    """
    if options.secret_file is not None:
        with open(options.secret_file, "rb") as f:
            return f.read().strip() or None
    value = os.environ.get(SECRET_ENV, "").strip()
    return value.encode() if value else None


def secrets_of(options: Options) -> list[tuple[str, str]]:
    """Return (text, replacement) pairs that hide every secret of ``options`` in any output."""
    pairs = url_secrets(options.broker_url)
    pairs += url_secrets(os.environ.get(RESULTS_URL_ENV, "").strip() or None)
    try:
        secret = read_secret(options)
    except OSError:
        secret = None
    if secret:
        text = secret.decode(errors="replace")
        if len(text) >= MIN_SECRET_LENGTH:
            pairs.append((text, "***"))
    # Longest first, so that a URL is replaced as a whole before its password alone.
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def redact(text: str, secrets: list[tuple[str, str]]) -> str:
    """Replace every secret in ``text``."""
    for secret, replacement in secrets:
        text = text.replace(secret, replacement)
    return text


class RedactingFormatter(logging.Formatter):
    """Formats records, then hides the secrets wherever they appear (tracebacks too)."""

    def __init__(self, secrets: list[tuple[str, str]]) -> None:
        super().__init__(LOG_FORMAT)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


@dataclasses.dataclass
class LoggingSetup:
    """What ``setup_logging`` changed, so that ``undo()`` puts it back."""

    handler: logging.Handler | None
    previous_level: int

    def undo(self) -> None:
        if self.handler is None:
            return
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self.previous_level)
        self.handler.flush()
        if isinstance(self.handler, logging.FileHandler):
            self.handler.close()


def setup_logging(options: Options) -> LoggingSetup:
    """Send log records to stderr (or append them to ``--log-file``) in Dramatiq's format;
    undone when ``main()`` returns. With ``--skip-logging`` nothing is configured.

    Raises:
      OSError: the log file cannot be opened.
    """
    root = logging.getLogger()
    if options.skip_logging:
        return LoggingSetup(None, root.level)
    handler: logging.Handler
    if options.log_file is not None:
        handler = logging.FileHandler(options.log_file, mode="a", encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(secrets_of(options)))
    setup = LoggingSetup(handler, root.level)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if options.verbose else logging.INFO)
    logging.getLogger("pika").setLevel(logging.WARNING)
    return setup


def report_error(message: str, options: Options) -> None:
    """Write ``nbqueue: error: <message>`` to stderr, secrets hidden."""
    sys.stderr.write(f"nbqueue: error: {redact(message, secrets_of(options))}\n")
    sys.stderr.flush()
