"""The worker side of notebook actors: fetch, verify, compile and cache published versions.

``CodeLoader.resolve`` is a broker actor resolver: for a message whose options name a version
(``nbqueue_code``) it returns the actor compiled from exactly that version, fetching it from the
store the first time. Versions are cached by hash, so a newer publish never changes which code a
message sent with an older hash runs, and each worker fetches each version once. Middleware
find a message's actor through ``broker.actor_for(message)``, so a message of an older version
runs with that version's options (``max_retries``, ``time_limit``...) as well as its code. The
newest loaded version is also entered in ``broker.actors`` under the actor's name (unless a
module declared that name), for whatever looks actors up by name alone.

Order of checks, before anything is compiled: the envelope's HMAC-SHA256 signature with the
shared secret, then the content hash against the one the message names. A refusal is logged
(actor name and hash, never the secret) and raised as ``BadSignature``, so the worker
dead-letters the message with reason ``bad_signature``. Refusals are remembered for
``REFUSAL_TTL`` seconds so a flood of bad messages costs one fetch.

A record published from another Python minor version is loaded with a warning (the source is
shipped, not bytecode, so it usually runs; the warning names both versions).

The source runs in a fresh module (``nbqueue_remote_<actor>_<hash>``, registered in
``sys.modules`` so dataclasses and tracebacks work): the whole cell runs, not only the function,
like ipyparallel's ``%%px`` and Dask's functions shipped by value. Its imports, helpers and other
top-level statements run once per version on each worker. A cell that raises while loading
(say, an import the worker lacks) dead-letters the message with reason ``load_failed``.
"""

from __future__ import annotations

import builtins
import linecache
import logging
import re
import sys
import threading
import time
import types
from typing import TYPE_CHECKING, Any

from ..actor import Actor
from ..errors import ActorNotFound, BadSignature, CodeLoadFailed, CodeNotFound
from .signing import CodeRecord, python_version, verify

if TYPE_CHECKING:
    from ..broker import Broker, MessageProxy
    from ..message import Message
    from .store import CodeStore

__all__ = ["CODE_OPTION", "CodeLoadFailed", "CodeLoader", "CodeNotFound", "LoadedActor"]

#: The message option that names the version of a notebook actor a message runs.
CODE_OPTION = "nbqueue_code"

#: How long a refused version is remembered, in seconds.
REFUSAL_TTL = 10.0

_HASH_RE = re.compile(r"[0-9a-f]{64}")

logger = logging.getLogger("nbqueue.remote")


class _Detached:
    """Stands in for the broker while a loaded actor is built: declaring would run the broker's
    declaration hooks and warn that each version replaces the last (see ``CodeLoader._load``)."""

    def declare_actor(self, actor: Actor[Any, Any]) -> None:
        pass


