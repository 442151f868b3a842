from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
import threading

import pytest
from IPython.core.error import UsageError

import nbqueue
from nbqueue import Actor, Message, MessageStatus
from nbqueue.results import ResultFailure

ADD = "def add(x, y=0):\n    return x + y\n"


def test_actor_cell_registers_every_function_it_defines(ip, capsys):
    ip.run_cell_magic(
        "actor",
        "",
        "import asyncio\n"
        "def add(x, y):\n    return x + y\n"
        "async def double(x):\n    await asyncio.sleep(0)\n    return 2 * x\n"
        "async def words(n):\n    for i in range(n):\n        yield f'w{i} '\n"
        "factor = 3\n",
    )
    out = capsys.readouterr().out
    assert out.strip() == (
        "Actors add, double (async), words (async generator) on queue 'default' "
        "(StubBroker, results stored)."
    )
    broker = nbqueue.get_broker()
    assert {"add", "double", "words"} <= broker.get_declared_actors()
    assert isinstance(ip.user_ns["add"], Actor)
    assert ip.user_ns["factor"] == 3  # the cell ran in the user namespace
    assert ip.user_ns["add"](1, 2) == 3  # calling still runs the function here
    add = ip.run_line_magic("send", "add 1, 2")
    double = ip.run_line_magic("send", "double factor")
    words = ip.run_line_magic("send", "words 3")
    assert add.get_result(block=True) == 3
    assert double.get_result(block=True) == 6
    assert words.get_result(block=True) == "w0 w1 w2 "


def test_rerunning_an_actor_cell_replaces_the_actor(ip):
    ip.run_cell_magic("actor", "", ADD)
    first = ip.user_ns["add"]
    assert ip.run_line_magic("send", "add 1, 2").get_result(block=True) == 3
    ip.run_cell_magic("actor", "", "def add(x, y=0):\n    return x * y\n")
    assert ip.user_ns["add"] is not first
    assert nbqueue.get_broker().get_actor("add") is ip.user_ns["add"]
    assert ip.run_line_magic("send", "add 4, 5").get_result(block=True) == 20


def test_actor_flags_become_actor_options(ip, capsys):
    ip.run_cell_magic(
        "actor",
        "--name total --queue sums --priority 5 --max-retries 2 --min-backoff 10 "
        "--max-backoff 100 --time-limit 5000 --max-age 60000 --no-store-results",
        ADD,
    )
    assert "on queue 'sums'" in capsys.readouterr().out
    actor = nbqueue.get_broker().get_actor("total")
    assert ip.user_ns["add"] is actor
    assert actor.queue_name == "sums"
    assert actor.priority == 5
    assert actor.options == {
        "max_retries": 2,
        "min_backoff": 10,
        "max_backoff": 100,
        "time_limit": 5000,
        "max_age": 60000,
        "store_results": False,
    }


def test_actor_cell_that_raises_registers_nothing(ip):
    with pytest.raises(ZeroDivisionError):
        ip.run_cell_magic("actor", "", "def f():\n    pass\n1 / 0\n")
    assert "f" not in nbqueue.get_broker().actors


@pytest.mark.parametrize(
    "line",
    ["--priority high", "--bogus 1", "--name x", "--queue 'bad name'"],
)
def test_bad_actor_flags_raise_usage_error(ip, line):
    with pytest.raises(UsageError):
        ip.run_cell_magic("actor", line, "def a(): pass\ndef b(): pass\n")


def test_send_evaluates_python_arguments_in_the_user_namespace(ip):
    ip.run_cell_magic("actor", "", "def echo(*args, **kwargs):\n    return [args, kwargs]\n")
    ip.user_ns["x"] = 10
    cases = {
        "echo 1, x=2": [[1], {"x": 2}],
        'echo "a b"': [["a b"], {}],
        "echo x + 1, [x, 'y z'], k={'a': x}": [[11, [10, "y z"]], {"k": {"a": 10}}],
        "echo(1, *[2, 3], **{'k': 4})": [[1, 2, 3], {"k": 4}],
        "echo": [[], {}],
        "echo -1, '--delay 5'": [[-1, "--delay 5"], {}],
    }
    for line, expected in cases.items():
        message = ip.run_line_magic("send", line)
        assert isinstance(message, Message)
        assert message.get_result(block=True) == expected, line


def test_send_does_not_expand_braces_or_dollars(ip):
    ip.run_cell_magic("actor", "", "def echo(value):\n    return value\n")
    ip.user_ns["name"] = "expanded"
    message = ip.run_line_magic("send", "echo {'name': '$name'}")
    assert message.get_result(block=True) == {"name": "$name"}


