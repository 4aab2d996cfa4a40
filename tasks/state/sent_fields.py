"""What a job's sender writes once, read at the job's start and kept in the process.

Runs in worker pool children: `JobControl.at_start` (tasks/state/job_control.py) reads
the job's fields with its cancel mark as it starts (one HMGET), and the job's owner and
the time it was accepted are then answered from here (`as_sent`), not read again. Its
input blob is read in that round trip too, and kept here (`start_inputs`) until the
job's own read takes it (`BlobStore.get`, after the task's checks of what the job may
name): an input is immutable under its key, and one not taken (a job refused after its
start) is dropped once `StartInputs.MOST` newer ones came.
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


class StartInputs:
    """The inputs read with the last MOST jobs' starts, each until taken (thread-safe)."""

    MOST = 2  # a pool child runs one job at a time; a thread pool's others read their own

    def __init__(self) -> None:
        self._kept: dict[str, tuple[int, bytes | str]] = {}
        self._lock = threading.Lock()

    def keep(self, key: str, most: int, data: bytes | str) -> None:
        """Blob `key`'s first `most` + 1 bytes at the most (all of it when shorter)."""
        with self._lock:
            self._kept.pop(key, None)
            self._kept[key] = (most, data)
            while len(self._kept) > self.MOST:
                del self._kept[next(iter(self._kept))]

    def take(self, key: str, most: int | None) -> bytes | str | None:
        """Blob `key`'s bytes as a read of its first `most` + 1 would give; None: not kept."""
        with self._lock:
            kept = self._kept.pop(key, None)
        if kept is None or most is None or kept[0] != most:
            return None
        return kept[1]


start_inputs = StartInputs()
