"""The example application's actors. Start a worker for them with ``nbqueue tasks``."""

from __future__ import annotations

import asyncio
import os
import random

import config  # noqa: F401 - sets the broker before the actors are declared

import nbqueue
from nbqueue.middleware import CurrentMessage

#: Set APP_SEED to make process_order's failures repeatable (tests do): with a seed, whether an
#: attempt fails depends only on the seed, the order and the attempt number.
SEED = os.environ.get("APP_SEED")


class PaymentGatewayError(Exception):
    """The (simulated) payment gateway did not answer; the order is retried."""


@nbqueue.actor(queue_name="emails", priority=5)
def send_email(recipient: str, subject: str, body: str) -> None:
    print(f"Sending email to {recipient}: {subject}", flush=True)


@nbqueue.actor(queue_name="orders", priority=10, max_retries=5)
def process_order(order_id: int) -> None:
    message = CurrentMessage.get_current_message()
    attempt = message.options.get("retries", 0) if message is not None else 0
    chance = random.Random(f"{SEED}:{order_id}:{attempt}") if SEED else random
    if chance.random() < 0.1:  # fails 10% of the time; Retries sends it again
        print(f"Order {order_id} failed on attempt {attempt + 1}; it will be retried", flush=True)
        raise PaymentGatewayError(f"the payment gateway timed out for order {order_id}")
    print(f"Processed order {order_id} on attempt {attempt + 1}", flush=True)


@nbqueue.actor(time_limit=600000)
async def generate_report(report_type: str, date_range: str) -> None:
    await asyncio.sleep(0.1)  # stands in for the queries
    print(f"Generated the {report_type} report for {date_range}", flush=True)
