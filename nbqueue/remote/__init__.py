"""Notebook-defined actors that run on remote workers, and the unknown-actor rule.

Publishing (the notebook): ``%%actor --remote`` or ``nbqueue.publish_actor(fn)`` declares the
actor locally as usual and stores its source in the broker's shared store, as a JSON record with
the actor's name, queue and options, the function name, the source, the Python version and the
publish time, signed with HMAC-SHA256 under the shared secret ``NBQUEUE_SECRET``. Its content
hash names the version; every message the actor sends carries it (option ``nbqueue_code``).
Notebook actors go to the ``notebook`` queue unless told otherwise, and the kernel's embedded
worker does not consume the queues of ``--remote`` actors (``%nbqueue worker start --queues
notebook`` makes it), so they run on remote workers only.

Running (the worker): ``nbqueue worker --notebook-actors`` (with ``NBQUEUE_SECRET`` or
``--secret-file``) consumes the ``notebook`` queue and the queues of already published actors,
and for each message loads the exact version it names: fetch once, check the signature and the
hash *before* compiling anything, run the cell's code in a fresh module, cache by hash. A
refused version (unsigned, another secret, tampered) is logged with the actor and hash and the
message is dead-lettered with reason ``bad_signature``; nothing of it runs. Off by default: a
worker without ``--notebook-actors`` never loads code from the broker. No pickle anywhere.

The unknown-actor rule (every CLI worker): a worker never dead-letters a message that another
worker could run.

1. Each worker registers the actors it can run on the queues it consumes (notebook-actor workers
   register "any notebook actor" for their notebook queues), kept alive by a heartbeat (Redis,
   memory) or by the life of its connection (RabbitMQ).
2. A message whose actor a worker lacks is re-enqueued on its queue, with a growing delay (100 ms
   doubling up to 5 s), while another live worker can run it, or, when none can, until the
   message is 10 minutes old (``NBQUEUE_UNKNOWN_ACTOR_GRACE``, ms), so that a restarting worker
   still gets it.
3. Only then is it dead-lettered with reason ``unknown_actor``. A version missing from the store,
   a refused signature (``bad_signature``) or a cell that fails to load (``load_failed``) is
   dead-lettered at once: no other worker could run it either.

See ``signing``, ``store``, ``loader`` and ``registry`` for the details of each part.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .loader import CODE_OPTION, CodeLoader
from .publish import NOTEBOOK_QUEUE, SECRET_ENV, RemoteActor, publish_actor, secret_from_env
from .registry import UnknownActorRule
from .schedules import RemoteSchedules
from .signing import BadSignature
from .store import store_for

if TYPE_CHECKING:
    from ..broker import Broker

__all__ = [
    "CODE_OPTION",
    "NOTEBOOK_QUEUE",
    "SECRET_ENV",
    "BadSignature",
    "RemoteActor",
    "configure_worker",
    "publish_actor",
    "secret_from_env",
]


def configure_worker(
    broker: Broker,
    *,
    notebook_actors: bool,
    secret: bytes | None,
    queues: Sequence[str] | None,
    grace: int | None = None,
) -> list[str]:
    """Prepare ``broker`` for a worker process, before its ``Worker`` starts.

    Installs the unknown-actor rule (capability registration while the worker runs, and the
    handler that re-enqueues messages for capable workers). With ``notebook_actors`` it also
    installs the loader of published notebook actors and the schedules published with them
    (``nbqueue.remote.schedules``).

    Parameters:
      notebook_actors: load and run published notebook actors.
      secret: the shared secret (required with ``notebook_actors``).
      queues: the queues the worker consumes; ``None`` means all.
      grace: how long a message no live worker can run keeps being re-enqueued, in ms
        (default ``NBQUEUE_UNKNOWN_ACTOR_GRACE`` or 10 minutes).

    Returns:
      The extra queues the worker must consume: the notebook queue and the queues of already
      published actors, only those in ``queues`` when given (so ``--queues`` without
      ``notebook`` keeps the worker off that queue); empty without ``notebook_actors``.
      They are declared on ``broker`` too, so a worker consuming every queue picks them up.

    Raises:
      ValueError: ``notebook_actors`` without a secret.
    """
    if notebook_actors and not secret:
        raise ValueError(
            f"--notebook-actors needs the shared secret: set {SECRET_ENV} or pass "
            f"--secret-file, with the same value as the notebook's."
        )
    store = store_for(broker)
    extra: list[str] = []
    if notebook_actors:
        assert secret is not None
        wanted = set(queues) if queues is not None else None
        found = {NOTEBOOK_QUEUE} | {entry.queue_name for entry in store.published()}
        extra = sorted(q for q in found if wanted is None or q in wanted)
        loader = CodeLoader(broker, store, secret)
        broker.actor_resolvers.append(loader.resolve)
        for queue_name in extra:
            broker.declare_queue(queue_name)
        consumed = None if queues is None else [*queues, *extra]
        broker.add_middleware(RemoteSchedules(broker, store, loader, secret, queues=consumed))
    rule = UnknownActorRule(
        broker,
        store,
        uuid.uuid4().hex,
        queues=None if queues is None else [*queues, *extra],
        notebook_actors=notebook_actors,
        grace=grace,
    )
    broker.unknown_actor_handlers.append(rule.handle)
    broker.add_middleware(rule)
    return extra
