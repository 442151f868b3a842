"""Actors: functions that run in the background when you ``send()`` them."""

from __future__ import annotations

import datetime
import functools
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from .asyncio import async_to_sync
from .broker import Broker, get_broker
from .common import QUEUE_NAME_RE
from .context import stream
from .logging import get_logger
from .message import Message, MessageList
from .schedules import Rule, schedule

__all__ = ["Actor", "ActorDecorator", "actor"]

P = ParamSpec("P")
R = TypeVar("R")


class ActorDecorator(Protocol):
    """What ``actor(...)`` returns when called with options only: it turns a function into an
    ``Actor``. For type annotations, as Dramatiq's ``ActorDecorator``."""

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Actor[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Actor[P, R]: ...


def _delay_ms(delay: int | float | datetime.timedelta | None) -> int | None:
    if delay is None:
        return None
    if isinstance(delay, datetime.timedelta):
        delay = delay.total_seconds() * 1000
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise TypeError(f"delay must be milliseconds (an int) or a timedelta, got {delay!r}.")
    if delay < 0:
        raise ValueError(f"delay must not be negative, got {delay!r} ms.")
    return int(delay)


def _streaming(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn an async generator function into a coroutine function that streams each chunk with
    ``nbqueue.stream()`` and returns them all (see ``Actor``)."""

    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> Any:
        chunks = []
        generator: Any = fn(*args, **kwargs)
        try:
            async for chunk in generator:
                stream(chunk)
                chunks.append(chunk)
        finally:
            await generator.aclose()
        if chunks and all(isinstance(chunk, str) for chunk in chunks):
            return "".join(chunks)
        return chunks

    return run


def _name_callbacks(options: dict[str, Any]) -> dict[str, Any]:
    """Replace ``on_success``/``on_failure`` actors in ``options`` by their names, in place."""
    for name in ("on_success", "on_failure"):
        callback = options.get(name)
        if isinstance(callback, Actor):
            options[name] = callback.actor_name
        elif callback is not None and not isinstance(callback, str):
            raise TypeError(f"{name} must be an actor or an actor name, got {callback!r}.")
    return options


class Actor(Generic[P, R]):
    """A function that can be run in the background by a worker.

    Create actors with the ``@actor`` decorator. Calling an actor runs the function now, in the
    caller's thread; ``send()`` enqueues a message and returns at once.

    An async generator function is an actor that streams: each chunk it yields goes to the
    message's live channel (as with ``nbqueue.stream()``), and since async generators cannot
    return a value, its result is the concatenation of the chunks when they are all ``str``,
    and the list of chunks otherwise (``[]`` when it yields nothing).

    Parameters:
      fn: the function (sync, ``async def``, or an async generator function).
      broker: the broker the actor is declared on.
      actor_name: the name messages use to find the actor.
      queue_name: the queue its messages go to.
      priority: larger runs first (on every nbqueue broker; note that Dramatiq runs smaller first).
      options: middleware options such as ``max_retries`` or ``time_limit`` (milliseconds).
    """

    def __init__(
        self,
        fn: Callable[P, R] | Callable[P, Awaitable[R]],
        *,
        broker: Broker,
        actor_name: str,
        queue_name: str,
        priority: int,
        options: dict[str, Any],
    ) -> None:
        if not QUEUE_NAME_RE.fullmatch(queue_name):
            raise ValueError(
                f"Queue name {queue_name!r} is invalid; use letters, digits, '.', '_' and '-', "
                f"starting with a letter or '_'."
            )
        # Named after the function's module, as Dramatiq names actor loggers: ``tasks.add``.
        self.logger = get_logger(getattr(fn, "__module__", None) or "_", actor_name)
        self.original_fn = fn
        target: Any = _streaming(fn) if inspect.isasyncgenfunction(fn) else fn
        self.is_async = inspect.iscoroutinefunction(target)
        self.fn: Callable[P, R] = async_to_sync(target) if self.is_async else target
        self.broker = broker
        self.actor_name = actor_name
        self.queue_name = queue_name
        self.priority = priority
        self.options = options
        self.broker.declare_actor(self)

    def message(self, *args: P.args, **kwargs: P.kwargs) -> Message[R]:
        """Build a message for this actor without sending it (for pipelines and groups)."""
        return self.message_with_options(args=args, kwargs=kwargs)

    def message_with_options(
        self,
        *,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Message[R]:
        """Build a message with options, without sending it.

        ``on_success`` and ``on_failure`` may be actors; they are stored by name.
        """
        _name_callbacks(options)
        return Message(
            queue_name=self.queue_name,
            actor_name=self.actor_name,
            args=tuple(args),
            kwargs=kwargs or {},
            options=options,
        )

    def send(self, *args: P.args, **kwargs: P.kwargs) -> Message[R]:
        """Send a message to run this actor with these arguments; returns at once.

        Raises:
          EncodeError: an argument cannot be sent as JSON (the error names it).
        """
        return self.send_with_options(args=args, kwargs=kwargs)

    def send_with_options(
        self,
        *,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        delay: int | float | datetime.timedelta | None = None,
        **options: Any,
    ) -> Message[R]:
        """Send a message with options; returns at once.

        Parameters:
          delay: run no sooner than this many milliseconds from now (or a timedelta).
          options: per-message options, e.g. ``priority=100`` (larger runs first),
            ``max_retries=0``, ``on_success=other_actor``.

        Returns:
          The enqueued message; ``message.get_result()`` reads its result.
        """
        message = self.message_with_options(args=args, kwargs=kwargs, **options)
        return self.broker.enqueue(message, delay=_delay_ms(delay))

    def send_many(
        self,
        arguments: Iterable[Any],
        *,
        delay: int | float | datetime.timedelta | None = None,
        **options: Any,
    ) -> MessageList[R]:
        """Send one message per item, in one batch where the broker can (parameter sweeps).

        Each item is a tuple of positional arguments, a dict of keyword arguments, or any other
        value as the single positional argument: ``square.send_many(range(100))``,
        ``train.send_many({"lr": lr} for lr in rates)``. Wrap a dict meant as one positional
        argument in a tuple: ``({"a": 1},)``.

        Parameters:
          delay: applies to every message, in milliseconds (or a timedelta).
          options: per-message options applied to every message, e.g. ``priority=``.

        Returns:
          The enqueued messages, in order, as a list (``MessageList``, which a notebook shows
          as one live view); follow them with ``nbqueue.as_completed()`` or ``nbqueue.wait()``.

        Raises:
          EncodeError: an argument cannot be sent as JSON; no message of the batch is sent.
        """
        messages = []
        # A broker whose enqueue_many encodes and checks the whole batch before any I/O says so
        # with ``validates_batches = True``: encoding here too would double the cost of a batch.
        validate = not self.broker.validates_batches
        options = _name_callbacks(dict(options))
        queue_name, actor_name = self.queue_name, self.actor_name
        # Subclasses that build messages their own way (remote actors) keep doing so.
        build = None
        if type(self).message_with_options is not Actor.message_with_options:
            build = self.message_with_options
        for item in arguments:
            if isinstance(item, tuple):
                args, kwargs = item, None
            elif isinstance(item, dict):
                args, kwargs = (), item
            else:
                args, kwargs = (item,), None
            if build is None:
                message: Message[R] = Message(
                    queue_name=queue_name,
                    actor_name=actor_name,
                    args=args,
                    kwargs=kwargs or {},
                    options=dict(options),
                )
            else:
                message = build(args=args, kwargs=kwargs, **options)
            if validate:
                message.encode()  # fail before anything of the batch is sent
            messages.append(message)
        return MessageList(self.broker.enqueue_many(messages, delay=_delay_ms(delay)))

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function now, in this thread, with no middleware (useful in tests)."""
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.logger.debug("Completed in %.02fms.", (time.perf_counter() - start) * 1000)

    def __repr__(self) -> str:
        return (
            f"Actor({self.original_fn!r}, queue_name={self.queue_name!r}, "
            f"actor_name={self.actor_name!r})"
        )

    def __str__(self) -> str:
        return f"Actor({self.actor_name})"


@overload
def actor(fn: Callable[P, Awaitable[R]], /) -> Actor[P, R]: ...


@overload
def actor(fn: Callable[P, R], /) -> Actor[P, R]: ...


@overload
def actor(
    fn: None = None,
    /,
    *,
    actor_class: Callable[..., Actor[Any, Any]] = ...,
    actor_name: str | None = ...,
    queue_name: str = ...,
    priority: int = ...,
    broker: Broker | None = ...,
    **options: Any,
) -> ActorDecorator: ...


def actor(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    actor_class: Callable[..., Actor[Any, Any]] = Actor,
    actor_name: str | None = None,
    queue_name: str = "default",
    priority: int = 0,
    broker: Broker | None = None,
    **options: Any,
) -> Any:
    """Declare an actor; use as ``@actor`` or ``@actor(queue_name=..., max_retries=...)``.

    Parameters:
      actor_name: defaults to the function's name.
      queue_name: the queue its messages go to (default ``"default"``).
      priority: larger runs first.
      broker: defaults to ``get_broker()`` (in-memory unless configured).
      options: middleware options; times are in milliseconds. Two more are the scheduler's:
        ``periodic=nbqueue.every(ms)`` or ``periodic=nbqueue.cron("0 9 * * 1-5", tz=...)``
        sends the actor a message with no arguments at every tick (a schedule named after the
        actor, see ``nbqueue.schedule``), and ``misfire_grace`` (ms) lets a missed tick that
        old run once.

    Raises:
      ValueError: an option no middleware on the broker knows, or an invalid queue name.
    """
    periodic = options.pop("periodic", None)
    misfire_grace = options.pop("misfire_grace", None)
    if periodic is not None and not isinstance(periodic, Rule):
        raise TypeError(
            f"periodic= takes a rule, got {periodic!r}; pass nbqueue.every(ms) or "
            f"nbqueue.cron('*/5 * * * *')."
        )
    if misfire_grace is not None and periodic is None:
        raise ValueError(
            "misfire_grace only applies to a periodic actor; add periodic=nbqueue.every(ms) "
            "or periodic=nbqueue.cron('...')."
        )

    def decorator(fn: Callable[..., Any]) -> Actor[Any, Any]:
        target = broker or get_broker()
        invalid = set(options) - target.actor_options
        if invalid:
            names = ", ".join(sorted(invalid))
            raise ValueError(
                f"The following actor options are undefined: {names}. "
                f"Did you forget to add a middleware to your Broker?"
            )
        declared = actor_class(
            fn,
            actor_name=actor_name or fn.__name__,
            queue_name=queue_name,
            priority=priority,
            broker=target,
            options=options,
        )
        if periodic is not None:
            schedule(declared, periodic, misfire_grace=misfire_grace or 0)
        return declared

    if fn is None:
        return decorator
    return decorator(fn)
