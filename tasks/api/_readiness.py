"""Readiness of the service for one queue: Redis, live workers, their inference server.

Runs in the `api` process (`/readyz`). Workers are found by remote control (cached
READY_CACHE_SECONDS, so a polled `/readyz` does not ping the cluster each time).
"""

from __future__ import annotations

import threading
import time

import redis

from tasks.api._schemas import Readiness
from tasks.client import OcrClient
from tasks.inference_server import QUEUE as VLM_API_QUEUE
from tasks.inference_server import ServerWatch

READY_CACHE_SECONDS = 5.0
READY_PING_TIMEOUT = 0.5


class ReadinessCheck:
    """`check(queue)`: whether jobs sent to `queue` will be read (thread-safe)."""

    def __init__(self, client: OcrClient, redis_client: redis.Redis,
                 server: ServerWatch) -> None:
        self.client = client
        self._redis = redis_client
        self._ready: dict[str, tuple[float, list[str]]] = {}
        self._ready_lock = threading.Lock()
        self._vlm_server = server

    def __call__(self, queue: str) -> Readiness:
        """Redis answers and a worker consumes `queue` (remote-control ping, cached 5 s).

        When vlm-api workers consume it: whether their inference server answers; not
        ready when it does not and only they consume the queue.
        """
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            return Readiness(ready=False, redis=False, queue=queue, workers=[],
                             message=f"redis unreachable: {type(exc).__name__}")
        with self._ready_lock:
            cached = self._ready.get(queue)
            if cached is None or time.monotonic() - cached[0] > READY_CACHE_SECONDS:
                replies = self.client.app.control.inspect(
                    timeout=READY_PING_TIMEOUT).active_queues() or {}
                for name in {q.get("name") for qs in replies.values() for q in qs} | {queue}:
                    self._ready[str(name)] = (time.monotonic(), sorted(
                        w for w, qs in replies.items() if any(q.get("name") == name for q in qs)))
                cached = self._ready[queue]
            vlm = set(self._ready.get(VLM_API_QUEUE, (0.0, []))[1]) & set(cached[1])
        workers = cached[1]
        # vlm-api workers need their inference server: not ready when only they serve.
        server = self._vlm_server.check() if vlm else None
        down = server is not None and not server.ok
        return Readiness(ready=bool(workers) and not (down and vlm == set(workers)),
                         redis=True, queue=queue, workers=workers,
                         inference_server=None if server is None else server.ok,
                         message=server.message if server is not None and down else
                         "" if workers else f"no worker consumes queue {queue}")
