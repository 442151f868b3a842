"""``%load_ext nbqueue`` and ``%unload_ext nbqueue``.

Loading registers the magics and shows every ``Message`` a cell returns as its live job view,
and the list ``send_many()`` returns (a ``MessageList``) and a ``group`` as one batch view.
Unloading removes both and stops the embedded worker (IPython has no API to unregister magics,
so their names are deleted from the magics manager's tables).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from ..broker import get_broker
from ..composition import group
from ..history.base import Limits
from ..message import Message, MessageList
from .jobs import LocalHistory
from .magics import NbqueueMagics

__all__ = ["load_ipython_extension", "unload_ipython_extension"]

_MAGICS = {"line": ("send", "nbqueue"), "cell": ("actor",)}

_loaded: dict[int, NbqueueMagics] = {}

logger = logging.getLogger("nbqueue.notebook")


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics on ``ipython`` and the job view as the display of messages."""
    if id(ipython) in _loaded:
        return
    magics = NbqueueMagics(ipython)
    magics.embedded.attach(get_broker())  # the in-memory default unless configured
    magics.local = _local_history()
    if magics.local is not None:
        magics.local.attach(get_broker())  # the embedded broker's jobs outlive the kernel
    magics.embedded.log.install()
    ipython.register_magics(magics)
    ipython.events.register("pre_run_cell", magics.pre_run_cell)
    ipython.events.register("post_run_cell", magics.post_run_cell)
    formatter = ipython.display_formatter.mimebundle_formatter
    formatter.for_type(Message, lambda message: magics.job_view(message)._repr_mimebundle_())
    formatter.for_type(MessageList, lambda batch: magics.batch_view(batch)._repr_mimebundle_())
    formatter.for_type(group, lambda batch: magics.batch_view(batch)._repr_mimebundle_())
    # IPython's own text/plain printer for lists outranks a mimebundle's text/plain: the
    # batch's (stable) summary is registered there too.
    plain = ipython.display_formatter.formatters["text/plain"]
    plain.for_type(MessageList, _plain_batch)
    plain.for_type(group, _plain_batch)
    _loaded[id(ipython)] = magics


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the embedded worker and the views, and remove the magics and the message display."""
    magics = _loaded.pop(id(ipython), None)
    if magics is None:
        return
    magics.embedded.close()
    if magics.local is not None:
        magics.local.detach()
    magics.embedded.autostart.on_sent = None
    magics.embedded.log.uninstall()
    ipython.events.unregister("pre_run_cell", magics.pre_run_cell)
    ipython.events.unregister("post_run_cell", magics.post_run_cell)
    for view in magics.views:
        view.close()
    table = ipython.magics_manager.magics
    for kind, names in _MAGICS.items():
        for name in names:
            table[kind].pop(name, None)
    ipython.magics_manager.registry.pop(type(magics).__name__, None)
    for shown in (Message, MessageList, group):
        ipython.display_formatter.mimebundle_formatter.pop(shown, None)
    for shown in (MessageList, group):
        ipython.display_formatter.formatters["text/plain"].pop(shown, None)


def _local_history() -> LocalHistory | None:
    """The kernel's local history, unless turned off or its file cannot be opened."""
    try:
        if Limits.from_env() is None:
            return None
        return LocalHistory()
    except (OSError, sqlite3.Error, ValueError) as e:
        logger.warning("nbqueue: the local job history is off: %s", e)
        return None


def _plain_batch(batch: Any, printer: Any, cycle: bool) -> None:
    printer.text(f"<nbqueue batch of {len(batch)} messages>")


def loaded_magics(ipython: Any) -> NbqueueMagics | None:
    """Return the magics registered on ``ipython``, or ``None`` before ``%load_ext nbqueue``."""
    return _loaded.get(id(ipython))
