"""Let packages written for Dramatiq import nbqueue: ``nbqueue.install_as_dramatiq()``.

Many packages extend Dramatiq (Sentry's integration, django-dramatiq, dramatiq-abort, ...) and
``import dramatiq`` to do it. After ``install_as_dramatiq()``, every ``import dramatiq`` and
``import dramatiq.X.Y`` in this process gives nbqueue's module of the same path
(``dramatiq.brokers.redis`` is ``nbqueue.brokers.redis``), the same module objects, so classes,
``isinstance`` checks and the global broker agree whichever name imported them. PyMySQL's
``pymysql.install_as_MySQLdb()`` is the precedent.

It is done with a finder at the front of ``sys.meta_path``, so the real ``dramatiq`` package,
if it is installed, is shadowed rather than removed. Call it first, before anything imports
``dramatiq``: a process cannot hold both (its classes would not be nbqueue's).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence

from .errors import DramatiqAlreadyImported

__all__ = ["install_as_dramatiq"]

_ALIAS = "dramatiq"
_TARGET = "nbqueue"


def _target_of(fullname: str) -> str | None:
    """``nbqueue.X`` for ``dramatiq.X``, or ``None`` for a name outside ``dramatiq``."""
    if fullname == _ALIAS or fullname.startswith(_ALIAS + "."):
        return _TARGET + fullname[len(_ALIAS) :]
    return None


class _AliasLoader(importlib.abc.Loader):
    """Hand out nbqueue's module for a ``dramatiq`` name instead of creating a module."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        try:
            module = importlib.import_module(self.target)
        except ModuleNotFoundError as e:
            if e.name != self.target:
                raise  # something nbqueue's module itself imports is missing: report that
            raise ModuleNotFoundError(
                f"{spec.name!r} is a Dramatiq module that nbqueue does not provide "
                f"(there is no {self.target!r}); see the compatibility table in nbqueue's README.",
                name=spec.name,
            ) from None
        self._spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system has just set ``__spec__`` to the alias's spec; nbqueue's module
        # keeps its own, so ``importlib.reload`` and ``find_spec("nbqueue...")`` still work.
        if self._spec is not None:
            module.__spec__ = self._spec


class DramatiqAliasFinder(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that resolves ``dramatiq`` and ``dramatiq.*`` to nbqueue."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        """Return a spec that loads ``nbqueue.X`` for ``dramatiq.X``; ``None`` for other names."""
        nbqueue_name = _target_of(fullname)
        if nbqueue_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(nbqueue_name))


def _foreign_dramatiq_modules() -> list[str]:
    """Names of ``dramatiq`` modules in ``sys.modules`` that are not nbqueue's."""
    foreign = []
    for name, module in list(sys.modules.items()):
        target = _target_of(name)
        if target is None or module is None:
            continue
        if module is not sys.modules.get(target):
            foreign.append(name)
    return sorted(foreign)


def install_as_dramatiq() -> None:
    """Make ``import dramatiq`` and ``import dramatiq.X`` give nbqueue's modules in this process.

    Call it once, first (before importing any package built for Dramatiq). Calling it again
    does nothing. ``dramatiq.__version__`` is then nbqueue's version, not a Dramatiq version;
    a Dramatiq module nbqueue does not provide raises ``ModuleNotFoundError`` (an
    ``ImportError``) naming it.

    Raises:
      DramatiqAlreadyImported: the real ``dramatiq`` package is already imported in this
        process; nothing was changed.
    """
    foreign = _foreign_dramatiq_modules()
    if foreign:
        where = getattr(sys.modules[foreign[0]], "__file__", None) or "an unknown place"
        raise DramatiqAlreadyImported(
            f"The real dramatiq package is already imported (from {where}), so "
            f"nbqueue.install_as_dramatiq() cannot stand in for it; call it before anything "
            f"imports dramatiq (with Django, list 'nbqueue.django' first in INSTALLED_APPS).",
            modules=foreign,
        )
    if not any(isinstance(finder, DramatiqAliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, DramatiqAliasFinder())
