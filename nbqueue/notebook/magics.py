"""The ``%%actor``, ``%send`` and ``%nbqueue`` magics."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import html
import inspect
import io
import re
import shlex
import threading
import time
import tokenize
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from IPython.core import magic, magic_arguments
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, magics_class

from ..actor import Actor
from ..actor import actor as declare
from ..broker import Broker, get_broker
from ..brokers.stub import StubBroker
from ..common import QUEUE_NAME_RE, parse_python, redact_url
from ..connection import RESULTS_URL_ENV, connect
from ..errors import NbqueueError
from ..history.lookup import attach
from ..live.backends import find_results
from ..live.retention import Retention
from ..message import Message
from ..remote import NOTEBOOK_QUEUE, SECRET_ENV, publish_actor, secret_from_env
from ..schedule_control import (
    ScheduleInfo,
    list_schedules,
    pause_schedule,
    remove_schedule,
    resume_schedule,
)
from ..scheduler import now_ms
from ..schedules import Rule, cron, every, unschedule
from .embedded import get_embedded_worker
from .jobs import LocalHistory, recent_jobs
from .widgets import BatchView, History, JobView, QueueMonitor, ResultsTable

__all__ = ["NbqueueMagics"]

_F = TypeVar("_F", bound=Callable[..., Any])


class _Decorator(Protocol):
    def __call__(self, fn: _F, /) -> _F: ...


# IPython's magic decorators are untyped; these casts keep the magics' own types visible.
_args = cast("Callable[..., _Decorator]", magic_arguments.magic_arguments)
_arg = cast("Callable[..., _Decorator]", magic_arguments.argument)
_parse = cast("Callable[[Any, str], argparse.Namespace]", magic_arguments.parse_argstring)
_line_magic = cast("Callable[[str], _Decorator]", magic.line_magic)
_cell_magic = cast("Callable[[str], _Decorator]", magic.cell_magic)
_no_var_expand = cast("_Decorator", magic.no_var_expand)

_ACTOR_OPTIONS = ("max_retries", "min_backoff", "max_backoff", "time_limit", "max_age")
_SEND_EXAMPLE = "e.g. %send add 1, y=2 --delay 1000"

# Token types that open and close a string with code inside (f-strings from 3.12, t-strings
# from 3.14); -1 where the tokenizer has none, since then such a string is one STRING token.
_OPENS = {getattr(tokenize, "FSTRING_START", -1), getattr(tokenize, "TSTRING_START", -1)}
_CLOSES = {getattr(tokenize, "FSTRING_END", -1), getattr(tokenize, "TSTRING_END", -1)}
_LAYOUT = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
# What the tokenizer reads in place of the text, one character for one: digits as letters,
# so that Python 3.12's tokenizer, which rejects a malformed number, takes an option value
# such as the queue name q-1_a; and any space (a no-break space too) as " ".
_TOKENIZED = str.maketrans(
    {str(digit): "a" for digit in range(10)}
    | {c: " " for c in map(chr, range(0x3001)) if c.isspace() and c != "\n"}
)


def _python_words(text: str) -> list[str]:
    """Split ``text`` at the spaces between Python tokens that are outside brackets and strings.

    Python's own tokenizer reads the text, so ``'a  b'``, ``f(x, y)`` and ``"--delay 5"`` each
    stay one word, and every word is a slice of ``text`` (quotes, escapes and spaces kept).
    A comment ends the text.

    Raises:
      UsageError: a string or bracket is not closed.
    """
    lines = io.StringIO(text).readlines()
    line_starts = [0]
    for line in lines:
        line_starts.append(line_starts[-1] + len(line))
    spans: list[list[int]] = []  # [begin, end] of each word
    depth = 0  # of brackets and of strings with code inside
    try:
        readline = io.StringIO(text.translate(_TOKENIZED)).readline
        for token in tokenize.generate_tokens(readline):
            if token.type == tokenize.COMMENT:
                break
            if token.type == tokenize.ERRORTOKEN and token.string in ("'", '"'):
                # Python 3.11 and older tokenize on after an unclosed quote; 3.12 raises.
                raise tokenize.TokenError("unterminated string literal")
            if token.type in _LAYOUT or token.string.isspace():
                continue  # (3.11 and older make the space before a stray ? or $ a token)
            begin = line_starts[token.start[0] - 1] + token.start[1]
            end = line_starts[token.end[0] - 1] + token.end[1]
            if spans and (depth != 0 or not text[spans[-1][1] : begin].isspace()):
                spans[-1][1] = end  # no space before the token: it goes on the word
            else:
                spans.append([begin, end])
            if token.type in _OPENS or (token.type == tokenize.OP and token.string in "([{"):
                depth += 1
            elif token.type in _CLOSES or (token.type == tokenize.OP and token.string in ")]}"):
                depth -= 1
    except (tokenize.TokenError, SyntaxError) as e:  # (an IndentationError after a newline)
        try:
            parse_python(text, mode="eval")  # for Python's own words, e.g. "'(' was never closed"
            problem = str(e.args[0])
        except (SyntaxError, ValueError) as syntax:
            problem = syntax.msg if isinstance(syntax, SyntaxError) else str(syntax)
        raise UsageError(
            f"Cannot read {text!r}: {problem}; close every string and bracket, {_SEND_EXAMPLE}."
        ) from None
    return [text[begin:end] for begin, end in spans]


def _parser(magic_func: Callable[..., Any]) -> argparse.ArgumentParser:
    """The parser ``@magic_arguments`` built from the declarations above ``magic_func``."""
    parser: argparse.ArgumentParser = cast(Any, magic_func).parser
    return parser


def _usage(parser: argparse.ArgumentParser) -> str:
    """The parser's usage on one line: ``%send [--delay MS] ... ACTOR [ARGS ...]``."""
    usage = " ".join(parser.format_usage().split())
    _, percent, rest = usage.partition("%")  # IPython's usage starts with "::"
    return percent + rest if percent else usage


