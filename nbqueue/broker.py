"""The broker contract: what every broker (in-memory, Redis, RabbitMQ) provides."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .common import current_millis, dq_name, q_name
from .errors import ActorNotFound
from .logging import get_logger
from .message import Message, check_message_size
from .middleware import default_middleware
from .middleware.base import Middleware, MiddlewareError
from .results import Results
from .services import Services

if TYPE_CHECKING:
    from .actor import Actor
    from .results import ResultBackend

__all__ = [
    "Broker",
    "Consumer",
    "DeadLetter",
    "MessageProxy",
    "PreparedMessage",
    "QueueStats",
    "get_broker",
    "set_broker",
]

#: The global broker; ``None`` until ``get_broker()`` or ``set_broker()`` sets it.
global_broker: Broker | None = None
_global_broker_lock = threading.Lock()

#: Makes the broker ``get_broker()`` returns when none was set. ``nbqueue/__init__.py`` installs
#: ``nbqueue.connection.default_broker`` here: the face knows the servers, the core does not.
default_broker_factory: Callable[[], Broker] | None = None


def get_broker() -> Broker:
    """Return the global broker, creating it on first use.

    With nothing configured this is an in-memory broker: nbqueue never connects to a network
    service unless asked to. ``NBQUEUE_BROKER_URL`` (``memory://``, ``redis://...``,
    ``amqp://...``) or ``nbqueue.connect(url)`` selects a real one.
    """
    global global_broker
    if global_broker is None:
        with _global_broker_lock:
            if global_broker is None:
                if default_broker_factory is None:
                    raise RuntimeError(
                        "No broker is set and none can be made before nbqueue is imported; "
                        "import nbqueue first, or call set_broker(broker)."
                    )
                global_broker = default_broker_factory()
    return global_broker


def set_broker(broker: Broker) -> None:
    """Make ``broker`` the global broker, used by actors declared without ``broker=``."""
    global global_broker
    global_broker = broker


@dataclasses.dataclass(frozen=True)
class QueueStats:
    """How many messages a queue holds, for monitors and widgets.

    ``in_flight`` counts messages fetched by workers and not yet acknowledged; a broker that cannot
    tell reports ``None``.
    """

    ready: int
    delayed: int
    in_flight: int | None
    dead: int


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message, with why it was dead-lettered.

    ``message`` is ``None`` when the body could not be decoded; ``data`` always holds the body.
    """

    queue_name: str
    data: bytes
    reason: str
    message: Message[Any] | None = None
    error: str | None = None


#: What ``Broker.prepare_enqueue`` returns, in this order: the message as enqueued (the one the
#: hooks saw and ``enqueue`` returns), the message encoded (within the broker's
#: ``max_message_size``), and the queue to put it on (its canonical queue, or that queue's ``.DQ``
#: when delayed). A plain tuple: building a NamedTuple costs about 3 % of a stub ``send()``.
PreparedMessage = tuple["Message[Any]", bytes, str]


class MessageProxy:
    """A message as a worker sees it: the message plus whether processing failed.

    Attribute access falls through to the message, so middleware read ``proxy.options`` and
    ``proxy.message_id`` as on a plain message.
    """

    def __init__(self, message: Message[Any]) -> None:
        # The message's fields are copied in (a message is frozen, and ``options`` is the same
        # dict), so that middleware reading ``proxy.options`` skip ``__getattr__``: a dozen such
        # reads per message were a tenth of the cost of running a no-op actor.
        fields = getattr(message, "__dict__", None)
        if fields is not None:
            self.__dict__.update(fields)
        self.failed = False
        self.dead_reason: str | None = None
        self._message = message
        self._exception: BaseException | None = None

    def fail(self, reason: str | None = None) -> None:
        """Mark the message as failed, so it is dead-lettered rather than acknowledged.

        Parameters:
          reason: why, recorded with the dead letter (nbqueue addition; default ``"failed"``).
        """
        self.failed = True
        if reason is not None or self.dead_reason is None:
            self.dead_reason = reason or "failed"

    @property
    def exception(self) -> BaseException | None:
        """The exception the actor raised, or ``None`` (read-only: see ``stuff_exception``)."""
        return self._exception

    def stuff_exception(self, exception: BaseException) -> None:
        """Remember the exception the actor raised; ``exception`` returns it."""
        self._exception = exception

    def clear_exception(self) -> None:
        """Forget the stored exception, breaking the reference cycle through its traceback."""
        self._exception = None

    @property
    def message(self) -> Message[Any]:
        """The wrapped message."""
        return self._message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def __str__(self) -> str:
        return str(self._message)

    def __repr__(self) -> str:
        return f"MessageProxy({self._message!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MessageProxy):
            return self._message == other._message
        return self._message == other

    def __hash__(self) -> int:
        return hash(self._message.message_id)

    def __lt__(self, other: MessageProxy) -> bool:
        warnings.warn(
            "Comparing MessageProxy objects is deprecated and will be removed in nbqueue 1.0.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self._message < other._message


class Consumer(abc.ABC):
    """Iterates over one queue's messages. Not thread-safe, except ``ack``/``nack``.

    ``__next__`` blocks up to the consumer's timeout and returns ``None`` when nothing arrived, so
    the caller can check for shutdown.
    """

    def __iter__(self) -> Iterator[MessageProxy | None]:
        return self

    @abc.abstractmethod
    def __next__(self) -> MessageProxy | None:
        """Return the next message, or ``None`` when the timeout passed with nothing to return."""

    @abc.abstractmethod
    def ack(self, message: MessageProxy) -> None:
        """Acknowledge a message: it was processed and is removed from the broker."""

    @abc.abstractmethod
    def nack(self, message: MessageProxy) -> None:
        """Reject a message: it is moved to the dead-letter queue with its reason."""

    def requeue(self, messages: Iterable[MessageProxy]) -> None:  # noqa: B027 - optional
        """Give fetched but unprocessed messages back to the queue (at worker shutdown)."""

    def interrupt(self) -> None:  # noqa: B027 - optional
        """Make a ``next()`` blocked in another thread return ``None`` soon (worker shutdown).

        Called from a thread other than the consumer's. Without it, ``next()`` returns when its
        timeout passes, which only delays shutdown.
        """

    def close(self) -> None:  # noqa: B027 - optional
        """Release the consumer's resources; unacknowledged messages go back to the queue."""


class Broker(Services, abc.ABC):
    """Base class for brokers.

    What the broker's server offers besides queues (a live transport, a code store) is asked
    through the ``Services`` methods, which answer ``None`` unless the broker overrides them.

    Parameters:
      middleware: the middleware to use; ``None`` means one of each class in
        ``nbqueue.middleware.default_middleware``.
    """

    #: The largest encoded message, in bytes, that ``prepare_enqueue`` lets through; ``None``
    #: is no limit (as in Dramatiq). nbqueue's brokers set it from ``max_message_size=``.
    max_message_size: int | None = None

    #: Whether ``enqueue_many`` encodes and size-checks the whole batch before any I/O, so that
    #: one bad message enqueues none. ``Actor.send_many`` encodes each message once more to
    #: check the batch itself when a broker does not say so.
    validates_batches: bool = False

    def __init__(self, middleware: list[Middleware] | None = None) -> None:
        self.logger = get_logger(__name__, type(self))
        self.actors: dict[str, Actor[Any, Any]] = {}
        self.queues: dict[str, Any] = {}
        self.delay_queues: set[str] = set()
        self.actor_options: set[str] = set()
        #: Callables that may supply the actor for a message before the lookup by name (for
        #: example the exact version of a notebook actor the message was sent with). Each takes
        #: the message and returns an actor or ``None``; one may raise ``ActorNotFound`` (or a
        #: subclass carrying a dead-letter ``reason``) to refuse the message.
        self.actor_resolvers: list[
            Callable[[Message[Any] | MessageProxy], Actor[Any, Any] | None]
        ] = []
        #: Callables asked, in order, what to do with a message whose actor no resolver or
        #: declaration supplies. One that returns ``True`` has handed the message on (for example
        #: re-enqueued it for a capable worker); the worker then settles the original without
        #: emitting ack hooks. When none does, the message is dead-lettered.
        self.unknown_actor_handlers: list[Callable[[MessageProxy, ActorNotFound], bool]] = []
        self.middleware: list[Middleware] = []
        self._hooks: dict[str, list[Any]] = {}
        self._hooks_list: list[Middleware] | None = None
        self._hooks_len = 0
        if middleware is None:
            middleware = [m() for m in default_middleware]
        for m in middleware:
            self.add_middleware(m)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Call ``before_<signal>`` on every middleware, in order.

        A ``MiddlewareError`` (such as ``SkipMessage``) propagates; other errors are logged.
        """
        for hook in self._hooks_for("before_" + signal):
            try:
                hook(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical("Unexpected failure in %r.", hook, exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Call ``after_<signal>`` on every middleware, in reverse order; errors are logged."""
        for hook in self._hooks_for("after_" + signal):
            try:
                hook(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in %r.", hook, exc_info=True)

    def _hooks_for(self, name: str) -> list[Any]:
        # Calling every middleware's no-op for every signal is the largest cost of a send; keep,
        # per hook name, only the middleware that override it (after_* hooks in reverse order).
        # Code that edits broker.middleware in place (not through add/remove_middleware) is
        # caught by the list's identity and length.
        middleware = self.middleware
        if middleware is not self._hooks_list or len(middleware) != self._hooks_len:
            self._hooks.clear()
            self._hooks_list, self._hooks_len = middleware, len(middleware)
        hooks = self._hooks.get(name)
        if hooks is None:
            ordered = reversed(self.middleware) if name.startswith("after_") else self.middleware
            base = getattr(Middleware, name, None)
            hooks = [
                getattr(m, name)
                for m in ordered
                if base is None or getattr(type(m), name, None) is not base
            ]
            self._hooks[name] = hooks
        return hooks

    def remove_middleware(self, middleware: Middleware) -> None:
        """Remove a middleware instance from this broker (a stopped worker removes its own)."""
        self.middleware = [m for m in self.middleware if m is not middleware]
        self._hooks.clear()

    def add_middleware(
        self,
        middleware: Middleware,
        *,
        before: type[Middleware] | None = None,
        after: type[Middleware] | None = None,
    ) -> None:
        """Add a middleware instance, at the end or just before/after the first of a class.

        Raises:
          TypeError: ``middleware`` is a class rather than an instance.
          ValueError: both ``before`` and ``after`` were given, or the class named is not present.
        """
        if isinstance(middleware, type):
            raise TypeError(
                f"add_middleware() takes a middleware instance, got the class {middleware.__name__}; "
                f"write {middleware.__name__}() instead."
            )
        if before and after:
            raise ValueError("add_middleware() takes before= or after=, not both.")
        if any(isinstance(m, type(middleware)) for m in self.middleware):
            self.logger.warning(
                "A second %s middleware was added to %r; both instances will run (remove one "
                "unless that is what you want).",
                type(middleware).__name__,
                self,
            )
        if before or after:
            anchor = before or after
            for i, m in enumerate(self.middleware):
                if isinstance(m, anchor):  # type: ignore[arg-type]
                    self.middleware.insert(i if before else i + 1, middleware)
                    break
            else:
                raise ValueError(f"Middleware {anchor.__name__} not found on this broker.")  # type: ignore[union-attr]
        else:
            self.middleware.append(middleware)
        self._hooks.clear()
        self.actor_options |= middleware.actor_options
        for actor in self.actors.values():
            middleware.after_declare_actor(self, actor)
        for queue_name in self.get_declared_queues():
            middleware.after_declare_queue(self, queue_name)
        for queue_name in self.get_declared_delay_queues():
            middleware.after_declare_delay_queue(self, queue_name)

    def close(self) -> None:  # noqa: B027 - optional
        """Close the broker's connections. The in-memory broker has none."""

    def check_server(self) -> None:  # noqa: B027 - optional
        """Check that the broker's server is reachable and usable, so that a wrong address or
        password fails now (the CLI calls this at boot) rather than in a consumer thread.

        Brokers with no server (the in-memory broker) have nothing to check.

        Raises:
          BrokerError: the server cannot be used (the broker's own errors say why).
        """

    def declare_actor(self, actor: Actor[Any, Any]) -> None:
        """Declare an actor and its queue on this broker.

        Declaring an actor under a name that is already taken replaces the old actor: this is
        what re-running a notebook cell does (Dramatiq raises ``ValueError`` instead).
        """
        self.emit_before("declare_actor", actor)
        self.declare_queue(actor.queue_name)
        previous = self.actors.get(actor.actor_name)
        if previous is not None and previous is not actor:
            old_fn, new_fn = getattr(previous, "fn", None), getattr(actor, "fn", None)
            old_module = getattr(old_fn, "__module__", None)
            new_module = getattr(new_fn, "__module__", None)
            if old_module != new_module:
                self.logger.warning(
                    "Actor %r from %s replaces the one from %s; give one of them actor_name= "
                    "if both are needed.",
                    actor.actor_name,
                    new_module,
                    old_module,
                )
        self.actors[actor.actor_name] = actor
        self.emit_after("declare_actor", actor)

    def get_actor(self, actor_name: str) -> Actor[Any, Any]:
        """Return the actor named ``actor_name``.

        Raises:
          ActorNotFound: no such actor is declared on this broker.
        """
        try:
            return self.actors[actor_name]
        except KeyError:
            raise ActorNotFound(
                f"Actor {actor_name!r} is not declared on this broker; import the module that "
                f"defines it (or run its cell) before sending or consuming it."
            ) from None

    def actor_for(self, message: Message[Any] | MessageProxy) -> Actor[Any, Any]:
        """Return the actor that runs ``message``: the first answer of ``actor_resolvers``, else
        the actor declared under the message's actor name.

        Raises:
          ActorNotFound: no resolver and no declaration supplies the actor.
        """
        for resolve in self.actor_resolvers:
            actor = resolve(message)
            if actor is not None:
                return actor
        return self.get_actor(message.actor_name)

    def get_declared_actors(self) -> set[str]:
        """Return the names of the declared actors."""
        return set(self.actors)

    def get_declared_queues(self) -> set[str]:
        """Return the names of the declared queues (not their delay queues)."""
        return set(self.queues)

    def get_declared_delay_queues(self) -> set[str]:
        """Return the names of the declared delay queues."""
        return set(self.delay_queues)

    def get_results_backend(self) -> ResultBackend:
        """Return the backend of this broker's first Results middleware.

        Raises:
          RuntimeError: the broker has no Results middleware.
        """
        for middleware in self.middleware:
            if isinstance(middleware, Results):
                return middleware.backend
        raise RuntimeError(
            "This broker has no Results middleware; add one with "
            "broker.add_middleware(Results(backend=...)) to store and read results."
        )

    def message_priority(self, message: Message[Any]) -> int:
        """Return a message's priority: larger runs first.

        The message's ``priority`` option wins, then Dramatiq's ``broker_priority`` option, then
        the priority of its actor when declared here, then 0.
        """
        options = message.options
        priority = options.get("priority")
        if priority is None:
            priority = options.get("broker_priority")
        if priority is None:
            actor = self.actors.get(message.actor_name)
            priority = actor.priority if actor is not None else 0
        try:
            return int(priority)
        except (TypeError, ValueError):
            return 0

    def prepare_enqueue(
        self,
        message: Message[Any],
        delay: int | None = None,
        *,
        options: dict[str, Any] | None = None,
        hooks: bool = True,
    ) -> PreparedMessage:
        """Prepare a message for enqueueing: every step before a broker's I/O, in order.

        The queue is the message's canonical queue, or that queue's delay queue (``<queue>.DQ``)
        when a ``delay`` is given, 0 included: the message is then a copy on the delay queue
        with an ``eta`` option ``delay`` milliseconds from now (whole milliseconds, whatever
        ``delay`` is). Without a delay the message keeps its queue name. Then the
        ``before_enqueue`` hooks run (they may change the message's options), and the message
        is encoded and checked against ``max_message_size``. Brokers call this once per
        message, in ``enqueue`` and ``enqueue_many``, and emit ``after_enqueue`` themselves once
        the I/O is done.

        Parameters:
          delay: in milliseconds; ``None`` enqueues the message to run now.
          options: options of the broker's own, merged into a copy of the message (Redis stores
            a fresh ``redis_message_id`` this way).
          hooks: whether to call the ``before_enqueue`` hooks; a broker enqueueing a batch
            passes False when it found that no middleware has one.

        Returns:
          The message as enqueued, its encoded body and the name of the queue to put it on.

        Raises:
          EncodeError: the message cannot be encoded (the error names the argument).
          MessageTooLarge: the encoded message is above ``max_message_size``.
        """
        queue_name = q_name(message.queue_name)
        if delay is not None:
            queue_name = dq_name(queue_name)
            merged = {**message.options, **(options or {})}
            merged["eta"] = current_millis() + int(delay)
            message = _with_options(message, merged, queue_name)
        elif options is not None:
            message = _with_options(message, {**message.options, **options}, None)
        if hooks:
            self.emit_before("enqueue", message, delay)
        data = message.encode()
        check_message_size(message, data, self.max_message_size)
        return message, data, queue_name

    def enqueue_many(
        self, messages: Iterable[Message[Any]], *, delay: int | None = None
    ) -> list[Message[Any]]:
        """Enqueue several messages; brokers that can batch the round trips do.

        Returns:
          The enqueued messages, as ``enqueue`` returns them.
        """
        return [self.enqueue(message, delay=delay) for message in messages]

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[None]:
        """Within the block, sends from this thread may return before the server confirmed them;
        leaving the block waits for every confirm and raises as the sends would have.

        For a burst of ``send()`` calls from one thread to a broker that confirms each send (a
        ``RabbitmqBroker`` with ``confirm_delivery``): the messages are published back to back
        and their confirms arrive together, instead of one round trip each. A send whose
        confirm fails is named in the error raised when the block ends (its ``messages``).
        On brokers whose sends are complete when they return (memory, Redis) the block runs as
        it is.

        Example::

            with broker.pipelined():
                for kind in kinds:
                    build_report.send(kind)
        """
        yield

    @abc.abstractmethod
    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Consumer:
        """Return a consumer of ``queue_name``.

        Parameters:
          prefetch: how many messages may be fetched and not yet acknowledged.
          timeout: how long ``next()`` blocks, in milliseconds, before returning ``None``.
        """

    @abc.abstractmethod
    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue (and its delay queue)."""

    @abc.abstractmethod
    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Enqueue a message, after ``delay`` milliseconds when given.

        Returns:
          The message as enqueued (a copy, e.g. with ``eta`` and a ``.DQ`` queue name).
        """

    @abc.abstractmethod
    def flush(self, queue_name: str) -> None:
        """Drop every message in a queue, its delay queue and its dead letters."""

    @abc.abstractmethod
    def flush_all(self) -> None:
        """Drop every message in every declared queue."""

    @abc.abstractmethod
    def join(self, queue_name: str, *, timeout: int | None = None) -> None:
        """Wait until a queue and its delay queue hold no unprocessed message.

        Parameters:
          timeout: in milliseconds; ``None`` waits forever.

        Raises:
          QueueJoinTimeout: the queue did not drain in time.
        """

    @abc.abstractmethod
    def queue_stats(self) -> dict[str, QueueStats]:
        """Return ready, delayed, in-flight and dead counts for each declared queue."""

    @abc.abstractmethod
    def get_dead_letters(self, queue_name: str, *, limit: int | None = None) -> list[DeadLetter]:
        """Return the dead letters of a queue, oldest first, each with its reason.

        Parameters:
          limit: return at most this many (``None``: the broker's default, every letter on
            the in-memory and Redis brokers).
        """

    def requeue_dead_letter(self, queue_name: str, message_id: str) -> Message[Any] | None:
        """Move a dead letter back to its queue, to run again (its options unchanged).

        Returns:
          The message as enqueued, or ``None`` when the queue has no dead letter of that id
          (of two callers moving the same letter, one gets it).

        Raises:
          NotImplementedError: this broker cannot take one letter out of its dead letters.
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot requeue one dead letter; read them with "
            f"get_dead_letters({queue_name!r}) and send the message again."
        )


def _with_options(
    message: Message[Any], options: dict[str, Any], queue_name: str | None
) -> Message[Any]:
    """Return a copy of ``message`` with new options (and queue name): ``Message.copy`` without
    the cost of ``dataclasses.replace``, which matters when enqueueing in bulk."""
    fields = getattr(message, "__dict__", None)
    if fields is None or type(message) is not Message:
        changes: dict[str, Any] = {"options": options}
        if queue_name is not None:
            changes["queue_name"] = queue_name
        return dataclasses.replace(message, **changes)
    copy: Message[Any] = object.__new__(Message)
    copy.__dict__.update(fields)
    copy.__dict__["options"] = options
    if queue_name is not None:
        copy.__dict__["queue_name"] = queue_name
    return copy
