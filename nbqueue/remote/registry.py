"""The unknown-actor rule: a worker that lacks an actor hands its message on to capable workers.

Each worker registers, in the broker's store, the (queue, actor) pairs it can run: its declared
actors on the queues it consumes, plus ``(queue, "*")`` for each queue whose published notebook
actors it loads. Registrations live while the worker runs: on Redis they expire ``ttl`` ms after
the last heartbeat (every ``ttl / 3``), on RabbitMQ they are consumers that die with their
connection, in memory they expire like on Redis. The heartbeat is the worker's own
(``after_worker_heartbeat``) when it beats at least that often (its ``heartbeat_ttl`` is at most
``ttl``, as by default); otherwise the rule beats on a thread of its own.

When a worker fetches a message it has no actor for, ``UnknownActorRule.handle`` decides:

1. a refusal (``bad_signature``, ``load_failed``) or a version missing from the store is never
   handed on: it is dead-lettered at once (no worker could do better);
2. if another live worker registered the actor (or ``"*"`` for a notebook-actor message) on the
   message's queue, the message is re-enqueued on the same queue after a backoff delay
   (``min_backoff * 2**hops``, at most ``max_backoff``; the hop count travels in the
   ``nbqueue_hops`` option), keeping its id and timestamp, so its result and live status are
   where the sender looks;
3. otherwise, while the message is younger than ``grace`` (10 minutes by default, counted from
   its timestamp), it is re-enqueued the same way, so a capable worker that is restarting still
   gets it;
4. otherwise it is dead-lettered with reason ``unknown_actor``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..common import current_millis, getenv_int
from ..errors import ActorNotFound
from ..middleware.base import Middleware
from .loader import CODE_OPTION, CodeNotFound
from .store import ANY_ACTOR, CodeStore

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy

__all__ = ["HOPS_OPTION", "UnknownActorRule"]

#: The message option counting how many times a message was handed on.
HOPS_OPTION = "nbqueue_hops"

logger = logging.getLogger("nbqueue.remote")


class UnknownActorRule(Middleware):
    """Registers what this worker can run and hands on messages it cannot (module docstring).

    Parameters:
      broker: the worker's broker.
      store: where capabilities are registered.
      worker_id: this worker's id in the registry.
      queues: the queues the worker consumes; ``None`` means every declared queue.
      notebook_actors: whether this worker loads published notebook actors (on every queue it
        consumes).
      ttl: how long a registration lives without a heartbeat, in milliseconds.
      grace: how long a message nobody can run keeps being handed on, in milliseconds
        (``NBQUEUE_UNKNOWN_ACTOR_GRACE``).
      min_backoff, max_backoff: the re-enqueue delay bounds, in milliseconds.
    """

    def __init__(
        self,
        broker: Broker,
        store: CodeStore,
        worker_id: str,
        *,
        queues: Sequence[str] | None,
        notebook_actors: bool = False,
        ttl: int = 30000,
        grace: int | None = None,
        min_backoff: int = 100,
        max_backoff: int = 5000,
    ) -> None:
        self.broker = broker
        self.store = store
        self.worker_id = worker_id
        self.queues = set(queues) if queues is not None else None
        self.notebook_actors = notebook_actors
        self.ttl = ttl
        self.grace = (
            grace if grace is not None else getenv_int("NBQUEUE_UNKNOWN_ACTOR_GRACE", 600000)
        )
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_beats = False  # refreshed on the worker's heartbeats instead of a thread
        self._workers = 0
        self._lock = threading.Lock()

    def capabilities(self) -> set[tuple[str, str]]:
        """The (queue, actor) pairs this worker can run now."""
        found = {
            (actor.queue_name, name)
            for name, actor in self.broker.actors.items()
            if self.queues is None or actor.queue_name in self.queues
        }
        if self.notebook_actors:
            consumed = self.queues if self.queues is not None else self.broker.get_declared_queues()
            found |= {(queue, ANY_ACTOR) for queue in consumed}
        return found

    def register(self) -> None:
        """Register (or refresh) this worker's capabilities now."""
        self.store.register(self.worker_id, self.capabilities(), self.ttl)

    # -- the heartbeat, tied to the worker's life ------------------------------------------------

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        with self._lock:
            self._workers += 1
            if self._thread is not None or self._on_beats:
                return
            self._stop.clear()
            try:
                self.register()
            except Exception:
                logger.warning("Could not register this worker's actors yet.", exc_info=True)
            if worker.heartbeat_ttl <= self.ttl:
                self._on_beats = True
                return
            self._thread = threading.Thread(
                target=self._beat, name="nbqueue-remote-heartbeat", daemon=True
            )
            self._thread.start()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        with self._lock:
            self._workers -= 1
            if self._workers > 0 or (self._thread is None and not self._on_beats):
                return
            thread, self._thread = self._thread, None
            self._on_beats = False
            self._stop.set()
        if thread is not None:
            thread.join(5)
        try:
            self.store.unregister(self.worker_id)
        except Exception:
            logger.warning("Could not unregister this worker's actors.", exc_info=True)

    def after_worker_heartbeat(self, broker: Broker, worker: Any) -> None:
        if not self._on_beats:
            return
        try:
            self.register()
        except Exception:
            logger.warning("Could not refresh this worker's actors.", exc_info=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3000):
            try:
                self.register()
            except Exception:
                logger.warning("Could not refresh this worker's actors.", exc_info=True)

    # -- the rule --------------------------------------------------------------------------------

    def handle(self, message: MessageProxy, error: ActorNotFound) -> bool:
        """The unknown-actor handler: ``True`` when the message was re-enqueued (module
        docstring), ``False`` to let the worker dead-letter it."""
        reason = getattr(error, "reason", None) or "unknown_actor"
        if reason != "unknown_actor" or isinstance(error, CodeNotFound):
            return False
        queue_name = message.queue_name
        actor_name = message.actor_name
        actors = [actor_name, ANY_ACTOR] if CODE_OPTION in message.options else [actor_name]
        capable = self.store.capable(queue_name, actors, exclude=self.worker_id)
        age = current_millis() - int(message.message_timestamp)
        if not capable and age >= self.grace:
            logger.error(
                "No live worker can run actor %r on queue %r and message %s is %d s old; it "
                "is dead-lettered (start a worker that imports or loads the actor, then "
                "requeue it).",
                actor_name,
                queue_name,
                message.message_id,
                age // 1000,
            )
            return False
        hops = message.options.get(HOPS_OPTION, 0)
        hops = hops if isinstance(hops, int) and not isinstance(hops, bool) and hops >= 0 else 0
        delay = min(self.max_backoff, self.min_backoff * 2 ** min(hops, 30))
        copy = message.message.copy(options={HOPS_OPTION: hops + 1})
        self.broker.enqueue(copy, delay=delay)
        logger.info(
            "Handed message %s of actor %r back to queue %r in %d ms (%s).",
            message.message_id,
            actor_name,
            queue_name,
            delay,
            f"{capable} capable workers" if capable else "no capable worker yet, in grace",
        )
        return True
