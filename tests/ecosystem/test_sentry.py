"""sentry-sdk's ``DramatiqIntegration`` (``sentry_sdk.integrations.dramatiq``) on nbqueue.

The integration imports ``dramatiq`` and patches ``dramatiq.broker.Broker.__init__`` to put its
middleware first; after ``install_as_dramatiq()`` that is nbqueue's ``Broker``. Events go to a
transport that keeps them in a list: nothing leaves the machine.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.ecosystem._run import run_python

pytest.importorskip("sentry_sdk")

SCRIPT = """
import json
from typing import Any
import sys

import nbqueue
if sys.argv[1:] != ["--without-alias"]:
    nbqueue.install_as_dramatiq()

import sentry_sdk
from sentry_sdk.integrations.dramatiq import DramatiqIntegration
from sentry_sdk.transport import Transport

events = []


class ListTransport(Transport):
    def capture_envelope(self, envelope):
        events.extend(item.payload.json for item in envelope.items if item.type == "event")


sentry_sdk.init(
    dsn="https://public@sentry.invalid/1",
    transport=ListTransport,
    integrations=[DramatiqIntegration()],
    default_integrations=False,
    auto_enabling_integrations=False,
)

from nbqueue.brokers.stub import StubBroker

broker = StubBroker()
nbqueue.set_broker(broker)


class PaymentDeclined(Exception):
    pass


@nbqueue.actor(max_retries=0)
def charge(amount):
    raise PaymentDeclined(f"declined: {amount}")


@nbqueue.actor
def fine():
    return None


failing = charge.send(42)
fine.send()
worker = nbqueue.Worker(broker, worker_timeout=100)
worker.start()
broker.join(charge.queue_name, fail_fast=False)
worker.join()
worker.stop()
sentry_sdk.flush()
print(json.dumps({"message_id": failing.message_id, "events": events}, default=str))
"""


def _run(*args: str) -> dict[str, Any]:
    result = run_python(f"import sys; sys.argv[1:] = {list(args)!r}\n" + SCRIPT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_an_actors_exception_is_reported_with_the_message_id_and_actor():
    out = _run()
    events = out["events"]
    assert len(events) == 1  # the failing message only; `fine` succeeded
    event = events[0]
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "PaymentDeclined"
    assert exception["value"] == "declined: 42"
    assert exception["mechanism"] == {"type": "dramatiq", "handled": False}
    assert event["extra"]["dramatiq_message_id"] == out["message_id"]
    assert event["transaction"] == "charge"
    message = event["contexts"]["dramatiq"]["data"]
    assert message["actor_name"] == "charge"
    assert message["message_id"] == out["message_id"]
    assert message["args"] == [42]


def test_without_the_alias_sentry_sees_no_nbqueue_broker():
    """The control: the integration then patches the real Dramatiq's Broker, not nbqueue's."""
    assert _run("--without-alias")["events"] == []