_PERIOD = re.compile(r"(\d+)\s*(ms|s|m|h|d)?")
_UNITS = {None: 1, "ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000}


def _rule(args: argparse.Namespace) -> Rule | None:
    """The schedule rule of ``%%actor --every/--cron/--tz``, or ``None`` without one.

    Raises:
      UsageError: a bad period, rule or zone, or options that do not go together.
    """
    for name in ("every", "cron", "tz"):  # IPython's argument split keeps the quotes
        value = getattr(args, name)
        if isinstance(value, str) and len(value) > 1 and value[0] == value[-1] in "'\"":
            setattr(args, name, value[1:-1])
    if args.every is not None and args.cron is not None:
        raise UsageError("Use --every or --cron, not both: a cell's actor has one schedule.")
    if args.every is None and args.cron is None:
        if args.tz is not None or args.misfire_grace is not None:
            raise UsageError(
                '--tz and --misfire-grace apply to a schedule; add --every PERIOD or --cron "RULE".'
            )
        return None
    if args.misfire_grace is not None and args.misfire_grace < 0:
        raise UsageError(f"--misfire-grace must not be negative, got {args.misfire_grace}.")
    if args.every is not None:
        if args.tz is not None:
            raise UsageError("--tz applies to --cron only; --every ticks the same in any zone.")
        match = _PERIOD.fullmatch(args.every.strip())
        if match is None or int(match.group(1)) == 0:
            raise UsageError(
                f"--every {args.every!r} is not a period; write a positive number with a unit, "
                f"500ms, 10s, 10m, 1h or 1d, or a number of milliseconds."
            )
        return every(int(match.group(1)) * _UNITS[match.group(2)])
    try:
        return cron(args.cron, tz=args.tz)
    except (ValueError, ImportError) as e:
        raise UsageError(str(e)) from None


def _when(at: int | None) -> str:
    """A time (ms since the epoch) for people: UTC, to the second."""
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at / 1000))


def _kind(fn: Any) -> str:
    if inspect.isasyncgenfunction(fn):
        return " (async generator)"
    if inspect.iscoroutinefunction(fn):
        return " (async)"
    return ""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message}.")


