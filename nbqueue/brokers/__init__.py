"""Brokers. Import the one you need from its module, as in Dramatiq::

from nbqueue.brokers.stub import StubBroker
from nbqueue.brokers.redis import RedisBroker        # pip install 'nbqueue[redis]'
from nbqueue.brokers.rabbitmq import RabbitmqBroker  # pip install 'nbqueue[rabbitmq]'
"""