def test_send_options_delay_priority_and_queue(ip):
    ip.run_cell_magic("actor", "", ADD)
    delayed = ip.run_line_magic("send", "add 1, 2 --delay 60000")
    assert delayed.queue_name == "default.DQ"
    assert delayed.status().status is MessageStatus.delayed
    other = ip.run_line_magic("send", "add 2, 2 --queue=elsewhere --priority 7")
    assert other.queue_name == "elsewhere"
    assert other.options["priority"] == 7
    assert other.get_result(block=True) == 4
    assert delayed.abort()


@pytest.mark.parametrize(
    "line",
    [
        "",
        "nothing 1",
        "add 1,,",
        "add 1 --delay soon",
        "add 1 --wait 5",
        "add 1 --delay",
        "add 'open",
        "add undefined_name",
        "add 1 --queue 'bad name'",
    ],
)
def test_bad_send_input_raises_usage_error(ip, line):
    ip.run_cell_magic("actor", "", ADD)
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("send", line)
    assert "\n" not in str(info.value)


SEND_USAGE = "%send [--delay MS] [--priority N] [--queue NAME] ACTOR [ARGS ...]"


def test_send_arguments_keep_python_strings_brackets_and_minus_signs(ip):
    ip.run_cell_magic("actor", "", "def echo(*args, **kwargs):\n    return [args, kwargs]\n")
    ip.user_ns["x"] = 10
    cases = {
        'echo \'a  b\', "say \\"hi\\""': [["a  b", 'say "hi"'], {}],
        "echo ['a  b'], f'{x}  y', k='#'": [[["a  b"], "10  y"], {"k": "#"}],
        "echo x - 1, x -1, x-1, -x, - 1, (-1, -x)": [[9, 9, 9, -10, -1, [-1, -10]], {}],
        "echo --1": [[1], {}],  # Python's double minus: only --NAME is an option
        "echo abs(--x), '--queue q'  # --delay 5": [[10, "--queue q"], {}],
        "echo delay=1.0": [[], {"delay": 1.0}],
    }
    for line, expected in cases.items():
        message = ip.run_line_magic("send", line)
        assert "eta" not in message.options, line
        assert message.get_result(block=True) == expected, line


def test_send_options_go_before_between_or_after_the_arguments(ip):
    ip.run_cell_magic("actor", "", ADD)
    for line in [
        "--delay 60000 add 1, 2",
        "add --delay 60000 1, 2",
        "add 1, --delay=60000 2",
        "add 1, 2 --delay 60000",
        'add """a --queue b""", "c" --delay 60000',
    ]:
        message = ip.run_line_magic("send", line)
        assert message.queue_name == "default.DQ", line
        assert message.args in ((1, 2), ("a --queue b", "c")), line
        assert message.abort()
    other = ip.run_line_magic("send", "add(2, 2) --pri 7 --queue q-1_a")  # argparse's prefixes
    assert (other.options["priority"], other.queue_name) == (7, "q-1_a")
    assert other.get_result(block=True) == 4


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("", "required: ACTOR; use " + SEND_USAGE),
        ("--delay 5", "required: ACTOR; use " + SEND_USAGE),
        ("1, 2", "'1,' is not an actor's name; use " + SEND_USAGE),
        ("add 1 --wait 5", "Unrecognized arguments: --wait 5; use " + SEND_USAGE),
        ("add x --y", "Unrecognized arguments: --y; use " + SEND_USAGE),
        ("add 1 --delay soon", "Argument --delay: invalid int value: 'soon'; use " + SEND_USAGE),
        ("add 1 --delay", "Argument --delay: expected one argument; use " + SEND_USAGE),
        ("add 1 --delay -5", "--delay must not be negative, got -5."),
        ("add 'open", "unterminated string literal"),
        ("add (1,", "Cannot read 'add (1,': '(' was never closed; close every string and bracket"),
    ],
)
def test_bad_send_input_says_what_to_do(ip, line, says):
    ip.run_cell_magic("actor", "", ADD)
    with pytest.raises(UsageError, match=re.escape(says)) as info:
        ip.run_line_magic("send", line)
    assert "\n" not in str(info.value)
    assert str(info.value).endswith(".")


def test_send_help_shows_the_usage_its_parser_checks(ip):
    assert SEND_USAGE in " ".join(ip.find_line_magic("send").__doc__.split())


