from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
import types

import nbqueue


def test_all_is_sorted_and_complete():
    assert nbqueue.__all__ == sorted(nbqueue.__all__)
    public = {
        name
        for name, value in vars(nbqueue).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    hooks = {"load_ipython_extension", "unload_ipython_extension"}  # for IPython, not users
    assert public - {"annotations", "Any"} - hooks | {"middleware"} == set(nbqueue.__all__) - {
        "__version__"
    }
    for name in nbqueue.__all__:
        assert hasattr(nbqueue, name), name


def test_dramatiq_names_are_all_available():
    dramatiq_all = [
        "Actor",
        "ActorNotFound",
        "Broker",
        "BrokerConnectionError",
        "BrokerError",
        "ConnectionClosed",
        "ConnectionFailed",
        "Consumer",
        "ConsumerThread",
        "DecodeError",
        "DramatiqError",
        "Encoder",
        "GenericActor",
        "JSONEncoder",
        "Message",
        "MessageProxy",
        "Middleware",
        "QueueJoinTimeout",
        "QueueNotFound",
        "RateLimitExceeded",
        "Retry",
        "Worker",
        "WorkerThread",
        "actor",
        "get_broker",
        "get_encoder",
        "get_logger",
        "group",
        "pipeline",
        "set_broker",
        "set_encoder",
    ]
    missing = [name for name in dramatiq_all if not hasattr(nbqueue, name)]
    assert missing == []
    from nbqueue.middleware import (  # noqa: F401
        AgeLimit,
        AsyncIO,
        Callbacks,
        CurrentMessage,
        GroupCallbacks,
        Interrupt,
        Middleware,
        MiddlewareError,
        Pipelines,
        Retries,
        Shutdown,
        ShutdownNotifications,
        SkipMessage,
        TimeLimit,
        TimeLimitExceeded,
        default_middleware,
        raise_thread_exception,
    )
    from nbqueue.rate_limits import (  # noqa: F401
        Barrier,
        BucketRateLimiter,
        ConcurrentRateLimiter,
        RateLimiter,
        WindowRateLimiter,
    )
    from nbqueue.rate_limits import backends as limit_backends
    from nbqueue.results import (  # noqa: F401
        ResultBackend,
        ResultError,
        ResultFailure,
        ResultMissing,
        Results,
        ResultTimeout,
    )
    from nbqueue.results import backends as result_backends

    for backends in (limit_backends, result_backends):  # Dramatiq's three backends in each
        for name in ("MemcachedBackend", "RedisBackend", "StubBackend"):
            assert isinstance(getattr(backends, name), type), (backends, name)


def test_the_deprecated_connection_error_alias_warns():
    import pytest

    with pytest.warns(DeprecationWarning, match="BrokerConnectionError"):
        alias = nbqueue.ConnectionError
    assert alias is nbqueue.BrokerConnectionError


def test_import_works_with_no_optional_packages_installed():
    code = textwrap.dedent(
        """
        import sys
        for name in ("redis", "pika", "pylibmc", "IPython", "ipywidgets", "orjson"):
            sys.modules[name] = None
        import nbqueue
        from nbqueue.brokers.stub import StubBroker

        @nbqueue.actor
        def add(x, y):
            return x + y

        worker = nbqueue.Worker(nbqueue.get_broker(), worker_timeout=100)
        worker.start()
        print(add.send(1, 2).get_result(block=True, timeout=10000))
        worker.stop()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"


def test_no_pickle_is_imported_by_the_core():
    code = "import sys, nbqueue; print('pickle' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_redis_backends_without_redis_name_the_extra_to_install():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["redis"] = None
        from nbqueue.rate_limits import backends as limits
        from nbqueue.results import backends as results
        for module in (limits, results):
            assert "RedisBackend" in dir(module)
            try:
                module.RedisBackend
            except ImportError as e:
                print(e)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("pip install 'nbqueue[redis]'") == 2


def test_memcached_backends_without_pylibmc_name_the_extra_to_install():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["pylibmc"] = None
        from nbqueue.rate_limits import backends as limits
        from nbqueue.results import backends as results
        for module in (limits, results):
            assert "MemcachedBackend" in dir(module)
            try:
                module.MemcachedBackend
            except ImportError as e:
                print(e)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.count(
            "MemcachedBackend needs the pylibmc package: pip install 'nbqueue[memcached]'."
        )
        == 2
    )


#: Dramatiq's import paths of moved classes, the module that defines each now, and the
#: ``__module__`` its reprs show (the public path, unchanged by the move).
MOVED = [
    ("nbqueue.brokers.redis", "RedisBroker", "nbqueue._redis.broker", "nbqueue.brokers.redis"),
    ("nbqueue.brokers.redis", "RedisKeys", "nbqueue._redis.keys", "nbqueue._redis.keys"),
    # Dramatiq's module constants of the same meaning and value
    ("nbqueue.brokers.redis", "DEFAULT_HEARTBEAT_TIMEOUT", "nbqueue._redis.broker", None),
    ("nbqueue.brokers.redis", "DEFAULT_DEAD_MESSAGE_TTL", "nbqueue._redis.broker", None),
    ("nbqueue.brokers.rabbitmq", "DEAD_MESSAGE_TTL", "nbqueue._rabbitmq.broker", None),
    (
        "nbqueue.brokers.rabbitmq",
        "RabbitmqBroker",
        "nbqueue._rabbitmq.broker",
        "nbqueue.brokers.rabbitmq",
    ),
    (
        "nbqueue.results.backends.redis",
        "RedisBackend",
        "nbqueue._redis.results",
        "nbqueue.results.backends.redis",
    ),
    ("nbqueue.results.backends", "RedisBackend", "nbqueue._redis.results", None),
    (
        "nbqueue.rate_limits.backends.redis",
        "RedisBackend",
        "nbqueue._redis.rate_limits",
        "nbqueue.rate_limits.backends.redis",
    ),
    ("nbqueue.rate_limits.backends", "RedisBackend", "nbqueue._redis.rate_limits", None),
    (
        "nbqueue.results.backends.memcached",
        "MemcachedBackend",
        "nbqueue._memcached.results",
        "nbqueue.results.backends.memcached",
    ),
    ("nbqueue.results.backends", "MemcachedBackend", "nbqueue._memcached.results", None),
    (
        "nbqueue.rate_limits.backends.memcached",
        "MemcachedBackend",
        "nbqueue._memcached.rate_limits",
        "nbqueue.rate_limits.backends.memcached",
    ),
    ("nbqueue.rate_limits.backends", "MemcachedBackend", "nbqueue._memcached.rate_limits", None),
    ("nbqueue.message", "get_encoder", "nbqueue.encoder", None),
    ("nbqueue.message", "set_encoder", "nbqueue.encoder", None),
    ("nbqueue", "get_encoder", "nbqueue.encoder", None),
    ("nbqueue.remote.store", "CodeStore", "nbqueue.services", None),
    ("nbqueue.remote.store", "MemoryCodeStore", "nbqueue.services", None),
]


def test_dramatiq_paths_of_moved_names_give_the_same_objects():
    import importlib

    import pytest

    for path, name, home, public_module in MOVED:
        value = getattr(importlib.import_module(path), name)
        assert value is getattr(importlib.import_module(home), name), (path, name)
        if public_module is not None:
            assert value.__module__ == public_module, (path, name)
            assert repr(value) == f"<class '{public_module}.{name}'>"
    # the shims re-export, nothing more
    for path in {p for p, *_ in MOVED if p.endswith((".redis", ".rabbitmq", ".memcached"))}:
        module = importlib.import_module(path)
        assert set(module.__all__) == {n for p, n, *_ in MOVED if p == path}
        with pytest.raises(AttributeError):
            module.does_not_exist  # noqa: B018


def test_the_set_encoder_of_message_changes_what_messages_use():
    from nbqueue import encoder, message

    encoded = []

    class Marked(nbqueue.JSONEncoder):
        def encode(self, data):
            encoded.append(data["message_id"])
            return super().encode(data)

    previous = message.get_encoder()
    message.set_encoder(Marked())
    try:
        assert isinstance(nbqueue.get_encoder(), Marked)
        assert isinstance(encoder.get_encoder(), Marked)
        sent = nbqueue.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
        assert nbqueue.Message.decode(sent.encode()) == sent
        assert encoded == [sent.message_id]
    finally:
        message.set_encoder(previous)
    assert nbqueue.get_encoder() is previous


def _parameters(fn):
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


#: Dramatiq methods that Dramatiq users' code and test suites call, as (nbqueue path, attribute).
DRAMATIQ_METHODS = [
    ("nbqueue.worker", "Worker.pause"),
    ("nbqueue.worker", "Worker.resume"),
    ("nbqueue.broker", "MessageProxy.fail"),
    ("nbqueue.broker", "MessageProxy.stuff_exception"),
    ("nbqueue.broker", "MessageProxy.clear_exception"),
    ("nbqueue.brokers.stub", "StubBroker.__init__"),
    ("nbqueue.brokers.stub", "StubBroker.join"),
    ("nbqueue.brokers.stub", "StubBroker.flush"),
    ("nbqueue.brokers.stub", "StubBroker.flush_all"),
    ("nbqueue.logging", "get_logger"),
]


def test_dramatiq_methods_take_dramatiqs_parameters_with_dramatiqs_defaults():
    import importlib

    for path, attribute in DRAMATIQ_METHODS:
        ours: object = importlib.import_module(path)
        theirs: object = importlib.import_module(path.replace("nbqueue", "dramatiq", 1))
        for part in attribute.split("."):
            ours, theirs = getattr(ours, part), getattr(theirs, part)
        ours_parameters, theirs_parameters = _parameters(ours), _parameters(theirs)
        for name, default in theirs_parameters.items():
            assert name in ours_parameters, (attribute, name)
            assert ours_parameters[name] == default, (attribute, name)
        # what nbqueue adds is optional, so Dramatiq's calls still work
        added = set(ours_parameters) - set(theirs_parameters)
        assert all(ours_parameters[name] is not inspect.Parameter.empty for name in added), (
            attribute
        )


def test_dramatiq_attributes_of_brokers_and_proxies_exist():
    from nbqueue.broker import MessageProxy
    from nbqueue.brokers.rabbitmq import RabbitmqBroker
    from nbqueue.brokers.stub import StubBroker

    for name in ("connection", "channel"):
        prop = getattr(RabbitmqBroker, name)
        assert isinstance(prop, property) and prop.fdel is not None, name
    assert isinstance(vars(StubBroker)["dead_letters"], property)
    broker = StubBroker()
    broker.declare_queue("q")
    assert callable(broker.queues["q"].qsize) and callable(broker.queues["q.DQ"].qsize)
    assert isinstance(broker.dead_letters_by_queue["q"], list)
    fresh = MessageProxy(nbqueue.Message("q", "a", (), {}, {}))
    assert fresh.failed is False and fresh.exception is None and fresh._exception is None
    proxy = MessageProxy(nbqueue.Message("q", "a", (), {}, {}))
    error = ValueError("x")
    proxy.stuff_exception(error)
    proxy.fail()
    assert proxy.failed and proxy.exception is error
    from nbqueue.logging import get_logger

    assert nbqueue.get_logger is get_logger


def test_every_module_of_the_package_that_imports_logging_gets_the_standard_library():
    import importlib
    import logging
    import pkgutil

    for info in pkgutil.walk_packages(nbqueue.__path__, "nbqueue."):
        if ".notebook" in info.name or info.name.endswith("__main__"):
            continue  # needs IPython; it imports logging the same way
        module = importlib.import_module(info.name)
        value = getattr(module, "logging", None)
        if isinstance(value, types.ModuleType) and info.name != "nbqueue.logging":
            assert value is logging, f"{info.name} got nbqueue.logging for 'import logging'"
    # the package's own attribute is its submodule, which builds on the standard library
    assert vars(nbqueue.logging)["logging"] is logging


def test_dramatiq_s_own_modules_of_the_middleware_base_and_the_result_wrappers_still_import():
    from nbqueue.middleware import base
    from nbqueue.middleware.middleware import Middleware, MiddlewareError, SkipMessage
    from nbqueue.results import backend
    from nbqueue.results.result import unwrap_result, wrap_exception, wrap_result

    assert (Middleware, MiddlewareError, SkipMessage) == (
        base.Middleware,
        base.MiddlewareError,
        base.SkipMessage,
    )
    assert (wrap_result, wrap_exception, unwrap_result) == (
        backend.wrap_result,
        backend.wrap_exception,
        backend.unwrap_result,
    )
    assert unwrap_result(wrap_result(3)) == 3
