"""The example application's producer: sends three jobs and returns at once."""

from __future__ import annotations

from tasks import generate_report, process_order, send_email

if __name__ == "__main__":
    send_email.send("customer@example.com", "Order Confirmation", "Your order has been received")
    process_order.send_with_options(args=(12345,), delay=10000)
    generate_report.send_with_options(args=("sales", "2024-01"), priority=50)
    print("Sent 3 jobs; the worker runs them (process_order after 10 s).")
