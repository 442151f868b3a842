"""The rings of ARCHITECTURE.md, held: every in-package import points down, or is allowlisted.

Every import statement of every file under ``nbqueue/`` counts: at module level, inside
functions and under ``TYPE_CHECKING``. A file's ring comes from its path (``RINGS``); a file may
import its own ring and the rings below it, servers never import each other, and the files of
rings 0 and 1 import no optional extra (``redis``, ``pika``, ``pylibmc``, ``prometheus_client``,
``opentelemetry``, ``IPython``, ``ipywidgets``, ``django``) at all. The few upward imports kept on purpose are named
in ``ALLOWED``, each with its reason; an entry that no longer matches an import fails too, so the
list only shrinks.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
from collections.abc import Iterator

import pytest

from nbqueue.common import parse_python

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "nbqueue"

#: Ring of each module, by the longest matching prefix of its dotted name. Lower rings are
#: imported by higher ones, never the reverse.
RINGS: dict[str, float] = {
    # 0 leaves: stdlib only
    "nbqueue.errors": 0,
    "nbqueue.common": 0,
    "nbqueue.encoder": 0,
    "nbqueue.threading": 0,
    "nbqueue.asyncio": 0,
    "nbqueue.logging": 0,
    # 1 the core: everything that runs with no extra installed
    "nbqueue.message": 1,
    "nbqueue.context": 1,
    "nbqueue.services": 1,
    "nbqueue.schedules": 1,
    "nbqueue.scheduler": 1,
    "nbqueue.worker": 1,
    "nbqueue.broker": 1,
    "nbqueue.actor": 1,
    "nbqueue.generic": 1,
    "nbqueue.composition": 1,
    "nbqueue.middleware": 1,
    "nbqueue.results": 1,
    "nbqueue.rate_limits": 1,
    "nbqueue.live": 1,
    "nbqueue.history": 1,
    "nbqueue.brokers": 1,
    # 2 servers: one package per server, never importing each other
    "nbqueue._redis": 2,
    "nbqueue._rabbitmq": 2,
    "nbqueue._memcached": 2,
    "nbqueue._prometheus": 2,
    "nbqueue._opentelemetry": 2,
    # 2' features built on the core
    "nbqueue.remote": 2.5,
    # 3 the face: the composition root and the package itself
    "nbqueue.connection": 3,
    "nbqueue.compat": 3,
    "nbqueue": 3,
    # 4 apps
    "nbqueue.notebook": 4,
    "nbqueue.cli": 4,
    "nbqueue.lab": 4,
    "nbqueue.django": 4,
    "nbqueue.__main__": 4,
}

#: Dramatiq's import paths, kept as re-exports of the server packages: a shim may import what it
#: re-exports and nothing else.
SHIMS: dict[str, str] = {
    "nbqueue.brokers.redis": "nbqueue._redis",
    "nbqueue.brokers.rabbitmq": "nbqueue._rabbitmq",
    "nbqueue.results.backends.redis": "nbqueue._redis",
    "nbqueue.rate_limits.backends.redis": "nbqueue._redis",
    "nbqueue.results.backends.memcached": "nbqueue._memcached",
    "nbqueue.rate_limits.backends.memcached": "nbqueue._memcached",
    "nbqueue.middleware.prometheus": "nbqueue._prometheus",
    "nbqueue.middleware.opentelemetry": "nbqueue._opentelemetry",
}

#: Optional extras that rings 0 and 1 never import, at any level.
EXTRAS = (
    "redis",
    "pika",
    "pylibmc",
    "prometheus_client",
    "opentelemetry",
    "IPython",
    "ipywidgets",
    "django",
    "django_dramatiq",
    "jupyter_server",
    "tornado",
)

#: Core files that still import an extra, until they move to their server package.
EXTRAS_ALLOWED: set[str] = set()

#: (importer, imported) pairs allowed against the direction, each with why.
ALLOWED: dict[tuple[str, str], str] = {
    ("nbqueue", "nbqueue.notebook.extension"): (
        "%load_ext nbqueue looks for load_ipython_extension on the package itself"
    ),
}


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    kind: str  # "module", "function" or "type-checking"
    commented: bool  # a comment on the line or the line above says why


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def ring_of(module: str) -> float:
    while module not in RINGS:
        if "." not in module:
            raise AssertionError(f"{module} has no ring in tests/test_layers.py RINGS")
        module = module.rsplit(".", 1)[0]
    return RINGS[module]


def server_of(module: str) -> str | None:
    for server in (
        "nbqueue._redis",
        "nbqueue._rabbitmq",
        "nbqueue._memcached",
        "nbqueue._prometheus",
        "nbqueue._opentelemetry",
    ):
        if module == server or module.startswith(server + "."):
            return server
    return None


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        prefix = ".".join([*base, *([node.module] if node.module else [])])
    else:
        prefix = node.module or ""
    for alias in node.names:
        candidate = f"{prefix}.{alias.name}"
        # ``from package import name`` gives the package's own ``name`` when it defines one
        # (``nbqueue.live.events`` the function, not the submodule of that name).
        if candidate in MODULES and alias.name not in _defined_in(prefix):
            yield candidate
        else:
            yield prefix


def _defined_in(module: str) -> set[str]:
    """The names a module binds at its top level with ``def``, ``class`` or ``=``."""
    if module not in MODULES:
        return set()
    names = set()
    for node in parse_python(MODULES[module].read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(module: str) -> Iterator[Import]:
    path = MODULES[module]
    source = path.read_text()
    lines = source.splitlines()
    is_package = path.name == "__init__.py"

    def commented(line: int) -> bool:
        here = lines[line - 1]
        above = lines[line - 2].strip() if line >= 2 else ""
        return "#" in here or above.startswith("#")

    def visit(node: ast.AST, kind: str) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in _targets(module, child, is_package):
                    yield Import(module, target, child.lineno, kind, commented(child.lineno))
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for part in child.body:
                    yield from visit(ast.Module(body=[part], type_ignores=[]), "type-checking")
                for part in child.orelse:
                    yield from visit(ast.Module(body=[part], type_ignores=[]), kind)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from visit(child, "function" if kind == "module" else kind)
            else:
                yield from visit(child, kind)

    yield from visit(parse_python(source), "module")


def in_package(imported: str) -> str | None:
    """The module an import names inside nbqueue, or ``None`` for an outside import."""
    if imported != "nbqueue" and not imported.startswith("nbqueue."):
        return None
    while imported not in MODULES and "." in imported:
        imported = imported.rsplit(".", 1)[0]
    return imported


ALL_IMPORTS = [imp for module in sorted(MODULES) for imp in imports_of(module)]
INTERNAL = [
    dataclasses.replace(imp, imported=target)
    for imp in ALL_IMPORTS
    if (target := in_package(imp.imported)) is not None and target != imp.importer
]


def violation(imp: Import) -> str | None:
    """Why ``imp`` goes against the direction of the rings, or ``None`` when it does not."""
    importer, imported = imp.importer, imp.imported
    if importer in SHIMS:
        target = SHIMS[importer]
        if imported == target or imported.startswith(target + "."):
            return None
        return f"the shim {importer} imports {imported}, not only {target}"
    if imported in SHIMS:
        return f"{importer} imports the shim {imported}; import {SHIMS[imported]} instead"
    here, there = ring_of(importer), ring_of(imported)
    if there > here:
        return f"ring {here:g} imports ring {there:g}"
    if there == 2.5 and here == 2:
        return "a server imports remote/"
    if here == 2 and there == 2 and server_of(importer) != server_of(imported):
        return "a server imports another server"
    return None


def test_every_module_has_a_ring() -> None:
    for module in MODULES:
        ring_of(module)


def test_imports_point_down_the_rings() -> None:
    found = {
        (imp.importer, imp.imported): f"{imp.importer}:{imp.line} -> {imp.imported} ({why})"
        for imp in INTERNAL
        if (why := violation(imp)) is not None
    }
    unexpected = sorted(text for pair, text in found.items() if pair not in ALLOWED)
    assert not unexpected, "imports against the rings:\n" + "\n".join(unexpected)


def test_the_allowlist_names_only_imports_that_exist() -> None:
    found = {(imp.importer, imp.imported) for imp in INTERNAL if violation(imp) is not None}
    stale = sorted(f"{a} -> {b}" for a, b in ALLOWED if (a, b) not in found)
    assert not stale, "ALLOWED names imports that are gone; remove them:\n" + "\n".join(stale)


@pytest.mark.parametrize("extra", EXTRAS)
def test_the_leaves_and_the_core_import_no_extra(extra: str) -> None:
    offenders = sorted(
        f"{imp.importer}:{imp.line} imports {imp.imported}"
        for imp in ALL_IMPORTS
        if ring_of(imp.importer) <= 1
        and imp.importer not in SHIMS
        and imp.importer not in EXTRAS_ALLOWED
        and (imp.imported == extra or imp.imported.startswith(extra + "."))
    )
    assert not offenders, "\n".join(offenders)


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


#: Function-level imports that reach up within the core on purpose: conveniences of a lower
#: class that Dramatiq users call. Without them, the imports that run have no cycle.
CONVENIENCE: dict[tuple[str, str], str] = {
    ("nbqueue.message", "nbqueue.broker"): "Message.get_result() reads the global broker's results",
    ("nbqueue.message", "nbqueue.live"): "Message.status(), events() and abort()",
    ("nbqueue.message", "nbqueue.composition"): "message_a | message_b builds a pipeline",
}


def _with_packages(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Add the packages an import runs first: ``import a.b.c`` runs ``a/__init__`` and
    ``a/b/__init__`` (a module never counts as importing a package it belongs to)."""
    out = set(edges)
    for importer, imported in edges:
        parts = imported.split(".")
        for end in range(2, len(parts)):
            package = ".".join(parts[:end])
            if package in MODULES and not importer.startswith(package + "."):
                out.add((importer, package))
    return out


