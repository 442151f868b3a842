"""Everything of nbqueue that talks to memcached, in one package (needs ``nbqueue[memcached]``).

* ``client``: the pylibmc client pool with deadlines, its errors, and TTLs in memcached's unit;
* ``results``: the ``MemcachedBackend`` of results;
* ``rate_limits``: the ``MemcachedBackend`` of rate limiters and barriers.

memcached keeps no queues, so there is no broker here: these backends serve any broker. Public
classes are imported from Dramatiq's paths (``nbqueue.results.backends.memcached``,
``nbqueue.rate_limits.backends.memcached``), whose modules re-export them from here. Nothing
here imports another server's package, ``nbqueue.remote``, the face or the apps.
"""

from __future__ import annotations

try:
    import pylibmc  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised with pylibmc hidden
    raise ImportError(
        "nbqueue's memcached support needs the pylibmc package: pip install 'nbqueue[memcached]'."
    ) from e
