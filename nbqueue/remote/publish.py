"""The notebook side of notebook actors: publish a function's source, signed, and send with it.

``publish_actor(fn)`` declares ``fn`` as an actor here, as ``@nbqueue.actor`` does (calling it
still runs it locally), and stores its signed source in the broker's store. The returned
``RemoteActor`` stamps every message it builds with the content hash of that version
(``nbqueue_code``), so a worker runs exactly the version a message was sent with, even after a
newer one is published.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import os
import textwrap
from typing import Any, TypeVar

from ..actor import Actor
from ..actor import actor as declare
from ..broker import Broker, get_broker
from ..common import current_millis, parse_python
from ..schedules import Rule, schedules_of, unschedule
from .loader import CODE_OPTION
from .signing import CodeRecord, python_version, seal, verify
from .store import Published, store_for

__all__ = [
    "NOTEBOOK_QUEUE",
    "SECRET_ENV",
    "RemoteActor",
    "publish_actor",
    "secret_from_env",
    "unpublish_schedule",
]

#: The environment variable holding the shared secret (text, UTF-8 encoded to bytes).
SECRET_ENV = "NBQUEUE_SECRET"

#: The default queue of notebook actors, so workers without them never fetch their messages.
NOTEBOOK_QUEUE = "notebook"

_F = TypeVar("_F")


class RemoteActor(Actor[Any, Any]):
    """An actor whose messages name the published version of its code (``code_hash``)."""

    def __init__(self, fn: Any, *, code_hash: str, **kwargs: Any) -> None:
        self.code_hash = code_hash
        super().__init__(fn, **kwargs)

    def message_with_options(
        self, *, args: Any = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        options.setdefault(CODE_OPTION, self.code_hash)
        return super().message_with_options(args=args, kwargs=kwargs, **options)

    def __repr__(self) -> str:
        return (
            f"RemoteActor({self.original_fn!r}, queue_name={self.queue_name!r}, "
            f"actor_name={self.actor_name!r}, code={self.code_hash[:12]})"
        )


def secret_from_env() -> bytes | None:
    """The shared secret from ``NBQUEUE_SECRET``, or ``None`` when it is unset or empty."""
    value = os.environ.get(SECRET_ENV, "")
    return value.encode("utf-8") if value else None


def publish_actor(
    fn: Any,
    *,
    source: str | None = None,
    secret: bytes | str | None = None,
    actor_name: str | None = None,
    queue_name: str = NOTEBOOK_QUEUE,
    priority: int = 0,
    broker: Broker | None = None,
    **options: Any,
) -> RemoteActor:
    """Declare ``fn`` as an actor and publish its source so that workers started with
    ``--notebook-actors`` (and the same secret) can run it.

    Usage: ``square = nbqueue.publish_actor(square)``, then ``square.send(3)``.

    Parameters:
      source: the code to ship; it must define ``fn`` at top level and may import modules and
        define helpers. Defaults to ``fn``'s own source, which only works when ``fn`` needs
        nothing else from the notebook. All of it runs on each worker once per version.
      secret: the shared secret; defaults to ``NBQUEUE_SECRET``.
      queue_name: defaults to ``"notebook"``, a queue only notebook-actor workers consume.
      options: actor options such as ``max_retries`` or ``store_results``; ``periodic=`` (and
        ``misfire_grace=``) publish the actor's schedule with it, so that every worker
        started with ``--notebook-actors`` takes part in it, still after the notebook closed.
        Publishing the actor again without ``periodic=`` ends that schedule on those workers.

    Returns:
      The actor; its messages carry the published version's hash.

    Raises:
      ValueError: no secret, a source that does not define the function, or an unknown option.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if key is None:
        key = secret_from_env()
    if not key:
        raise ValueError(
            f"Publishing a notebook actor needs the shared secret: set {SECRET_ENV} (the same "
            f"value as the workers') or pass secret=."
        )
    original = getattr(fn, "original_fn", fn)
    function = original.__name__
    if source is None:
        try:
            source = textwrap.dedent(inspect.getsource(original))
        except (OSError, TypeError):
            raise ValueError(
                f"Cannot read the source of {function!r}; pass source= with the code that "
                f"defines it."
            ) from None
    _check_defines(source, function)
    target = broker or get_broker()
    periodic = options.pop("periodic", None)
    misfire_grace = options.pop("misfire_grace", None)
    schedule: dict[str, Any] | None = None
    if periodic is not None:
        if not isinstance(periodic, Rule):
            raise ValueError(
                f"periodic= takes a rule, got {periodic!r}; pass nbqueue.every(ms) or "
                f"nbqueue.cron('*/5 * * * *')."
            )
        schedule = {
            "name": actor_name or function,
            "rule": periodic.spec(),
            "misfire_grace": int(misfire_grace or 0),
        }
        options_schedule: dict[str, Any] = {"periodic": periodic}
        if misfire_grace is not None:
            options_schedule["misfire_grace"] = misfire_grace
    else:
        options_schedule = {} if misfire_grace is None else {"misfire_grace": misfire_grace}
    record = CodeRecord(
        actor_name=actor_name or function,
        queue_name=queue_name,
        priority=priority,
        options=options,
        function=function,
        source=source,
        python=python_version(),
        published_at=current_millis(),
        schedule=schedule,
    )
    code_hash = record.code_hash  # raises on options JSON cannot carry
    remote = declare(
        actor_class=functools.partial(RemoteActor, code_hash=code_hash),
        actor_name=record.actor_name,
        queue_name=queue_name,
        priority=priority,
        broker=target,
        **options,
        **options_schedule,
    )(original)
    if periodic is None:
        if any(s.name == record.actor_name for s in schedules_of(target)):
            unschedule(target, record.actor_name)  # the cell's schedule ends with this version
    store_for(target).put(
        seal(record, key),
        Published(queue_name, record.actor_name, code_hash, record.published_at),
    )
    assert isinstance(remote, RemoteActor)
    return remote


def _check_defines(source: str, function: str) -> None:
    try:
        tree = parse_python(source)
    except SyntaxError as e:
        raise ValueError(
            f"The source to publish is not valid Python ({e.msg}, line {e.lineno})."
        ) from None
    defined = {
        node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    if function not in defined:
        raise ValueError(
            f"The source to publish does not define {function!r} at top level; pass source= "
            f"with the code that defines it."
        )


def unpublish_schedule(actor: RemoteActor, *, secret: bytes | str | None = None) -> None:
    """Publish ``actor`` again without its schedule, so that the ``--notebook-actors`` workers
    drop it; its messages name the new version from now on.

    Raises:
      ValueError: no secret, or the store no longer has the actor's version.
      BadSignature: the stored version is not signed with this secret.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    key = key or secret_from_env()
    if not key:
        raise ValueError(
            f"Removing a published schedule republishes its actor and needs the shared "
            f"secret: set {SECRET_ENV} or pass secret=."
        )
    store = store_for(actor.broker)
    envelope = store.get(actor.code_hash)
    if envelope is None:
        raise ValueError(
            f"The version of {actor.actor_name!r} is gone from the broker's store; re-run its "
            f"%%actor --remote cell without --every."
        )
    record = verify(envelope, key, actor.code_hash)
    if record.schedule is None:
        return
    bare = dataclasses.replace(record, schedule=None, published_at=current_millis())
    code_hash = bare.code_hash
    store.put(
        seal(bare, key), Published(bare.queue_name, bare.actor_name, code_hash, bare.published_at)
    )
    actor.code_hash = code_hash
