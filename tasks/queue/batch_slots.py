"""The threads of one worker's pool that batch steps may hold: per client, and in all.

Runs in the control worker (a thread pool), where `ocr.batch_step` runs beside
`ocr.cancel` and `ocr.http_callback`. A step reads the batch's source and HEADs its
documents, as slowly as the client's origin answers. So a client's steps hold at most
OCR_BATCH_THREADS_PER_CLIENT threads at once, and the steps of every client together
leave one thread of the pool (a pool of one thread keeps none) to the control tasks.
A step that finds no room reads nothing and is sent again later (tasks/batch_worker.py).
Each process counts its own threads: a count per pool, not across the fleet.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StepSlots:
    """Which batch steps may run now in this pool: `held(client)` says, and counts it."""

    def __init__(self, per_client: int, pool_threads: int = 1) -> None:
        self.per_client = per_client
        self.total = max(1, pool_threads - 1)  # the pool's last thread: control tasks'
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def held(self, client: str) -> Iterator[bool]:
        """True, and a thread counted for `client` until the block ends; False: no room."""
        with self._lock:
            mine = self._running.get(client, 0)
            room = mine < self.per_client and sum(self._running.values()) < self.total
            if room:
                self._running[client] = mine + 1
        try:
            yield room
        finally:
            if room:
                with self._lock:
                    left = self._running[client] - 1
                    if left:
                        self._running[client] = left
                    else:
                        del self._running[client]
