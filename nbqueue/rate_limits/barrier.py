"""Barrier: lets the last of N parties know that everyone arrived (used by group callbacks)."""

from __future__ import annotations

from .backend import RateLimiterBackend

__all__ = ["Barrier"]


class Barrier:
    """A distributed barrier for a fixed number of parties.

    Example::

        barrier = Barrier(backend, str(uuid.uuid4()), ttl=30_000)
        barrier.create(parties=3)
        barrier.wait(block=False)  # False
        barrier.wait(block=False)  # False
        barrier.wait(block=False)  # True: the third party cleared it

    Use a fresh key (a uuid) for every barrier: reusing a key while blocking on it is undefined.

    Parameters:
      backend: where the counter and the release event live.
      key: the name of the barrier; its release event is published on ``"<key>@events"``.
      ttl: how long the barrier lives, in milliseconds.
    """

    def __init__(self, backend: RateLimiterBackend, key: str, *, ttl: int = 900000) -> None:
        self.backend = backend
        self.key = key
        self.key_events = key + "@events"
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"Barrier({self.backend!r}, {self.key!r}, ttl={self.ttl!r})"

    def create(self, parties: int) -> bool:
        """Create the barrier for ``parties`` parties.

        Returns:
          Whether it was created (False when the key already exists).

        Raises:
          ValueError: ``parties`` is smaller than 1.
        """
        if parties < 1:
            raise ValueError(f"A barrier needs at least one party, got {parties!r}.")
        return self.backend.add(self.key, parties, self.ttl)

    def wait(self, *, block: bool = True, timeout: int | None = None) -> bool:
        """Arrive at the barrier, and with ``block`` wait for the others.

        The party that arrives last releases everyone waiting; a blocking wait wakes at once.

        Parameters:
          block: wait until the last party arrives.
          timeout: how long to wait, in milliseconds; ``None`` waits forever.

        Returns:
          Whether the barrier was cleared: True for the last party, and for blocked parties
          released in time.
        """
        cleared = not self.backend.decr(self.key, 1, 1, self.ttl)
        if cleared:
            self.backend.wait_notify(self.key_events, self.ttl)
            return True
        if block:
            return self.backend.wait(self.key_events, timeout)
        return False