@magics_class
class NbqueueMagics(Magics):
    """nbqueue's magics; ``%load_ext nbqueue`` registers one instance."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.embedded = get_embedded_worker()
        self.history = History()
        self.embedded.autostart.on_sent = self.history.add  # every send, not only %send
        #: actor name -> (function, declaration options), re-declared after a connect
        self.declared: dict[str, tuple[Any, dict[str, Any]]] = {}
        #: the actors whose %%actor cell declared a schedule (--every, --cron)
        self.scheduled: set[str] = set()
        self.views: list[Any] = []
        #: the local job history (set by the extension; ``None`` when off)
        self.local: LocalHistory | None = None
        #: views made by %send for the message it returns, until displayed
        self._prepared: dict[str, JobView] = {}
        #: set while no cell runs (see JobView's ``idle``)
        self.idle = threading.Event()
        self.idle.set()

    def pre_run_cell(self, info: Any) -> None:
        """IPython event: a cell starts."""
        self.idle.clear()

    def post_run_cell(self, result: Any) -> None:
        """IPython event: a cell finished."""
        for view in self._prepared.values():
            view.close()  # made for a message the cell did not display (m = %send ...)
        self._prepared.clear()
        self.idle.set()

    @property
    def ip(self) -> InteractiveShell:
        """The shell the magics are registered on."""
        assert self.shell is not None
        return self.shell

    # -- %%actor -------------------------------------------------------------------------------

    @_args()
    @_arg("--name", help="the actor's name (only for a cell that defines one function)")
    @_arg("--queue", help="the queue its messages go to (default: 'default')")
    @_arg("--priority", type=int, help="larger runs first (default: 0)")
    @_arg("--max-retries", type=int, help="how many times a failure is retried")
    @_arg("--min-backoff", type=int, help="the first retry's delay, in milliseconds")
    @_arg("--max-backoff", type=int, help="the longest retry delay, in milliseconds")
    @_arg("--time-limit", type=int, help="abort a run after this many milliseconds")
    @_arg("--max-age", type=int, help="skip messages older than this many milliseconds")
    @_arg(
        "--store-results",
        dest="store_results",
        action="store_true",
        default=None,
        help="store results, so message.get_result() works (the default)",
    )
    @_arg("--no-store-results", dest="store_results", action="store_false")
    @_arg(
        "--every",
        metavar="PERIOD",
        help="also send the actor a message every PERIOD: 500ms, 10s, 10m, 1h, 1d or a number "
        "of milliseconds (the cell must define one function)",
    )
    @_arg(
        "--cron",
        metavar="RULE",
        help='also send the actor a message at every tick of a cron rule, e.g. "0 9 * * 1-5"',
    )
    @_arg("--tz", metavar="ZONE", help="the time zone of --cron, e.g. Europe/Paris (default UTC)")
    @_arg(
        "--misfire-grace",
        type=int,
        metavar="MS",
        help="how old a tick missed while no worker ran may be and still run once",
    )
    @_arg(
        "--remote",
        action="store_true",
        help="also publish the cell, signed with NBQUEUE_SECRET, for workers started with "
        "--notebook-actors; the queue defaults to 'notebook', which the embedded worker skips",
    )
    @_cell_magic("actor")
    def actor(self, line: str, cell: str) -> None:
        """Run the cell and register every function it defines as an actor.

        Usage: ``%%actor [--queue NAME] [--priority N] [--max-retries N] ...`` on the first line
        of a cell; sync, ``async def`` and async generator functions all work. Results are
        stored by default. Re-running the cell replaces the actors. Send with ``%send NAME
        ARGS`` or ``NAME.send(...)``; calling ``NAME(...)`` still runs the function here.

        ``--remote`` publishes the whole cell (its imports and helpers run on the worker too) so
        that ``nbqueue worker --notebook-actors`` with the same ``NBQUEUE_SECRET`` runs it; each
        message runs the version of the cell it was sent with.

        ``--every 10m`` or ``--cron "0 9 * * 1-5" [--tz Europe/Paris]`` also schedule the
        actor (a schedule named after it, see ``%nbqueue schedules``): the embedded worker
        sends it a message at every tick, or with ``--remote`` the ``--notebook-actors``
        workers do, still after this notebook is closed. Re-running the cell replaces the
        schedule; without the option, it ends it.
        """
        args = _parse(self.actor, line)
        rule = _rule(args)
        secret = secret_from_env() if args.remote else None
        if args.remote and secret is None:
            raise UsageError(
                f"%%actor --remote needs the workers' shared secret: set it first with "
                f"os.environ[{SECRET_ENV!r}] = '...' (the value the workers have)."
            )
        if args.queue is not None and not QUEUE_NAME_RE.fullmatch(args.queue):
            raise UsageError(
                f"Queue name {args.queue!r} is invalid; use letters, digits, '.', '_' and '-'."
            )
        source: str = self.ip.transform_cell(cell)  # type: ignore[no-untyped-call]
        try:
            tree = parse_python(source)
        except SyntaxError:
            tree = None  # running it below reports the error with the cell's own lines
        names = [
            node.name
            for node in (tree.body if tree is not None else [])
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        if args.name is not None and len(names) != 1:
            raise UsageError(
                f"--name needs a cell that defines exactly one function, this one defines "
                f"{len(names)}; drop --name or split the cell."
            )
        if rule is not None and len(names) != 1:
            raise UsageError(
                f"--every and --cron need a cell that defines exactly one function, this one "
                f"defines {len(names)}; split the cell."
            )
        filename = self.ip.compile.cache(source)
        code = compile(source, filename, "exec")
        exec(code, self.ip.user_ns)

        broker = get_broker()
        options: dict[str, Any] = {
            name: getattr(args, name) for name in _ACTOR_OPTIONS if getattr(args, name) is not None
        }
        stored = args.store_results is not False and "store_results" in broker.actor_options
        if args.store_results and not stored:
            raise UsageError(
                "This broker has no Results middleware, so --store-results cannot work; add "
                "Results(backend=...) to it, or use %nbqueue connect redis://... instead."
            )
        if "store_results" in broker.actor_options:
            options["store_results"] = stored
        default_queue = NOTEBOOK_QUEUE if args.remote else "default"
        declaration = {
            "queue_name": args.queue or default_queue,
            "priority": args.priority or 0,
            **options,
        }
        if args.remote:
            declaration["_remote_source"] = source
        if rule is not None:
            declaration["periodic"] = rule
            if args.misfire_grace is not None:
                declaration["misfire_grace"] = args.misfire_grace
        registered = []
        for name in names:
            fn = self.ip.user_ns.get(name)
            if isinstance(fn, Actor) or not callable(fn):
                continue  # already an actor (@nbqueue.actor in the cell), or rebound
            actor_name = args.name or name
            if rule is None and actor_name in self.scheduled:
                # The cell no longer schedules its actor: its schedule ends with this run.
                self.scheduled.discard(actor_name)
                unschedule(broker, actor_name)
            self.ip.user_ns[name] = self._declare(fn, actor_name, declaration, broker)
            if rule is not None:
                self.scheduled.add(actor_name)
            registered.append(f"{actor_name}{_kind(fn)}")
        if not registered:
            print("The cell defines no new function, so no actor was registered.")
            return
        if broker is get_broker():
            self.embedded.on_send()  # start it now, so that the first %send is fast too
        results = "results stored" if stored else "results not stored"
        remote = ", published for --notebook-actors workers" if args.remote else ""
        if args.remote and isinstance(broker, StubBroker):
            remote += " in this kernel only: %nbqueue connect redis://... or amqp://... first"
        print(
            f"Actors {', '.join(registered)} on queue {declaration['queue_name']!r} "
            f"({type(broker).__name__}, {results}{remote})."
        )
        if rule is not None:
            where = "--notebook-actors workers" if args.remote else "the embedded worker"
            when = f"every {args.every}" if args.every is not None else f"cron {args.cron!r}"
            if args.tz:
                when += f" ({args.tz})"
            print(
                f"Schedule {registered[0].split(' ')[0]!r}: {when}, sent by {where}; next run "
                f"{_when(rule.after(now_ms()))} (%nbqueue schedules lists it)."
            )

    def _declare(
        self, fn: Any, actor_name: str, declaration: dict[str, Any], broker: Broker
    ) -> Actor[Any, Any]:
        options = dict(declaration)
        source = options.pop("_remote_source", None)
        try:
            if source is None:
                actor = declare(actor_name=actor_name, broker=broker, **options)(fn)
            else:
                # Skipped before the queue is declared, so a running embedded worker never
                # starts consuming it.
                self.embedded.skip_queues.add(options["queue_name"])
                actor = publish_actor(
                    fn,
                    source=source,
                    secret=secret_from_env(),
                    actor_name=actor_name,
                    broker=broker,
                    **options,
                )
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.declared[actor_name] = (fn, declaration)
        return actor

    # -- %send ---------------------------------------------------------------------------------

    @_no_var_expand
    @_args()
    @_arg("actor", metavar="ACTOR", help="the actor (a name from an %%%%actor cell)")
    @_arg(
        "args",
        nargs="*",
        default=[],
        metavar="ARGS",
        help="Python expressions, as in a call: 1, 'a b', x=2",
    )
    @_arg(
        "--delay",
        type=int,
        metavar="MS",
        help="run no sooner than this many milliseconds from now",
    )
    @_arg("--priority", type=int, metavar="N", help="larger runs first")
    @_arg("--queue", metavar="NAME", help="send to this queue instead of the actor's")
    @_line_magic("send")
    def send(self, line: str) -> Message[Any]:
        """Send a message to an actor and show its live job view; returns the message.

        Usage: ``%send add 1, y=2 --delay 1000``. The arguments are Python expressions
        evaluated in the notebook, as in a call; ``{x}`` and ``$x`` are not expanded. The
        embedded worker starts on first need. ``_`` (or ``m = %send ...``) holds the message:
        ``m.get_result(block=True)``, ``await m``, ``m.abort()``.
        """
        parser = _parser(NbqueueMagics.send)
        # Only a word like --name is an option. Any other word that starts with "-" (-1, -x)
        # is Python, passed with a space first, which argparse takes for a positional.
        argv = [
            word if not word.startswith("-") or re.match("--[A-Za-z]", word) else " " + word
            for word in _python_words(line.strip())
        ]
        try:
            opts = parser.parse_intermixed_args(argv)
        except UsageError as e:  # raised by IPython's parser for argparse's errors
            problem = str(e)
            raise UsageError(
                f"{problem[:1].upper()}{problem[1:]}; use {_usage(parser)}, {_SEND_EXAMPLE}."
            ) from None
        text = " ".join(word.strip() for word in [opts.actor, *opts.args])
        match = re.match(r"([A-Za-z_][\w.]*)(\(.*\))?\s*(.*)", text, re.S)
        if match is None:
            raise UsageError(
                f"{opts.actor.strip()!r} is not an actor's name; use {_usage(parser)}, "
                f"{_SEND_EXAMPLE}."
            )
        name, call, rest = match.groups()
        if call is not None:
            if rest:
                raise UsageError(
                    f"Unexpected text after {name}{call}; use {_usage(parser)}, {_SEND_EXAMPLE}."
                )
            rest = call[1:-1]
        actor = self._find_actor(name)
        args, kwargs = self._evaluate(rest)
        delay: int | None = opts.delay
        priority: int | None = opts.priority
        queue: str | None = opts.queue
        if delay is not None and delay < 0:
            raise UsageError(f"--delay must not be negative, got {delay}.")
        if queue is not None and not QUEUE_NAME_RE.fullmatch(queue):
            raise UsageError(
                f"Queue name {queue!r} is invalid; use letters, digits, '.', '_', '-'."
            )
        extra = {"priority": priority} if priority is not None else {}
        message = actor.message_with_options(args=args, kwargs=kwargs, **extra)
        broker = actor.broker
        if queue is not None:
            broker.declare_queue(queue)
            message = dataclasses.replace(message, queue_name=queue)
        if broker is get_broker():
            self.embedded.on_send()
        # The view's widgets are made before the message is sent: once it is, worker threads
        # compete with this cell for the GIL, and the cell must return at once.
        view = self._new_view(message, broker)
        sent: Message[Any] = broker.enqueue(message, delay=delay)
        view.message = sent
        self._prepared[sent.message_id] = view
        if self.embedded.autostart not in broker.middleware:
            self.history.add(sent, broker)  # else the middleware recorded it
        return sent

    def _find_actor(self, name: str) -> Actor[Any, Any]:
        try:
            found = eval(name, self.ip.user_ns)  # a dotted name, checked by the regex
        except Exception:
            found = None
        if isinstance(found, Actor):
            return found
        actor = get_broker().actors.get(name)
        if actor is not None:
            return actor
        raise UsageError(
            f"No actor named {name!r}; define it in an %%actor cell (or with @nbqueue.actor) first."
        )

    def _evaluate(self, text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        try:
            tree = parse_python(f"__nbqueue_call__({text})", mode="eval")
        except SyntaxError as e:
            raise UsageError(
                f"Cannot read the arguments {text!r} ({e.msg}); write them as in a Python call, "
                f"e.g. %send add 1, y=2."
            ) from None
        code = compile(tree, "<%send arguments>", "eval")

        def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return args, kwargs

        try:
            result: tuple[tuple[Any, ...], dict[str, Any]] = eval(
                code, self.ip.user_ns, {"__nbqueue_call__": capture}
            )
        except Exception as e:
            raise UsageError(
                f"Evaluating the arguments {text!r} raised {type(e).__name__}: {e}."
            ) from None
        return result

    def job_view(self, message: Message[Any]) -> JobView:
        """Return a live job view of ``message`` (the display of every ``Message``)."""
        view = self._prepared.pop(message.message_id, None)
        if view is not None:
            return view
        broker = next(
            (b for m, b in self.history.recent() if m.message_id == message.message_id), None
        )
        return self._new_view(message, broker)

    def batch_view(self, messages: Any) -> BatchView:
        """Return a live batch view of ``messages`` (the display of a ``MessageList`` and of a
        ``group``)."""
        broker = None
        if isinstance(messages, list) and messages:
            first = messages[0].message_id
            broker = next((b for m, b in self.history.recent() if m.message_id == first), None)
        view = BatchView(messages, broker=broker, idle=self.idle)
        self.views.append(view)
        del self.views[:-100]
        return view

    def _new_view(self, message: Message[Any], broker: Broker | None) -> JobView:
        view = JobView(message, broker=broker, before_send=self.embedded.on_send, idle=self.idle)
        self.views.append(view)
        del self.views[:-100]
        return view

    # -- %nbqueue ------------------------------------------------------------------------------

    @_line_magic("nbqueue")
    def nbqueue_magic(self, line: str) -> Any:
        """Connect to a broker, control the embedded worker, and show live views.

        Usage::

          %nbqueue connect URL [--namespace NS]   use redis://..., amqp://... or memory://
          %nbqueue status               the broker, the embedded worker and the actors
          %nbqueue worker start [--threads N] [--queues Q ...]
          %nbqueue worker stop          stop it (messages it holds go back to the broker)
          %nbqueue monitor              a live table of the queues
          %nbqueue results              a live table of the messages sent from here
          %nbqueue schedules            the schedules: rule, next run, last run and its status
          %nbqueue schedules pause NAME (or resume NAME, remove NAME) for the whole fleet
          %nbqueue jobs [--limit N]     this notebook's recent jobs, from the job history
          %nbqueue attach ID            the live view of a job from the history (by id or
                                        prefix), e.g. one a worker still runs after a restart
        """
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise UsageError(f"Cannot read {line!r}: {e}.") from None
        command, rest = (words[0], words[1:]) if words else ("status", [])
        if command == "connect":
            parser = _Parser(prog="%nbqueue connect", add_help=False)
            parser.add_argument("url")
            parser.add_argument("--namespace")
            opts = parser.parse_args(rest)
            return self._connect(opts.url, namespace=opts.namespace)
        if command == "status" and not rest:
            return self._status()
        if command == "worker" and rest[:1] == ["start"]:
            parser = _Parser(prog="%nbqueue worker start", add_help=False)
            parser.add_argument("--threads", type=int)
            parser.add_argument("--queues", nargs="+")
            opts = parser.parse_args(rest[1:])
            if opts.threads is not None and opts.threads < 1:
                raise UsageError(f"--threads must be at least 1, got {opts.threads}.")
            self.embedded.start(threads=opts.threads, queues=opts.queues)
            print(f"Embedded worker {self.embedded.status()}.")
            return None
        if command == "worker" and rest == ["stop"]:
            self.embedded.stop(auto=False)
            print(
                "Embedded worker stopped; %send no longer starts it (%nbqueue worker start does)."
            )
            return None
        if command == "jobs":
            parser = _Parser(prog="%nbqueue jobs", add_help=False)
            parser.add_argument("--limit", type=int, default=20)
            opts = parser.parse_args(rest)
            store = self.local.store if self.local is not None else None
            return recent_jobs(store, limit=max(1, opts.limit))
        if command == "attach":
            if len(rest) != 1:
                raise UsageError("Usage: %nbqueue attach ID (a job id or its first characters).")
            store = self.local.store if self.local is not None else None
            try:
                message = attach(rest[0], local=store)
            except NbqueueError as e:
                raise UsageError(str(e)) from None
            return message
        if command in ("monitor", "results") and not rest:
            embedded = self.embedded
            view: QueueMonitor | ResultsTable
            if command == "monitor":
                view = QueueMonitor(worker_status=embedded.status, rate=embedded.meter.rate)
            else:
                view = ResultsTable(self.history)
            self.views.append(view)  # closed by %unload_ext
            return view
        if command == "schedules":
            return self._schedules(rest)
        raise UsageError(
            f"Unknown %nbqueue command {line.strip()!r}; use connect URL, status, worker start, "
            f"worker stop, monitor, results, schedules, jobs or attach ID."
        )

    def _schedules(self, rest: list[str]) -> ScheduleTable | None:
        if not rest:
            return ScheduleTable(list_schedules())
        actions = {"pause": pause_schedule, "resume": resume_schedule, "remove": remove_schedule}
        if len(rest) != 2 or rest[0] not in actions:
            raise UsageError(
                f"Unknown %nbqueue schedules command {' '.join(rest)!r}; use %nbqueue schedules, "
                f"or %nbqueue schedules pause NAME (resume NAME, remove NAME)."
            )
        action, name = rest
        try:
            actions[action](name)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if action == "remove":
            self.scheduled.discard(name)
        done = {"pause": "paused", "resume": "resumed", "remove": "removed"}[action]
        shared = "" if isinstance(get_broker(), StubBroker) else " for every worker of the fleet"
        print(f"Schedule {name!r} {done}{shared}.")
        return None

    def _connect(self, url: str, *, namespace: str | None = None) -> None:
        was_running = self.embedded.running
        self.embedded.stop()
        broker = connect(url, **({"namespace": namespace} if namespace else {}))
        notes = (
            ""
            if find_results(broker)
            else f", results not stored: set {RESULTS_URL_ENV} to keep them"
        )
        self.embedded.attach(broker)
        for actor_name, (fn, declaration) in self.declared.items():
            options = dict(declaration)
            if "store_results" not in broker.actor_options:
                options.pop("store_results", None)
            actor = self._declare(fn, actor_name, options, broker)
            if self.ip.user_ns.get(fn.__name__) is not None:
                current = self.ip.user_ns[fn.__name__]
                if isinstance(current, Actor) and current.actor_name == actor_name:
                    self.ip.user_ns[fn.__name__] = actor
        if was_running:
            self.embedded.start()
        print(f"Connected to {redact_url(url)} ({type(broker).__name__}{notes}).")

    def _status(self) -> None:
        broker = get_broker()
        stats = broker.queue_stats()
        queues = ", ".join(
            f"{name} ({s.ready} ready, {s.delayed} delayed)" for name, s in sorted(stats.items())
        )
        actors = ", ".join(sorted(broker.actors)) or "none"
        print(f"Broker: {type(broker).__name__}")
        print(f"Embedded worker: {self.embedded.status()}")
        print(f"Actors: {actors}")
        print(f"Queues: {queues or 'none'}")
        retention = _retention_of(broker)
        if retention is not None:
            print(f"Results and live records: {retention.describe()}")
        recent = list(self.embedded.log.records)[-5:]
        if recent:
            print("Recent worker log:")
            for line in recent:
                print(f"  {line}")


class ScheduleTable:
    """What ``%nbqueue schedules`` shows: one row per schedule, as text and as an HTML table.

    Parameters:
      schedules: the rows (``nbqueue.list_schedules()``).
    """

    COLUMNS = ("name", "actor", "rule", "next run", "last run", "status")

    def __init__(self, schedules: list[ScheduleInfo]) -> None:
        self.schedules = schedules

    def rows(self) -> list[tuple[str, ...]]:
        """The cells of each row, as text."""
        rows: list[tuple[str, ...]] = []
        for info in self.schedules:
            where = " (remote)" if info.remote else ""
            status = info.last_status or ("-" if info.last_run is None else "unknown")
            rows.append(
                (
                    info.name,
                    f"{info.actor_name}{where}",
                    str(info.rule),
                    "paused" if info.paused else _when(info.next_run),
                    _when(info.last_run),
                    status,
                )
            )
        return rows

    def __repr__(self) -> str:
        if not self.schedules:
            return "No schedules; declare one with %%actor --every 10m (or --cron ...)."
        rows = [self.COLUMNS, *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.COLUMNS))]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )

    def _repr_html_(self) -> str:
        if not self.schedules:
            return f"<p>{html.escape(repr(self))}</p>"
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in self.rows()
        )
        return (
            f'<table class="nbqueue-schedules"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>"
        )


def _retention_of(broker: Broker) -> Retention | None:
    """The retention of the broker's in-memory results, if it has one (the embedded broker)."""
    for middleware in broker.middleware:
        retention = getattr(getattr(middleware, "backend", None), "retention", None)
        if isinstance(retention, Retention):
            return retention
    return None
