"""The README's compatibility table, held against the Dramatiq installed beside nbqueue.

Every public name of every public Dramatiq module, and every option of Dramatiq's CLI, is either
importable from (accepted by) nbqueue at the same path, or named in a row of the table whose
nbqueue column says "not provided". A Dramatiq release that adds a name fails this test until the
name is built or the table says why not.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import pkgutil
import re
from types import ModuleType

import pytest

dramatiq = pytest.importorskip("dramatiq")

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Dramatiq compatibility, name by name"

#: Of ``dramatiq.cli``, only these are meant for users; the rest are the internals of its main().
CLI_PUBLIC = {"main", "make_argument_parser"}


def _table_rows() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and line.startswith("|") and not set(cells[0]) <= {"-", " "}:
            rows.append((cells[0], cells[1]))
    assert rows, "the compatibility section has no table"
    return rows


def _not_provided() -> set[str]:
    """The backticked names of the rows that say "not provided", without their leading dot."""
    names: set[str] = set()
    for dramatiq_cell, nbqueue_cell in _table_rows():
        if nbqueue_cell.startswith("not provided"):
            names |= {token.lstrip(".") for token in re.findall(r"`([^`]+)`", dramatiq_cell)}
    return names


def _covered(module: str, name: str | None, listed: set[str]) -> bool:
    if module in listed:
        return True
    if name is None:
        return False
    return name in listed or f"{module}.{name}" in listed


def _public_names(module: ModuleType) -> list[str]:
    declared = getattr(module, "__all__", None)
    if declared is not None:
        return list(declared)
    # no __all__: what the module defines itself, and its public non-callable values
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and (getattr(value, "__module__", None) == module.__name__ or not callable(value))
    ]


def _dramatiq_modules() -> list[str]:
    found = ["dramatiq"]
    for info in pkgutil.walk_packages(dramatiq.__path__, "dramatiq."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            found.append(info.name)
    return found


def test_every_public_dramatiq_name_is_in_nbqueue_or_listed_as_not_provided():
    listed = _not_provided()
    missing = []
    for module_name in _dramatiq_modules():
        ours_name = "nbqueue" + module_name[len("dramatiq") :]
        try:
            theirs = importlib.import_module(module_name)
        except ImportError:  # a Dramatiq module that needs an extra nbqueue's tests lack
            if not _covered(module_name, None, listed):
                try:
                    importlib.import_module(ours_name)
                except ImportError:
                    missing.append(module_name)
            continue
        try:
            ours = importlib.import_module(ours_name)
        except ImportError:
            if not _covered(module_name, None, listed):
                missing.append(module_name)
            continue
        for name in _public_names(theirs):
            if module_name == "dramatiq.cli" and name not in CLI_PUBLIC:
                continue
            if not hasattr(ours, name) and not _covered(module_name, name, listed):
                missing.append(f"{module_name}.{name}")
    assert not missing, (
        "These Dramatiq names are missing from nbqueue and from the README's compatibility "
        f"table; build them or add a 'not provided' row saying why: {missing}"
    )


def test_every_dramatiq_cli_option_is_accepted_or_listed_as_not_provided():
    from dramatiq.cli import make_argument_parser as dramatiq_parser

    from nbqueue.cli import make_argument_parser

    ours = make_argument_parser()._option_string_actions
    listed = _not_provided()
    missing = [
        option
        for action in dramatiq_parser()._actions
        for option in action.option_strings
        if option not in ours and option not in listed
    ]
    assert not missing, (
        "These Dramatiq CLI options are missing from nbqueue's parser and from the README's "
        f"compatibility table: {missing}"
    )


def test_the_table_lists_as_not_provided_only_what_nbqueue_lacks():
    """A "not provided" row that nbqueue has since built is stale: the table must say so."""
    stale = []
    for token in _not_provided():
        if token.startswith("dramatiq.") and "." in token[len("dramatiq.") :]:
            module_name, _, name = token.rpartition(".")
            ours_name = "nbqueue" + module_name[len("dramatiq") :]
            try:
                ours = importlib.import_module(ours_name)
            except ImportError:
                continue
            if hasattr(ours, name) and not inspect.ismodule(getattr(ours, name)):
                stale.append(token)
    assert not stale, f"listed as not provided but importable from nbqueue: {stale}"
