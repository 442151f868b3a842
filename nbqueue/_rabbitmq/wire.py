"""What nbqueue puts on the wire to RabbitMQ beyond Dramatiq's layout: connection settings, the
broker's own URL settings, and the headers of dead letters.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import pika  # type: ignore[import-untyped]

from ..broker import DeadLetter
from ..common import redact_url
from ..errors import DecodeError
from ..message import Message

__all__ = [
    "ERROR_HEADER",
    "REASON_HEADER",
    "URL_OPTIONS",
    "connection_parameters",
    "dead_letter",
    "split_url_options",
]

#: Headers nbqueue adds to a dead letter it moves to ``<queue>.XQ`` itself.
REASON_HEADER = "x-nbqueue-reason"
ERROR_HEADER = "x-nbqueue-error"

#: Connection settings nbqueue chooses unless the URL or the keyword arguments set them.
_PIKA_DEFAULTS: dict[str, Any] = {
    "heartbeat": 30,
    "retry_delay": 0.5,
    "socket_timeout": 2.0,
    "stack_timeout": 4.0,
    "blocked_connection_timeout": 30.0,
}


#: Query settings of an ``amqp://`` URL that configure the broker, not pika; they are taken out
#: of the URL before pika parses it (pika refuses settings it does not know).
URL_OPTIONS = ("queue_type", "delivery_limit")


def split_url_options(url: str | list[str] | None) -> tuple[str | list[str] | None, dict[str, str]]:
    """Take nbqueue's own settings (``URL_OPTIONS``) out of the query of one or more URLs.

    Returns:
      The URL(s) without them, in the form given, and the settings found.

    Raises:
      ValueError: two URLs of a failover list give the same setting different values.
    """
    if url is None:
        return None, {}
    urls = url.split(";") if isinstance(url, str) else list(url)
    found: dict[str, str] = {}
    cleaned = []
    for one in urls:
        parts = urlsplit(one.strip())
        kept = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in URL_OPTIONS:
                kept.append((name, value))
            elif found.setdefault(name, value) != value:
                raise ValueError(
                    f"The broker URLs disagree on {name} ({found[name]!r} and {value!r}); "
                    f"give it once, or the same value in every URL."
                )
        cleaned.append(urlunsplit(parts._replace(query=urlencode(kept))))
    if not found:
        return url, {}
    return (";".join(cleaned) if isinstance(url, str) else cleaned), found


def connection_parameters(
    url: str | list[str] | None,
    host: str | None,
    port: int | None,
    parameters: list[dict[str, Any]] | None,
    connection_attempts: int | None,
    pika_kwargs: dict[str, Any],
) -> tuple[list[Any], str]:
    """Build pika connection parameters (one per failover server) and a printable address."""
    if url is not None:
        if parameters is not None or pika_kwargs or host is not None or port is not None:
            raise ValueError(
                "RabbitmqBroker takes url= or connection parameters (host=, port=, "
                "parameters=, pika keywords), not both; put the settings in the URL's query."
            )
        urls = url.split(";") if isinstance(url, str) else list(url)
        params = []
        for one in urls:
            one = one.strip()
            given = set(parse_qs(urlsplit(one).query))
            p = pika.URLParameters(one)
            for name, value in _PIKA_DEFAULTS.items():
                if name not in given:
                    setattr(p, name, value)
            if connection_attempts is not None or "connection_attempts" not in given:
                p.connection_attempts = connection_attempts or 3
            params.append(p)
        return params, ";".join(redact_url(u.strip()) for u in urls)
    if parameters is not None:
        if pika_kwargs or host is not None or port is not None:
            raise ValueError(
                "RabbitmqBroker takes parameters= or host=/port=/pika keywords, not both."
            )
        dicts = [dict(p) for p in parameters]
    else:
        single = dict(pika_kwargs)
        if host is not None:
            single["host"] = host
        if port is not None:
            single["port"] = port
        dicts = [single]
    params = []
    for d in dicts:
        d.setdefault("host", "127.0.0.1")
        for name, value in _PIKA_DEFAULTS.items():
            d.setdefault(name, value)
        if connection_attempts is not None:
            d["connection_attempts"] = connection_attempts
        d.setdefault("connection_attempts", 3)
        params.append(pika.ConnectionParameters(**d))
    where = ";".join(
        f"{p.host}:{p.port}{'' if p.virtual_host == '/' else p.virtual_host}" for p in params
    )
    return params, where


def dead_letter(queue_name: str, properties: Any, body: bytes) -> DeadLetter:
    """Build a ``DeadLetter`` from a message read from ``<queue>.XQ``.

    The reason is nbqueue's header when nbqueue moved the message, else the reason RabbitMQ
    recorded in ``x-death`` (``rejected`` when a Dramatiq worker rejected it).
    """
    headers = getattr(properties, "headers", None) or {}
    reason = headers.get(REASON_HEADER)
    if reason is None:
        deaths = headers.get("x-death") or [{}]
        reason = deaths[0].get("reason") or "rejected"
    reason = reason.decode() if isinstance(reason, bytes) else str(reason)
    error = headers.get(ERROR_HEADER)
    if isinstance(error, bytes):
        error = error.decode("utf-8", "replace")
    try:
        message: Message[Any] | None = Message.decode(body)
    except DecodeError:
        message = None
    return DeadLetter(queue_name, bytes(body), reason, message, error)
