from __future__ import annotations

import nbqueue.middleware as middleware
import nbqueue.threading
from nbqueue.brokers.stub import StubBroker
from nbqueue.middleware import threading as middleware_threading


def test_a_broker_without_middleware_gets_one_of_each_default_in_dramatiqs_order() -> None:
    broker = StubBroker()

    assert [type(m).__name__ for m in broker.middleware] == [
        "AgeLimit",
        "TimeLimit",
        "ShutdownNotifications",
        "Callbacks",
        "Pipelines",
        "Retries",
    ]


def test_default_brokers_accept_every_option_the_defaults_read() -> None:
    broker = StubBroker()

    assert {
        "max_age",
        "time_limit",
        "notify_shutdown",
        "on_success",
        "on_failure",
        "pipe_ignore",
        "pipe_target",
        "max_retries",
        "min_backoff",
        "max_backoff",
        "retry_when",
        "throws",
        "on_retry_exhausted",
    } <= broker.actor_options


def test_the_package_exports_dramatiqs_names_in_sorted_order() -> None:
    assert middleware.__all__ == sorted(middleware.__all__)
    for name in middleware.__all__:
        assert hasattr(middleware, name), name
    assert "GroupCallbacks" in middleware.__all__


def test_interrupts_are_shared_with_nbqueue_threading() -> None:
    assert middleware.Interrupt is nbqueue.threading.Interrupt
    assert issubclass(middleware.TimeLimitExceeded, middleware.Interrupt)
    assert issubclass(middleware.Shutdown, middleware.Interrupt)
    assert middleware_threading.raise_thread_exception is nbqueue.threading.raise_thread_exception
