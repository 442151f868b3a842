"""Everything of nbqueue that talks to Redis, in one package (needs ``nbqueue[redis]``).

* ``client``: the connection with deadlines, its errors, and the Lua scripts of ``lua/``;
* ``keys``: every key name (Dramatiq's layout, and nbqueue's own under ``<ns>:__nbq__:``);
* ``broker``, ``consumer``, ``service`` (fetching, heartbeats, recovery) and ``acks``: the
  ``RedisBroker``;
* ``group``: the group commit that lets worker threads share round trips;
* ``results``: the ``RedisBackend`` of results; ``live``: the live channel's transport;
* ``code_store``: published notebook actors; ``rate_limits``: the rate limiters' backend;
* ``counters``: ``CrashLimit``'s start counters.

Public classes are imported from Dramatiq's paths (``nbqueue.brokers.redis``,
``nbqueue.results.backends.redis``, ``nbqueue.rate_limits.backends.redis``), whose modules
re-export them from here. Nothing here imports ``nbqueue._rabbitmq``, ``nbqueue.remote``, the
face or the apps.
"""

from __future__ import annotations

try:
    import redis  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised with redis hidden
    raise ImportError(
        "nbqueue's Redis support needs the redis package: pip install 'nbqueue[redis]'."
    ) from e
