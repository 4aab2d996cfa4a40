"""A pool's threads shared per client: no client holds more than its share of them.

The control worker's batch steps (tasks/batch_worker.py) and callback sender
(tasks/queue/callback_sender.py) each hold one: a slow receiver or a big batch of one
client waits for its own threads, and the others' work finds room. Thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ClientShares:
    """`total` threads, at most `per_client` of them held by one client."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> bool:
        """Count a thread for `client` if there is room (True); else False."""
        with self._lock:
            mine = self._held.get(client, 0)
            if mine >= self.per_client or sum(self._held.values()) >= self.total:
                return False
            self._held[client] = mine + 1
            return True

    def give_back(self, client: str) -> None:
        """One of `client`'s threads free again."""
        with self._lock:
            left = self._held[client] - 1
            if left:
                self._held[client] = left
            else:
                del self._held[client]

    @contextmanager
    def held(self, client: str) -> Iterator[bool]:
        """True, and a thread counted for `client` until the block ends; False: no room."""
        room = self.take(client)
        try:
            yield room
        finally:
            if room:
                self.give_back(client)
