"""Every example in the project brief that needs only the in-memory broker, run as written
(after replacing RabbitmqBroker/RedisBroker/RedisBackend by their in-memory counterparts)."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

import nbqueue
from nbqueue.brokers.stub import StubBroker
from nbqueue.results import Results
from nbqueue.results.backends import StubBackend


def test_actor_call_runs_now_and_send_runs_on_a_worker(stub_broker, stub_worker, capsys):
    @nbqueue.actor
    def send_email(recipient, subject, body):
        print(f"Sending email to {recipient}")

    send_email("user@example.com", "Hi", "Hello")
    assert capsys.readouterr().out == "Sending email to user@example.com\n"
    message = send_email.send("user@example.com", "Hi", "Hello")
    assert message.actor_name == "send_email"
    stub_broker.join("default", timeout=10000)
    stub_worker.join()


def test_actor_options_and_send_with_options(stub_broker, stub_worker):
    ran = []

    @nbqueue.actor(
        max_retries=3, min_backoff=1000, priority=10, time_limit=300000, queue_name="high_priority"
    )
    def process_video(video_id):
        ran.append(video_id)

    @nbqueue.actor
    def process_order(order_id):
        ran.append(order_id)

    @nbqueue.actor
    def urgent_task():
        ran.append("urgent")

    process_video.send(1)
    delayed = process_order.send_with_options(args=(12345,), delay=50)
    urgent_task.send_with_options(priority=100)
    assert delayed.options["eta"] - delayed.message_timestamp >= 50
    for queue in ("high_priority", "default"):
        stub_broker.join(queue, timeout=10000)
    stub_worker.join()
    assert sorted(map(str, ran)) == ["1", "12345", "urgent"]


def test_results_example():
    broker = StubBroker()
    nbqueue.set_broker(broker)
    backend = StubBackend()
    broker.add_middleware(Results(backend=backend))

    @nbqueue.actor(store_results=True)
    def calculate(x, y):
        return x + y

    with nbqueue.Worker(broker, worker_timeout=100):
        message = calculate.send(5, 3)
        assert backend.get_result(message, block=True, timeout=5000) == 8
        assert message.get_result(block=True, timeout=5000) == 8


def test_broker_configured_with_an_explicit_middleware_list():
    broker = StubBroker(
        middleware=[
            nbqueue.middleware.AgeLimit(),
            nbqueue.middleware.TimeLimit(),
            nbqueue.middleware.Callbacks(),
            nbqueue.middleware.Retries(),
        ]
    )
    nbqueue.set_broker(broker)
    assert nbqueue.get_broker() is broker
    assert {"max_age", "time_limit", "on_success", "max_retries"} <= broker.actor_options


def test_the_complete_application():
    # config.py
    broker = StubBroker(
        middleware=[
            nbqueue.middleware.AgeLimit(),
            nbqueue.middleware.TimeLimit(),
            nbqueue.middleware.Callbacks(),
            nbqueue.middleware.Retries(max_retries=3, min_backoff=10, max_backoff=50),
            nbqueue.middleware.AsyncIO(),
        ]
    )
    nbqueue.set_broker(broker)
    done: dict[str, list[Any]] = {"emails": [], "orders": [], "reports": []}
    lock = threading.Lock()
    rng = random.Random(7)

    # tasks.py
    @nbqueue.actor(queue_name="emails", priority=5)
    def send_email(recipient, subject, body):
        with lock:
            done["emails"].append(recipient)

    @nbqueue.actor(queue_name="orders", priority=10, max_retries=5)
    def process_order(order_id):
        with lock:
            failing = rng.random() < 0.1
        if failing:
            raise RuntimeError(f"order {order_id} hit a transient error")
        with lock:
            done["orders"].append(order_id)

    @nbqueue.actor(time_limit=600000)
    async def generate_report(report_type, date_range):
        with lock:
            done["reports"].append((report_type, date_range))

    # app.py
    send_email.send("customer@example.com", "Order Confirmation", "Your order has been received")
    process_order.send_with_options(args=(12345,), delay=10)
    for order_id in range(20):
        process_order.send(order_id)
    generate_report.send_with_options(args=("sales", "2024-01"), priority=50)

    # shell: nbqueue tasks
    with nbqueue.Worker(broker, worker_timeout=100, worker_threads=4) as worker:
        for queue in ("emails", "orders", "default"):
            broker.join(queue, timeout=30000)
        worker.join()
    assert done["emails"] == ["customer@example.com"]
    assert sorted(done["orders"]) == [*range(20), 12345]
    assert done["reports"] == [("sales", "2024-01")]


def test_dramatiq_style_results_need_a_middleware_with_a_clear_error():
    broker = StubBroker()
    nbqueue.set_broker(broker)

    @nbqueue.actor
    def f():
        return 1

    with pytest.raises(RuntimeError, match="no Results middleware"):
        f.message().get_result()
