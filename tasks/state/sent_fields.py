"""A job's fields its sender writes once, read at the job's start and kept in the process.

Runs in worker pool children: `JobControl.at_start` (tasks/state/stores.py) reads
them with the cancel mark as a job starts (one HMGET), and the job's owner and the time
it was accepted are then answered from here, not read again.
"""

from __future__ import annotations

import threading
from typing import Any

AS_SENT = ("owner", "accepted")


class Recent:
    """The sent fields of the last MOST jobs this process started (thread-safe)."""

    MOST = 64

    def __init__(self) -> None:
        self._known: dict[str, tuple[Any, ...]] = {}
        self._lock = threading.Lock()

    def keep(self, job_id: str, values: tuple[Any, ...]) -> None:
        with self._lock:
            self._known.pop(job_id, None)
            self._known[job_id] = values
            while len(self._known) > self.MOST:
                del self._known[next(iter(self._known))]

    def get(self, job_id: str) -> tuple[Any, ...] | None:
        with self._lock:
            return self._known.get(job_id)


as_sent = Recent()