def test_no_cycle_among_imports_that_run() -> None:
    edges = {
        (imp.importer, imp.imported)
        for imp in INTERNAL
        if imp.kind != "type-checking" and (imp.importer, imp.imported) not in CONVENIENCE
    }
    assert _cycles(_with_packages(edges)) == []


def test_convenience_imports_are_late_and_still_there() -> None:
    kinds: dict[tuple[str, str], set[str]] = {}
    for imp in INTERNAL:
        kinds.setdefault((imp.importer, imp.imported), set()).add(imp.kind)
    for pair in CONVENIENCE:
        assert "function" in kinds.get(pair, set()), f"{pair} is gone; remove it from CONVENIENCE"
        assert "module" not in kinds[pair], f"{pair} must stay inside the functions that need it"


def test_function_level_imports_say_why() -> None:
    silent = sorted(
        f"{imp.importer}:{imp.line} -> {imp.imported}"
        for imp in INTERNAL
        if imp.kind == "function" and not imp.commented
    )
    assert not silent, "function-level imports without a comment saying why:\n" + "\n".join(silent)


def test_the_checker_sees_each_kind_of_import() -> None:
    """The walk finds imports at module level, in functions and under TYPE_CHECKING (a checker
    that saw none would pass everything)."""
    kinds = {imp.kind for imp in INTERNAL}
    assert kinds == {"module", "function", "type-checking"}
    seen = {(imp.importer, imp.imported) for imp in INTERNAL}
    assert ("nbqueue.actor", "nbqueue.broker") in seen


