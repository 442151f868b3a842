"""A middleware the broker tests share."""

from __future__ import annotations

import nbqueue


class Enqueued(nbqueue.Middleware):
    """Records, in order, the messages whose after_enqueue hooks ran."""

    def __init__(self):
        self.seen = []

    def after_enqueue(self, broker, message, delay):
        self.seen.append(message.args[0])
