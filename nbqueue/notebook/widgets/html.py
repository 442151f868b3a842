"""HTML pieces shared by the widgets and their static fallbacks: colours, badges, sizes, times.

Colours are JupyterLab's ``--jp-*`` CSS variables with light-theme fallbacks, so the views read
well in dark themes, in classic Notebook, VS Code and nbviewer alike.
"""

from __future__ import annotations

import html
import reprlib

from ...live import MessageStatus

__all__ = [
    "STATUS_COLORS",
    "badge",
    "escape",
    "format_duration",
    "short_repr",
    "status_color",
    "table",
]

#: The colour of each status, as a CSS value.
STATUS_COLORS: dict[str, str] = {
    "sent": "var(--jp-ui-font-color2, #757575)",
    "enqueued": "var(--jp-ui-font-color2, #757575)",
    "delayed": "var(--jp-ui-font-color2, #757575)",
    "running": "var(--jp-brand-color1, #1976d2)",
    "retrying": "var(--jp-warn-color1, #f57c00)",
    "succeeded": "var(--jp-success-color1, #388e3c)",
    "failed": "var(--jp-error-color1, #d32f2f)",
    "dead": "var(--jp-error-color1, #d32f2f)",
    "aborted": "var(--jp-warn-color1, #f57c00)",
    "skipped": "var(--jp-warn-color1, #f57c00)",
}

#: ipywidgets ``bar_style`` per status.
BAR_STYLES: dict[str, str] = {
    "running": "info",
    "retrying": "warning",
    "succeeded": "success",
    "failed": "danger",
    "dead": "danger",
    "aborted": "warning",
    "skipped": "warning",
}

_BOX = (
    "font-family: var(--jp-ui-font-family, sans-serif); font-size: var(--jp-ui-font-size1, 13px); "
    "color: var(--jp-ui-font-color1, inherit);"
)
_MONO = (
    "font-family: var(--jp-code-font-family, monospace); font-size: var(--jp-code-font-size, 12px);"
)

_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 10


def escape(text: str) -> str:
    """HTML-escape ``text`` (quotes included)."""
    return html.escape(text, quote=True)


def short_repr(value: object, limit: int = 200) -> str:
    """A bounded ``repr()`` for one-line summaries."""
    try:
        text = _repr.repr(value)
    except Exception:
        text = f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status_color(status: MessageStatus | str) -> str:
    """The CSS colour of a status."""
    return STATUS_COLORS.get(str(status), STATUS_COLORS["sent"])


def badge(status: MessageStatus | str) -> str:
    """A coloured status label."""
    color = status_color(status)
    return (
        f'<span style="color: {color}; border: 1px solid {color}; border-radius: 3px; '
        f'padding: 0 4px; font-weight: 600;">{escape(str(status))}</span>'
    )


def format_duration(seconds: float | None) -> str:
    """``"850 ms"``, ``"12.3 s"``, ``"4 min 05 s"``, ``"2 h 03 min"``; ``""`` for ``None``."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def box(body: str) -> str:
    """Wrap ``body`` in the themed container every view uses."""
    return f'<div class="nbqueue" style="{_BOX}">{body}</div>'


def pre(text: str, *, max_height: str = "16em") -> str:
    """Preformatted, scrollable text."""
    return (
        f'<pre style="{_MONO} margin: 2px 0; padding: 4px; max-height: {max_height}; '
        f"overflow: auto; white-space: pre-wrap; "
        f'background: var(--jp-layout-color2, #f5f5f5); color: var(--jp-content-font-color1, inherit);">'
        f"{escape(text)}</pre>"
    )


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A compact table; cells are HTML already."""
    cell = "padding: 2px 8px; text-align: left; vertical-align: top;"
    head = "".join(
        f'<th style="{cell} border-bottom: 1px solid var(--jp-border-color1, #ccc);">{h}</th>'
        for h in headers
    )
    body = "".join(
        "<tr>" + "".join(f'<td style="{cell}">{c}</td>' for c in row) + "</tr>" for row in rows
    )
    return f'<table style="border-collapse: collapse;"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