@pytest.mark.parametrize(
    ("importer", "imported", "wrong"),
    [
        ("nbqueue.broker", "nbqueue.connection", True),  # the core reaches up to the face
        ("nbqueue._redis.broker", "nbqueue._rabbitmq.io", True),  # a server imports another
        ("nbqueue._redis.broker", "nbqueue.remote.store", True),
        ("nbqueue._memcached.results", "nbqueue._redis.client", True),
        ("nbqueue.results.backends.memcached", "nbqueue._redis", True),
        ("nbqueue.live.channel", "nbqueue.brokers.redis", True),  # the core imports a shim
        ("nbqueue.brokers.redis", "nbqueue.worker", True),  # a shim imports beyond its target
        ("nbqueue.errors", "nbqueue.message", True),
        ("nbqueue.cli.boot", "nbqueue.connection", False),
        ("nbqueue._redis.broker", "nbqueue.broker", False),
        ("nbqueue.brokers.redis", "nbqueue._redis", False),
        ("nbqueue.results.backends.memcached", "nbqueue._memcached", False),
        ("nbqueue.remote.loader", "nbqueue.actor", False),
    ],
)
def test_the_rule(importer: str, imported: str, wrong: bool) -> None:
    imp = Import(importer, imported, 1, "module", False)
    assert (violation(imp) is not None) is wrong


def test_a_cycle_through_a_package_init_is_a_cycle() -> None:
    """Importing ``results.errors`` runs ``results/__init__``, which imports what imports back."""
    edges = {
        ("nbqueue.message", "nbqueue.results.errors"),
        ("nbqueue.results", "nbqueue.results.middleware"),
        ("nbqueue.results.middleware", "nbqueue.message"),
    }
    assert _cycles(edges) == []
    assert _cycles(_with_packages(edges)) == [
        ["nbqueue.message", "nbqueue.results", "nbqueue.results.middleware"]
    ]