class LoadedActor(Actor[Any, Any]):
    """An actor compiled from a published, verified version.

    Messages it builds (a callback or a pipeline step sent to it from this worker) name its
    version, as the notebook's ``RemoteActor`` does.
    """

    def __init__(self, fn: Any, *, broker: Broker, record: CodeRecord, code_hash: str) -> None:
        super().__init__(
            fn,
            broker=_Detached(),  # type: ignore[arg-type]
            actor_name=record.actor_name,
            queue_name=record.queue_name,
            priority=record.priority,
            options=dict(record.options),
        )
        self.broker = broker
        self.code_hash = code_hash
        self.record = record

    def message_with_options(
        self, *, args: Any = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        options.setdefault(CODE_OPTION, self.code_hash)
        return super().message_with_options(args=args, kwargs=kwargs, **options)


class CodeLoader:
    """Resolves messages of notebook actors to the exact version they were sent with.

    Parameters:
      broker: the worker's broker.
      store: where published versions are read from.
      secret: the shared secret the envelopes must be signed with.
    """

    def __init__(self, broker: Broker, store: CodeStore, secret: bytes) -> None:
        self.broker = broker
        self.store = store
        self._secret = secret
        self._actors: dict[str, LoadedActor] = {}
        self._refused: dict[str, tuple[float, ActorNotFound]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CodeLoader({len(self._actors)} versions loaded)"

    def resolve(self, message: Message[Any] | MessageProxy) -> Actor[Any, Any] | None:
        """The actor resolver: the loaded version a message names, or ``None`` for messages
        that name none (module actors, found by name as usual).

        Raises:
          BadSignature: the version is unsigned, signed with another secret, or tampered with.
          CodeNotFound: the store has no such version.
          CodeLoadFailed: the version's source raised while it ran.
        """
        code_hash = message.options.get(CODE_OPTION)
        if code_hash is None:
            return None
        if not isinstance(code_hash, str) or not _HASH_RE.fullmatch(code_hash):
            raise BadSignature(
                f"Message {message.message_id} names no valid code version "
                f"({CODE_OPTION}={str(code_hash)[:80]!r}); send it again from the notebook.",
                actor_name=message.actor_name,
            )
        return self.load(code_hash, message.actor_name)

    def load(self, code_hash: str, actor_name: str) -> LoadedActor:
        """Return the actor of the version ``code_hash``, fetched, verified and compiled the
        first time (what a published schedule needs before its first message).

        Raises:
          BadSignature, CodeNotFound, CodeLoadFailed: as for ``resolve``.
        """
        actor = self._actors.get(code_hash)
        if actor is not None:
            return actor
        with self._lock:
            lock = self._locks.setdefault(code_hash, threading.Lock())
        with lock:  # one fetch per version, however many threads want it
            actor = self._actors.get(code_hash)
            if actor is None:
                actor = self._load(code_hash, actor_name)
        return actor

    def _load(self, code_hash: str, actor_name: str) -> LoadedActor:
        refused = self._refused.get(code_hash)
        if refused is not None and refused[0] > time.monotonic():
            raise refused[1]
        try:
            envelope = self.store.get(code_hash)
            if envelope is None:
                raise CodeNotFound(
                    f"Notebook actor {actor_name!r} version {code_hash[:12]} is not in the "
                    f"broker's store; publish it again (re-run its %%actor --remote cell) and "
                    f"resend."
                )
            try:
                record = verify(envelope, self._secret, code_hash)
            except BadSignature as e:
                logger.error(
                    "Refused notebook actor %r version %s: bad signature, nothing run (%s).",
                    e.actor_name or actor_name,
                    code_hash[:12],
                    e,
                )
                raise
            if record.actor_name != actor_name:
                raise BadSignature(
                    f"Version {code_hash[:12]} belongs to actor {record.actor_name!r}, not to "
                    f"{actor_name!r}; the message was altered, nothing was run.",
                    code_hash=code_hash,
                    actor_name=actor_name,
                )
            actor = self._compile(record, code_hash)
        except (BadSignature, CodeNotFound, CodeLoadFailed) as e:
            self._refused[code_hash] = (time.monotonic() + REFUSAL_TTL, e)
            raise
        self._actors[code_hash] = actor
        self._refused.pop(code_hash, None)
        with self._lock:
            # Lookups by name alone (not through broker.actor_for) see the newest version loaded
            # here. An actor a module declared keeps its name.
            current = self.broker.actors.get(record.actor_name)
            if current is None or (
                isinstance(current, LoadedActor)
                and current.record.published_at <= record.published_at
            ):
                self.broker.actors[record.actor_name] = actor
        logger.info(
            "Loaded notebook actor %r version %s (queue %r).",
            record.actor_name,
            code_hash[:12],
            record.queue_name,
        )
        return actor

    def _compile(self, record: CodeRecord, code_hash: str) -> LoadedActor:
        if record.python != python_version():
            logger.warning(
                "Notebook actor %r version %s was published from Python %s and runs on %s; "
                "if it fails, run the worker on the notebook's Python version.",
                record.actor_name,
                code_hash[:12],
                record.python,
                python_version(),
            )
        name = f"nbqueue_remote_{record.actor_name}_{code_hash[:12]}"
        filename = f"<nbqueue actor {record.actor_name} {code_hash[:12]}>"
        module = types.ModuleType(name)
        module.__dict__["__builtins__"] = builtins
        module.__file__ = filename
        linecache.cache[filename] = (
            len(record.source),
            None,
            record.source.splitlines(True),
            filename,
        )
        sys.modules[name] = module
        try:
            exec(compile(record.source, filename, "exec"), module.__dict__)
            fn = module.__dict__.get(record.function)
            if not callable(fn):
                raise LookupError(f"the source defines no function {record.function!r}")
            fn = getattr(fn, "original_fn", fn)  # an @nbqueue.actor in the cell
            return LoadedActor(fn, broker=self.broker, record=record, code_hash=code_hash)
        except Exception as e:
            sys.modules.pop(name, None)
            logger.error(
                "Notebook actor %r version %s failed to load.",
                record.actor_name,
                code_hash[:12],
                exc_info=True,
            )
            raise CodeLoadFailed(
                f"Notebook actor {record.actor_name!r} version {code_hash[:12]} failed to load "
                f"on this worker ({type(e).__name__}: {e}); install what the cell imports on "
                f"the worker, or fix the cell and republish."
            ) from e
