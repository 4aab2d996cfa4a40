"""A job's client as a metric label, bounded by the HTTP API's tokens.

A client name is any `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}` a sender chose (a token's name,
submit.py's `--client` or login name, another Celery sender's header), so as a
Prometheus label it would grow without bound. The label is the name itself when an API
token of that name exists, `anonymous` for the anonymous client (""), and `other` for
any other name. The token names (`ocr:api:clients`) are read at most every `refresh`
seconds, and again, at most every `MISS_SECONDS`, for a name not yet known (a token
made a moment ago); for a name that keeps missing (a login name, which no token bears),
twice as long after each miss, up to `refresh`. Runs in worker processes (telemetry of
ended jobs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from tasks.state.keys import API_CLIENTS_KEY

ANONYMOUS_LABEL = "anonymous"
OTHER_LABEL = "other"
MISS_SECONDS = 2.0
MISSES_KEPT = 1000  # names whose misses are remembered (any more: all forgotten)


class ClientLabels:
    """Client names -> bounded label values, from the API's token names (thread-safe)."""

    def __init__(self, client: redis.Redis, refresh: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = client
        self._refresh = refresh
        self._clock = clock
        self._names: frozenset[str] = frozenset()
        self._read_at = float("-inf")
        self._waits: dict[str, float] = {}  # a name that missed -> its wait before a read
        self._lock = threading.Lock()

    def label(self, name: str) -> str:
        """`name` when a token bears it; `anonymous` for ""; `other` otherwise."""
        if not name:
            return ANONYMOUS_LABEL
        with self._lock:
            age = self._clock() - self._read_at
            wait = self._waits.get(name, MISS_SECONDS)
            if age >= self._refresh or (name not in self._names and age >= wait):
                self._names = frozenset(
                    n.decode() if isinstance(n, bytes) else str(n)
                    for n in self._redis.hkeys(API_CLIENTS_KEY))
                self._read_at = self._clock()
                if name in self._names:
                    self._waits.pop(name, None)
                else:
                    if len(self._waits) >= MISSES_KEPT:
                        self._waits.clear()
                    self._waits[name] = (min(2 * wait, self._refresh) if name in self._waits
                                         else MISS_SECONDS)
            return name if name in self._names else OTHER_LABEL
