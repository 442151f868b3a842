"""Results: the middleware that stores what actors return, or how they failed."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..errors import ActorNotFound, EncodeError
from ..logging import get_logger
from ..middleware.base import Middleware
from .backend import ResultBackend
from .errors import ResultError

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy
    from ..message import Message

__all__ = ["DEFAULT_RESULT_TTL", "Results"]

#: How long results are kept when no ``result_ttl`` is given, in milliseconds (10 minutes).
DEFAULT_RESULT_TTL = 600000

#: Stands for "this option is not set" where ``None`` and ``False`` are meaningful values.
_UNSET: Any = object()


class Results(Middleware):
    """Store actor results in a result backend, so callers can ``get_result()``.

    Options are read from the message, then the actor, then this middleware: the first one that
    has the option wins, even when its value is false. A failure is stored only once the message
    is given up on (retries exhausted, ``throws``, age limit...), so a result may arrive only
    after all retries ran.

    Example::

        broker.add_middleware(Results(backend=StubBackend()))

        @actor(store_results=True)
        def add(x, y):
            return x + y

        add.send(1, 2).get_result(block=True)  # 3

    Parameters:
      backend: where results are stored.
      store_results: whether actors store results unless they say otherwise.
      result_ttl: how long results are kept, in milliseconds (default 10 minutes).

    Raises:
      ResultError: no backend was given.
    """

    def __init__(
        self,
        *,
        backend: ResultBackend | None = None,
        store_results: bool = False,
        result_ttl: int | None = None,
    ) -> None:
        if backend is None:
            raise ResultError(
                "Results needs a result backend; pass one, e.g. "
                "Results(backend=StubBackend()) from nbqueue.results.backends."
            )
        self.logger = get_logger(__name__, type(self))
        self.backend = backend
        self.store_results = store_results
        self.result_ttl = result_ttl or DEFAULT_RESULT_TTL
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Results(backend={self.backend!r}, store_results={self.store_results!r})"

    @property
    def actor_options(self) -> set[str]:
        """``store_results`` and ``result_ttl`` (milliseconds)."""
        return {"store_results", "result_ttl"}

    def stores(self, broker: Broker, message: Message[Any] | MessageProxy) -> bool:
        """Whether a result (or failure) of ``message`` is stored: its ``store_results``
        option, then its actor's, then this middleware's."""
        return self._lookup_options(broker, message)[0]

    def _lookup_options(
        self, broker: Broker, message: Message[Any] | MessageProxy
    ) -> tuple[bool, int]:
        options = message.options
        try:
            actor_options = broker.actor_for(message).options
        except ActorNotFound:
            # Nothing is known about the actor here: the message's own options, then this
            # middleware's defaults, decide (so a caller waiting on the result learns why).
            store = bool(options.get("store_results", self.store_results))
            return store, options.get("result_ttl") or self.result_ttl
        store = options.get("store_results", _UNSET)
        if store is _UNSET:
            store = actor_options.get("store_results", self.store_results)
        ttl = options.get("result_ttl", _UNSET)
        if ttl is _UNSET:
            ttl = actor_options.get("result_ttl", self.result_ttl)
        return bool(store), ttl or self.result_ttl

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Store the result of a successful message; warn when a result is thrown away.

        A message that a middleware failed without raising stores nothing here: ``after_nack``
        stores its failure.
        """
        store, ttl = self._lookup_options(broker, message)
        if store and exception is None and not message.failed:
            try:
                self.backend.store_result(message, result, ttl)
            except EncodeError as e:
                # The backend stored a failure in place of the result, so waiters wake up.
                self.logger.error("%s", e)
        elif not store and result is not None and message.options.get("pipe_target") is None:
            self._warn_discarded(message.actor_name)

    def _warn_discarded(self, actor_name: str) -> None:
        with self._warned_lock:
            if actor_name in self._warned:
                return
            self._warned.add(actor_name)
        self.logger.warning(
            "Actor %r returned a value that was discarded because it does not store results; "
            "declare it with store_results=True to keep its results (this is logged once per "
            "actor).",
            actor_name,
        )

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """Store ``None`` for a skipped message, unless it failed (then ``after_nack`` stores
        the failure)."""
        store, ttl = self._lookup_options(broker, message)
        if store and not message.failed:
            self.backend.store_result(message, None, ttl)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        """Store the failure of a message that was given up on.

        This includes messages for an actor the worker does not know (dead reason
        ``unknown_actor``) when their own options, or this middleware's default, ask for
        results: Dramatiq stores nothing then, and callers wait until they time out.
        """
        if not message.failed:
            return
        store, ttl = self._lookup_options(broker, message)
        if not store:
            return
        exception = message.exception
        if exception is None:
            reason = message.dead_reason or "failed"
            exception = Exception(f"The message was dead-lettered ({reason}).")
        self.backend.store_exception(message, exception, ttl)
