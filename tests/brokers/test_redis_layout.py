"""Where the Redis package keeps its Lua scripts and key prefixes: each in one place."""

from __future__ import annotations

import ast
import pathlib

import pytest
import redis as redis_py

import nbqueue
from nbqueue._redis.client import (
    BROKER_SCRIPTS,
    load_script,
    load_scripts,
    script_names,
    script_source,
)
from nbqueue._redis.keys import RedisKeys, crashes_prefix, live_prefix, own_prefix
from nbqueue.common import parse_python

PACKAGE = pathlib.Path(nbqueue.__file__).parent

#: Modules that still spell the ``__nbq__`` prefix themselves (the core cannot import
#: ``_redis.keys``); this set may only shrink.
SPELLS_PREFIX = {"middleware/crash_limit.py", "_redis/keys.py"}


def _strings(path: pathlib.Path) -> list[str]:
    """Every string constant in a module's code (f-string parts included), docstrings left out."""
    tree = parse_python(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


@pytest.mark.redis
def test_every_script_in_the_lua_folder_compiles_on_the_server_with_the_library(redis_url):
    client = redis_py.Redis.from_url(redis_url)
    try:
        names = script_names()
        assert set(BROKER_SCRIPTS) < set(names)
        for name in names:
            # SCRIPT LOAD compiles the script: a syntax error, or a clash with _lib.lua, fails.
            assert client.script_load(script_source(name)) == load_script(client, name).sha
    finally:
        client.close()


def test_the_broker_gets_exactly_its_scripts_and_every_script_starts_with_the_library():
    library = (PACKAGE / "_redis" / "lua" / "_lib.lua").read_text(encoding="utf-8")
    client = redis_py.Redis()  # register_script talks to no server
    assert sorted(load_scripts(client)) == sorted(BROKER_SCRIPTS)
    for name in script_names():
        assert script_source(name).startswith(library + "\n")
    with pytest.raises(ValueError, match="no Lua script '_lib'"):
        load_script(client, "_lib")


def test_no_module_of_the_redis_package_carries_lua_of_its_own():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in sorted((PACKAGE / "_redis").rglob("*.py"))
        if any("redis.call(" in text for text in _strings(path))
    ]
    assert offenders == []


def test_the_nbqueue_key_prefix_is_spelled_in_one_module():
    spelled = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any("__nbq__" in text for text in _strings(path))
    }
    assert spelled <= SPELLS_PREFIX
    assert "_redis/keys.py" in spelled


def test_keys_only_nbqueue_writes_keep_their_names_on_the_wire():
    keys = RedisKeys("ns")
    assert own_prefix("ns") == "ns:__nbq__:"
    assert live_prefix("ns") == "ns:__nbq__:live:"
    assert crashes_prefix("ns") == "ns:__nbq__:crashes:"
    assert keys.code("abc") == "ns:__nbq__:code:abc"
    assert keys.code_index == "ns:__nbq__:code.index"
    assert keys.capabilities("q") == "ns:__nbq__:cap:q"
    assert keys.prioritized("q") == "ns:__nbq__:q.prio"
    assert keys.dead_reasons("q.DQ") == "ns:__nbq__:q.XQ.why"
