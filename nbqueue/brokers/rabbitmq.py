"""Dramatiq's import path of the RabbitMQ broker; it lives in ``nbqueue._rabbitmq.broker``."""

from __future__ import annotations

from .._rabbitmq.broker import DEAD_MESSAGE_TTL, RabbitmqBroker

__all__ = ["DEAD_MESSAGE_TTL", "RabbitmqBroker"]
