from __future__ import annotations

import ast

import pytest

from nbqueue.common import (
    compute_backoff,
    dq_name,
    getenv_int,
    parse_python,
    q_name,
    redact_url,
    xq_name,
)


def test_queue_name_helpers_map_between_queue_delay_and_dead_letter_names():
    assert q_name("q.DQ") == q_name("q.XQ") == q_name("q") == "q"
    assert dq_name("q") == dq_name("q.XQ") == dq_name("q.DQ") == "q.DQ"
    assert xq_name("q") == xq_name("q.DQ") == "q.XQ"


def test_backoff_grows_exponentially_within_jitter_and_respects_the_cap():
    for attempts in range(5):
        n, backoff = compute_backoff(attempts, factor=100, max_backoff=10**9)
        assert n == attempts + 1
        assert 100 * 2**attempts <= backoff < 200 * 2**attempts
    _, capped = compute_backoff(40, factor=100, max_backoff=1000)
    assert 500 <= capped <= 1000
    assert compute_backoff(3, factor=10, jitter=False, max_backoff=50) == (4, 50)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("amqp://user:s3cret@host/vhost", "amqp://user:***@host/vhost"),
        ("redis://localhost:6379", "redis://localhost:6379"),
        ("amqp://a:p1@h1;amqp://b:p2@h2", "amqp://a:***@h1;amqp://b:***@h2"),
    ],
)
def test_redact_url_hides_passwords(url, expected):
    assert redact_url(url) == expected


def test_getenv_int_explains_a_bad_value(monkeypatch):
    monkeypatch.setenv("NBQUEUE_X", "many")
    with pytest.raises(ValueError, match="NBQUEUE_X must be an integer"):
        getenv_int("NBQUEUE_X", 1)
    monkeypatch.setenv("NBQUEUE_X", "7")
    assert getenv_int("NBQUEUE_X", 1) == 7


def test_iter_queue_drains_without_blocking():
    import queue

    from nbqueue.common import iter_queue

    q: queue.Queue[int] = queue.Queue()
    for i in range(3):
        q.put(i)
    assert list(iter_queue(q)) == [0, 1, 2]
    assert list(iter_queue(q)) == []


def test_join_queue_returns_once_done_and_raises_on_timeout():
    import queue
    import threading

    from nbqueue.common import join_queue
    from nbqueue.errors import QueueJoinTimeout

    q: queue.Queue[int] = queue.Queue()
    q.put(1)
    with pytest.raises(QueueJoinTimeout):
        join_queue(q, timeout=0.01)

    def finish() -> None:
        q.get()
        q.task_done()

    worker = threading.Thread(target=finish)
    worker.start()
    join_queue(q, timeout=60)
    join_queue(q)
    worker.join()


def test_join_all_joins_each_within_one_budget():
    import threading

    from nbqueue.common import join_all

    release = threading.Event()
    threads = [threading.Thread(target=release.wait) for _ in range(2)]
    for t in threads:
        t.start()
    join_all(threads, timeout=10)  # 10 ms in all: they are still waiting
    assert all(t.is_alive() for t in threads)
    release.set()
    join_all(threads, timeout=60_000)
    assert not any(t.is_alive() for t in threads)


def test_actor_decorator_is_the_type_of_actor_with_options_only():
    from nbqueue.actor import ActorDecorator, actor
    from nbqueue.brokers.stub import StubBroker

    decorator: ActorDecorator = actor(queue_name="q", broker=StubBroker())
    assert decorator(lambda: None).queue_name == "q"


def test_parse_python_retries_cpythons_ast_race_and_nothing_else(monkeypatch):
    # CPython 3.11 (python/cpython#106905) raises this when another thread built an AST at the
    # same moment; here the first two parses fail as that race makes them fail.
    real, calls = ast.parse, []

    def racing(source, mode="exec"):
        calls.append(mode)
        if len(calls) <= 2:
            raise SystemError("AST constructor recursion depth mismatch (before=126, after=61)")
        return real(source, mode=mode)

    monkeypatch.setattr(ast, "parse", racing)
    tree = parse_python("x = 1")
    assert isinstance(tree, ast.Module) and len(calls) == 3
    assert isinstance(parse_python("1 + 1", "eval"), ast.Expression)
    with pytest.raises(SyntaxError):
        parse_python("x = (")

    def broken(source, mode="exec"):
        raise SystemError("some other interpreter fault")

    monkeypatch.setattr(ast, "parse", broken)
    with pytest.raises(SystemError, match="some other"):
        parse_python("x = 1")