def test_send_shows_the_job_view_and_sets_underscore(ip):
    ip.run_cell_magic("actor", "", ADD)
    result = ip.run_cell("%send add 1, 2")
    assert result.success
    message = ip.user_ns["_"]
    assert isinstance(message, Message)
    assert message.get_result(block=True) == 3
    bundle, _ = ip.display_formatter.format(message)
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"] == "<nbqueue job add(1, 2)>"
    assert "text/html" in bundle


def test_send_returns_without_waiting_for_the_job(ip):
    # Every %send cell returns while its job still waits at a gate that only the test opens:
    # the cells did not wait for the jobs, shown by the order of events rather than a clock.
    gate = threading.Event()
    ip.user_ns["gate"] = gate
    ip.run_cell_magic("actor", "", "def held(i):\n    gate.wait(30)\n    return i\n")
    try:
        for i in range(20):
            assert ip.run_cell(f"%send held {i}").success
        last = ip.user_ns["_"]
        assert last.status().status in (MessageStatus.enqueued, MessageStatus.running)
    finally:
        gate.set()
    assert last.get_result(block=True, timeout=30000) == 19


def test_messages_are_awaitable_at_the_top_level(ip):
    ip.run_cell_magic("actor", "", ADD)
    ip.run_cell_magic("actor", "--max-retries 0", "def boom():\n    raise KeyError('k')\n")
    result = ip.run_cell("m = %send add 2, 3\nvalue = await m")
    assert result.success, result.error_in_exec
    assert ip.user_ns["value"] == 5
    message = ip.run_line_magic("send", "boom")
    with pytest.raises(ResultFailure):
        asyncio.run(_await(message))


async def _await(message):
    return await message


def test_a_blocking_wait_is_interrupted_by_ctrl_c(ip):
    ip.run_cell_magic(
        "actor",
        "",
        "import time\ndef slow():\n    while True:\n        time.sleep(0.01)\n",
    )
    message = ip.run_line_magic("send", "slow")
    main = threading.get_ident()
    blocked = threading.Event()

    def interrupt():
        # Ctrl-C lands once the main thread waits inside get_result (found from its stack).
        while not blocked.wait(0.01):
            frame = sys._current_frames().get(main)
            while frame is not None:
                if frame.f_code.co_name == "get_result":
                    blocked.set()
                    signal.pthread_kill(main, signal.SIGINT)
                    return
                frame = frame.f_back

    # A ten-minute timeout: were Ctrl-C not to stop the wait, pytest-timeout would stop the test.
    with pytest.raises(KeyboardInterrupt):
        threading.Thread(target=interrupt, daemon=True).start()
        message.get_result(block=True, timeout=600_000)
    assert blocked.is_set()
    assert message.abort()
    stream = message.events(timeout=5000)
    assert [e.status for e in stream if e.status][-1] is MessageStatus.aborted


def test_worker_start_stop_and_status(ip, magics, capsys):
    ip.run_cell_magic("actor", "", ADD)
    ip.run_line_magic("nbqueue", "worker start --threads 2 --queues default other")
    assert magics.embedded.worker.worker_threads == 2
    assert magics.embedded.worker.consumer_whitelist == {"default", "other"}
    ip.run_line_magic("nbqueue", "worker stop")
    assert not magics.embedded.running
    message = ip.run_line_magic("send", "add 1, 1")
    assert not magics.embedded.running  # stopped by the user: %send does not restart it
    assert nbqueue.get_broker().queue_stats()["default"].ready == 1
    ip.run_line_magic("nbqueue", "worker start")
    assert message.get_result(block=True) == 2
    capsys.readouterr()
    ip.run_line_magic("nbqueue", "status")
    out = capsys.readouterr().out
    assert "Broker: StubBroker" in out
    assert "Embedded worker: running, 2 threads, default, other" in out
    assert "Actors: add" in out
    # the embedded broker's limits on what finished jobs keep
    assert (
        "Results and live records: the newest 10,000 finished jobs and any whose Message you "
        "hold, at most 64 MiB; 1 kept (0 held" in out
    )


@pytest.mark.parametrize(
    "line",
    ["bogus", "worker", "worker start --threads 0", "worker start --bogus", "connect", "monitor x"],
)
def test_bad_nbqueue_commands_raise_usage_error(ip, line):
    with pytest.raises(UsageError):
        ip.run_line_magic("nbqueue", line)


