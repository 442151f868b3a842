"""Everything of nbqueue that talks to RabbitMQ, in one package (needs ``nbqueue[rabbitmq]``).

* ``broker``: the ``RabbitmqBroker``; ``wire``: connection parameters, URL settings, headers,
  dead letters; ``layout``: the arguments of classic and quorum queues;
* ``io``: the I/O thread that owns a pika connection; ``publisher``: confirmed publishing on it;
* ``consumer``: the consumer, with its leases on held deliveries;
* ``code_store``: published notebook actors, kept in queues;
* ``blocking``: Dramatiq's per-thread ``broker.connection`` and ``broker.channel``, for callers.

``RabbitmqBroker`` is imported from Dramatiq's path, ``nbqueue.brokers.rabbitmq``, which
re-exports it from here. Nothing here imports ``nbqueue._redis``, ``nbqueue.remote``, the face
or the apps.
"""

from __future__ import annotations

try:
    import pika  # type: ignore[import-untyped] # noqa: F401
except ImportError as e:  # pragma: no cover - exercised with pika hidden
    raise ImportError(
        "nbqueue's RabbitMQ support needs the pika package: pip install 'nbqueue[rabbitmq]'."
    ) from e
