"""Every exception lives in ``nbqueue.errors``; its docstring draws the tree; old paths re-export.

The walk reads the source of every module under ``nbqueue/`` with ``ast`` and follows each base
class through imports and re-exports (``from .middleware import SkipMessage``) to where it is
defined, so a class deriving from an nbqueue exception counts even when it never names
``BaseException``. Classes outside the package (``Exception``, ``asyncio.CancelledError``) are
looked up by importing their module.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import pickle
import re
import sys
import types

import pytest

import nbqueue
from nbqueue import errors
from nbqueue.common import parse_python

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "nbqueue"

#: Exceptions defined outside errors.py on purpose, each with why.
ALLOWED_ELSEWHERE: dict[str, str] = {
    # Carries a cli.options.ExitCode: moving it would make errors.py import the CLI (ring 4).
    # Raised and caught inside nbqueue.cli, where it becomes an exit code and one line of text.
    "nbqueue.cli.boot.BootError": "the CLI's boot control flow",
    # Raised by the CLI's own signal handler in its main thread and caught by `nbqueue worker`
    # itself (serve.py), which then exits; no user code runs under that handler.
    "nbqueue.cli.signals.Killed": "the CLI's second-signal control flow",
    # Raised by run_single after a SIGHUP stopped its worker and caught by the CLI's main(),
    # which then re-executes the command.
    "nbqueue.cli.serve.Reload": "the CLI's reload control flow",
    # Raised while `nbqueue status` reads its arguments and caught by its own main(), which
    # prints the line and exits 2.
    "nbqueue.cli.status._Usage": "the status command's usage control flow",
    # Raised by a Jobs sidebar source when an action does not apply to a job and caught by the
    # handler in nbqueue/lab/handlers.py, which answers 409 with its text.
    "nbqueue.lab.sources.ActionRefused": "the sidebar server's 409 control flow",
}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_sources() -> dict[str, tuple[str, bool]]:
    """Each module of nbqueue/: its source and whether it is a package ``__init__``."""
    return {
        _module_name(path): (path.read_text(), path.name == "__init__.py")
        for path in sorted(PACKAGE.rglob("*.py"))
    }


class Walk:
    """Class definitions and name bindings of a set of modules, and which classes are
    exceptions.

    Parameters:
      sources: module name -> (source, is_package).
    """

    def __init__(self, sources: dict[str, tuple[str, bool]]) -> None:
        self.modules = set(sources)
        self.bindings: dict[str, dict[str, str]] = {}
        #: dotted name of each class defined (at any depth) -> its base expressions as dotted names
        self.classes: dict[str, list[str]] = {}
        for module, (source, is_package) in sources.items():
            self._read(module, parse_python(source), is_package)
        self._memo: dict[str, bool] = {}

    def _read(self, module: str, tree: ast.Module, is_package: bool) -> None:
        bound = self.bindings.setdefault(module, {})
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        bound[top] = top
            elif isinstance(node, ast.ImportFrom):
                prefix = node.module or ""
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    prefix = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:
                    bound[alias.asname or alias.name] = f"{prefix}.{alias.name}"
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                name = f"{module}.{node.name}"
                if id(node) in top_level:
                    bound[node.name] = name  # the module's own class wins over an import
                else:
                    bound.setdefault(node.name, name)
                self.classes[name] = [d for base in node.bases if (d := self._dotted(module, base))]

    def _dotted(self, module: str, node: ast.expr) -> str | None:
        if isinstance(node, ast.Subscript):  # Generic[R], Actor[Any, Any]
            return self._dotted(module, node.value)
        if isinstance(node, ast.Name):
            return self.bindings[module].get(node.id, f"builtins.{node.id}")
        if isinstance(node, ast.Attribute):
            head = self._dotted(module, node.value)
            return None if head is None else f"{head}.{node.attr}"
        return None

    def _resolve(self, dotted: str, depth: int = 0) -> str | object:
        """The class a dotted name means: an nbqueue class name, or an outside object."""
        assert depth < 50, f"import loop resolving {dotted}"
        if dotted in self.classes:
            return dotted
        parts = dotted.split(".")
        for i in range(len(parts) - 1, 0, -1):
            module, rest = ".".join(parts[:i]), parts[i:]
            if module in self.modules:
                bound = self.bindings[module].get(rest[0])
                assert bound is not None, f"{rest[0]!r} is not defined in {module}"
                return self._resolve(".".join([bound, *rest[1:]]), depth + 1)
        value: object = importlib.import_module(parts[0])
        for i, attr in enumerate(parts[1:], start=1):
            if not hasattr(value, attr):  # a submodule not imported yet: importing it binds it
                importlib.import_module(".".join(parts[: i + 1]))
            value = getattr(value, attr)
        return value

    def is_exception(self, name: str) -> bool:
        if name not in self._memo:
            self._memo[name] = False  # a class cannot derive from itself
            for base in self.classes[name]:
                found = self._resolve(base)
                if isinstance(found, str):
                    is_one = self.is_exception(found)
                else:
                    is_one = isinstance(found, type) and issubclass(found, BaseException)
                if is_one:
                    self._memo[name] = True
                    break
        return self._memo[name]

    def exceptions(self) -> set[str]:
        return {name for name in self.classes if self.is_exception(name)}


def test_every_exception_class_is_defined_in_errors_py():
    found = Walk(package_sources()).exceptions()
    outside = sorted(
        name
        for name in found
        if not name.startswith("nbqueue.errors.") and name not in ALLOWED_ELSEWHERE
    )
    assert not outside, (
        "exceptions defined outside nbqueue/errors.py; move them there (and draw them in its "
        "docstring) or justify them in ALLOWED_ELSEWHERE:\n" + "\n".join(outside)
    )


def test_the_allowlist_names_only_exceptions_that_exist():
    found = Walk(package_sources()).exceptions()
    stale = sorted(set(ALLOWED_ELSEWHERE) - found)
    assert not stale, "ALLOWED_ELSEWHERE names classes that are gone; remove them: " + str(stale)


def test_the_walk_finds_exceptions_through_re_exports_and_aliases():
    """A checker that missed these would pass a package full of stray exceptions."""
    sources = package_sources()
    sources["nbqueue.fake"] = (
        "import asyncio\n"
        "from .middleware import SkipMessage\n"
        "from .threading import Interrupt as Base\n"
        "from . import errors\n"
        "class Skip(SkipMessage): ...\n"
        "class Stop(Base): ...\n"
        "class Gone(errors.QueueNotFound): ...\n"
        "class Cancel(asyncio.CancelledError): ...\n"
        "class Plain(KeyError): ...\n"
        "class Deeper(Plain): ...\n"
        "def factory():\n"
        "    class Nested(Exception): ...\n"
        "    return Nested\n"
        "class NotOne(dict): ...\n"
        "from .broker import Broker\n"
        "class MyBroker(Broker): ...\n",
        False,
    )
    found = {name for name in Walk(sources).exceptions() if name.startswith("nbqueue.fake.")}
    assert found == {
        f"nbqueue.fake.{name}" for name in ("Skip", "Stop", "Gone", "Cancel", "Plain", "Deeper")
    } | {"nbqueue.fake.Nested"}


#: Every import path the moved classes had (and Dramatiq's spellings of them).
OLD_PATHS = [
    ("nbqueue.results", "ResultError"),
    ("nbqueue.results", "ResultFailure"),
    ("nbqueue.results", "ResultMissing"),
    ("nbqueue.results", "ResultTimeout"),
    ("nbqueue.results.errors", "ResultError"),
    ("nbqueue.results.errors", "ResultFailure"),
    ("nbqueue.results.errors", "ResultMissing"),
    ("nbqueue.results.errors", "ResultTimeout"),
    ("nbqueue.middleware", "Interrupt"),
    ("nbqueue.middleware", "MiddlewareError"),
    ("nbqueue.middleware", "Shutdown"),
    ("nbqueue.middleware", "SkipMessage"),
    ("nbqueue.middleware", "TimeLimitExceeded"),
    ("nbqueue.middleware.base", "MiddlewareError"),
    ("nbqueue.middleware.base", "SkipMessage"),
    ("nbqueue.middleware.shutdown", "Shutdown"),
    ("nbqueue.middleware.threading", "Interrupt"),
    ("nbqueue.middleware.time_limit", "TimeLimitExceeded"),
    ("nbqueue.threading", "Interrupt"),
    ("nbqueue.remote", "BadSignature"),
    ("nbqueue.remote.signing", "BadSignature"),
    ("nbqueue.remote.loader", "CodeLoadFailed"),
    ("nbqueue.remote.loader", "CodeNotFound"),
]


@pytest.mark.parametrize(("module", "name"), OLD_PATHS)
def test_the_old_import_path_is_the_class_in_errors(module, name):
    value = getattr(importlib.import_module(module), name)
    assert value is getattr(errors, name)
    assert name in importlib.import_module(module).__all__


def _all_modules() -> list[types.ModuleType]:
    return [importlib.import_module(name) for name in sorted(package_sources())]


def test_every_exception_any_module_exposes_is_the_one_in_errors():
    for module in _all_modules():
        for attr, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.startswith("nbqueue")
                and f"{value.__module__}.{value.__qualname__}" not in ALLOWED_ELSEWHERE
            ):
                assert getattr(errors, value.__name__, None) is value, f"{module.__name__}.{attr}"


#: The module each moved class reports: Dramatiq's path where Dramatiq has the class, else the
#: module it was defined in before it moved.
HOMES = {
    "BadSignature": "nbqueue.remote.signing",
    "CodeLoadFailed": "nbqueue.remote.loader",
    "CodeNotFound": "nbqueue.remote.loader",
    "Interrupt": "nbqueue.threading",
    "MiddlewareError": "nbqueue.middleware.base",
    "ResultError": "nbqueue.results.errors",
    "ResultFailure": "nbqueue.results.errors",
    "ResultMissing": "nbqueue.results.errors",
    "ResultTimeout": "nbqueue.results.errors",
    "Shutdown": "nbqueue.middleware.shutdown",
    "SkipMessage": "nbqueue.middleware.base",
    "TimeLimitExceeded": "nbqueue.middleware.time_limit",
}


def _error_classes() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name in errors.__all__
        if isinstance(value := getattr(errors, name), type) and value.__name__ == name
    }


def test_moved_classes_keep_the_module_they_report():
    reported = {name: cls.__module__ for name, cls in _error_classes().items()}
    assert {name: reported[name] for name in HOMES} == HOMES
    assert {name for name, module in reported.items() if module != "nbqueue.errors"} == set(HOMES)
    assert repr(errors.ResultFailure) == "<class 'nbqueue.results.errors.ResultFailure'>"


@pytest.mark.parametrize("name", sorted(_error_classes()))
def test_each_error_is_found_where_it_says_it_lives_and_pickles(name):
    cls = _error_classes()[name]
    assert getattr(importlib.import_module(cls.__module__), cls.__qualname__) is cls
    assert pickle.loads(pickle.dumps(cls)) is cls


def test_errors_all_is_sorted_and_lists_every_class():
    assert errors.__all__ == sorted(errors.__all__)
    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, BaseException) and not name.startswith("_")
    }
    assert defined == set(errors.__all__)


def test_the_hierarchy_and_attributes_of_moved_classes_are_kept():
    e = errors
    assert e.ResultError.__bases__ == (e.NbqueueError,)
    for result_error in (e.ResultMissing, e.ResultTimeout, e.ResultFailure):
        assert result_error.__bases__ == (e.ResultError,)
    assert e.MiddlewareError.__bases__ == (e.NbqueueError,)
    assert e.SkipMessage.__bases__ == (e.MiddlewareError,)
    assert e.Interrupt.__bases__ == (BaseException,)
    for interrupt in (e.Abort, e.Shutdown, e.TimeLimitExceeded):
        assert interrupt.__bases__ == (e.Interrupt,)
    for refusal in (e.BadSignature, e.CodeNotFound, e.CodeLoadFailed):
        assert refusal.__bases__ == (e.ActorNotFound,)
    assert (e.BadSignature.reason, e.CodeNotFound.reason, e.CodeLoadFailed.reason) == (
        "bad_signature",
        "unknown_actor",
        "load_failed",
    )

    failure = e.ResultFailure("actor raised KeyError: 'x'", "KeyError", "'x'", traceback="tb")
    assert (failure.orig_exc_type, failure.orig_exc_msg, failure.traceback) == (
        "KeyError",
        "'x'",
        "tb",
    )
    assert str(failure) == "actor raised KeyError: 'x'"
    timeout = e.ResultTimeout("late", message_id="m", actor_name="a", timeout=5)
    assert (timeout.message_id, timeout.actor_name, timeout.timeout) == ("m", "a", 5)
    missing = e.ResultMissing("none", message_id="m", actor_name="a")
    assert (missing.message_id, missing.actor_name) == ("m", "a")
    assert not issubclass(e.ResultTimeout, e.ResultMissing)  # siblings, as in Dramatiq
    bad = e.BadSignature("refused", code_hash="h", actor_name="a")
    assert (bad.code_hash, bad.actor_name) == ("h", "a")
    assert e.DecodeError("bad", data=b"x").data == b"x"
    assert not issubclass(e.Interrupt, Exception)


_TREE_LINE = re.compile(r"^    ([│├└─ ]*)([A-Z]\w+)")


def _drawn_tree() -> dict[str, str | None]:
    """Each class drawn in the errors docstring -> the class drawn as its parent."""
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        match = _TREE_LINE.match(line)
        if not match:
            continue
        depth = len(match.group(1)) // 4
        del stack[depth:]
        parents[match.group(2)] = stack[-1] if stack else None
        stack.append(match.group(2))
    return parents


def test_the_docstring_draws_every_class_under_its_base():
    drawn = _drawn_tree()
    classes = _error_classes()
    assert set(drawn) == set(classes)
    for name, parent in drawn.items():
        if parent is None:
            assert name in ("NbqueueError", "Interrupt")
        else:
            assert classes[parent] in classes[name].__bases__, f"{name} is not a {parent}"


def test_the_package_exports_the_same_error_objects():
    for name in nbqueue.__all__:
        value = getattr(nbqueue, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert value is getattr(errors, name)


def test_errors_py_imports_only_the_standard_library():
    """errors.py is the leaf under everything: it imports no other nbqueue module."""
    tree = parse_python((PACKAGE / "errors.py").read_text())
    imported = {
        alias.name if isinstance(node, ast.Import) else "." * node.level + (node.module or "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in imported), imported