def test_connect_restarts_the_worker_and_redeclares_the_notebooks_actors(ip, magics, capsys):
    ip.run_cell_magic("actor", "", ADD)
    ip.run_line_magic("send", "add 1, 1").get_result(block=True)
    old_broker, old_worker = nbqueue.get_broker(), magics.embedded.worker
    ip.run_line_magic("nbqueue", "connect memory://")
    assert "Connected to memory:// (StubBroker)." in capsys.readouterr().out
    broker = nbqueue.get_broker()
    assert broker is not old_broker
    assert not old_worker.running
    assert magics.embedded.worker.broker is broker
    assert ip.user_ns["add"].broker is broker
    assert ip.run_line_magic("send", "add 2, 2").get_result(block=True) == 4


def test_connect_never_prints_a_password(ip, capsys):
    with pytest.raises(nbqueue.NbqueueError) as info:
        ip.run_line_magic("nbqueue", "connect bogus://user:hunter2@host/0")
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in capsys.readouterr().out


def test_help_is_the_docstring(ip):
    doc = ip.find_line_magic("send").__doc__
    assert "%send add 1, y=2" in doc
    assert "--delay" in doc
    assert "--store-results" in ip.find_cell_magic("actor").__doc__


def test_unload_stops_the_worker_and_removes_the_magics(ip, magics):
    ip.run_cell_magic("actor", "", ADD)
    ip.run_line_magic("send", "add 1, 1").get_result(block=True)
    worker = magics.embedded.worker
    ip.run_line_magic("unload_ext", "nbqueue")
    try:
        assert not worker.running
        assert ip.find_line_magic("send") is None
        assert ip.find_cell_magic("actor") is None
        bundle, _ = ip.display_formatter.format(ip.user_ns["add"].send(1, 1))
        assert "application/vnd.jupyter.widget-view+json" not in bundle
    finally:
        ip.run_line_magic("load_ext", "nbqueue")


def test_worker_logs_stay_out_of_the_running_cell(ip, magics, monkeypatch, capsys):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a fresh kernel
    assert magics.embedded.log.install()
    try:
        ip.run_cell_magic("actor", "--max-retries 0", "def boom():\n    raise KeyError('k')\n")
        message = ip.run_line_magic("send", "boom")
        with pytest.raises(ResultFailure):
            message.get_result(block=True)
        list(message.events(timeout=10000))
        captured = capsys.readouterr()
        assert "KeyError" not in captured.err + captured.out
        ip.run_line_magic("nbqueue", "status")
        assert "failed after 0 retries" in capsys.readouterr().out
    finally:
        magics.embedded.log.uninstall()


def test_monitor_and_results_show_live_tables(ip, magics):
    ip.run_cell_magic("actor", "", ADD)
    message = ip.user_ns["add"].send(2, 3)  # any send from the kernel is listed
    assert message.get_result(block=True) == 5
    list(message.events(timeout=10000))
    monitor = ip.run_line_magic("nbqueue", "monitor")
    table = ip.run_line_magic("nbqueue", "results")
    monitor_text = ip.display_formatter.format(monitor)[0]["text/plain"]
    assert monitor_text.splitlines()[1].split() == ["default", "0", "0", "0", "0"]
    assert "embedded worker: running, 4 threads, all queues" in monitor_text
    table.refresh()
    assert ip.display_formatter.format(table)[0]["text/plain"].split() == [
        "add(2,",
        "3)",
        "succeeded",
        "5",
    ]
    ip.run_line_magic("unload_ext", "nbqueue")
    try:
        monitor.thread.join(2)
        table.thread.join(2)
        assert not monitor.thread.is_alive() and not table.thread.is_alive()
    finally:
        ip.run_line_magic("load_ext", "nbqueue")


@pytest.mark.redis
def test_connect_to_redis_runs_and_watches_jobs_there(ip, magics, redis_url, namespace, capsys):
    from tests.brokers._redis import delete_namespace

    ip.run_cell_magic("actor", "", "def shout(text):\n    print(text)\n    return text.upper()\n")
    ip.run_line_magic("nbqueue", f"connect {redis_url} --namespace {namespace}")
    broker = nbqueue.get_broker()
    try:
        assert "(RedisBroker)." in capsys.readouterr().out
        assert ip.user_ns["shout"].broker is broker
        message = ip.run_line_magic("send", "shout 'hi'")
        assert message.get_result(block=True) == "HI"
        view = magics.job_view(message)
        assert view.join(10)
        assert view.state.status == "succeeded" and view.state.result == "HI"
        assert "hi\n" in view.state.output
    finally:
        magics.embedded.stop()
        delete_namespace(broker.client, namespace)  # type: ignore[attr-defined]
        broker.close()
