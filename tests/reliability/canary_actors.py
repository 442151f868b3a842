"""An actor for the D3 CLI test: imported by ``nbqueue worker`` after the broker is built."""

from __future__ import annotations

import nbqueue


@nbqueue.actor(queue_name="canary", max_retries=0)
def explode() -> None:
    raise RuntimeError("explode: nothing secret in here")
