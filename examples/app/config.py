"""The example application's broker: RabbitMQ by default, or whatever NBQUEUE_BROKER_URL names
(``redis://...`` or ``amqp://...``), so the same application runs on either."""

from __future__ import annotations

import os

import nbqueue
from nbqueue.middleware import AgeLimit, AsyncIO, Callbacks, CurrentMessage, Retries, TimeLimit

URL = os.environ.get("NBQUEUE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

middleware = [
    AgeLimit(),
    TimeLimit(),
    Callbacks(),
    Retries(max_retries=3),
    AsyncIO(),  # async def actors
    CurrentMessage(),  # process_order reads its attempt number
]

broker: nbqueue.Broker
if URL.startswith(("redis://", "rediss://", "unix://")):
    from nbqueue.brokers.redis import RedisBroker

    broker = RedisBroker(url=URL, middleware=middleware)
else:
    from nbqueue.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=URL, middleware=middleware)
nbqueue.set_broker(broker)
