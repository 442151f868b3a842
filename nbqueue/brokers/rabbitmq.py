"""Dramatiq's import path of the RabbitMQ broker; it lives in ``nbqueue._rabbitmq.broker``."""

from __future__ import annotations

from .._rabbitmq.broker import RabbitmqBroker

__all__ = ["RabbitmqBroker"]
