"""Readiness of the service for one queue: Redis, live workers, their inference server.

Runs in the `api` process. A background thread (`ReadinessCheck.start`) refreshes one
snapshot every REFRESH_SECONDS: a Redis ping, the workers' presence records
(tasks/state/liveness.py: one HGETALL, no broadcast) and, when vlm-api workers are
live, their inference server (tasks/inference_server.py). `/readyz` only reads that
snapshot: constant time, no lock, no network wait, and nothing kept per queue asked
about, so a flood of unknown queue names costs the API nothing but the answers.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from tasks.admission import live_engines
from tasks.api._schemas import Readiness
from tasks.client_wait import scaling_from_zero
from tasks.inference_server import QUEUE as VLM_API_QUEUE
from tasks.inference_server import ServerWatch
from tasks.queue.routing import from_zero_engine
from tasks.state.liveness import WorkerPresence

log = logging.getLogger(__name__)
REFRESH_SECONDS = 1.0
# A snapshot older than this (the refresh thread stopped or is stuck): not ready.
STALE_SECONDS = 15.0


@dataclass(frozen=True)
class Snapshot:
    """What the last refresh saw; replaced whole, never changed in place."""

    taken: float                      # time.monotonic() of the refresh
    redis: bool
    redis_error: str = ""
    serving: dict[str, tuple[str, ...]] = field(default_factory=dict)  # queue -> nodes
    vlm_nodes: frozenset[str] = frozenset()
    server_ok: bool | None = None     # None: no vlm-api worker is live
    server_message: str = ""


class ReadinessCheck:
    """`check(queue, detailed)`: whether jobs sent to `queue` will be read (thread-safe)."""

    def __init__(self, presence: WorkerPresence, redis_client: redis.Redis,
                 server: ServerWatch, interval: float = REFRESH_SECONDS,
                 from_zero: tuple[str, ...] = ()) -> None:
        self._presence = presence
        self._from_zero = from_zero  # OCR_ENGINES_FROM_ZERO
        self._redis = redis_client
        self._server = server
        self._interval = interval
        self._snapshot: Snapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()  # held only to create the thread
        self.refreshes = 0

    def start(self) -> None:
        """Start the refresh thread (once; later calls do nothing)."""
        with self._start_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="readiness",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._snapshot = self.refresh()
            self.refreshes += 1
            self._stop.wait(self._interval)

    def refresh(self) -> Snapshot:
        """One look at Redis, the presence records and the inference server."""
        try:
            self._redis.ping()
            live = self._presence.live_queues()
        except redis.RedisError as exc:
            return Snapshot(time.monotonic(), redis=False, redis_error=type(exc).__name__)
        serving: dict[str, list[str]] = {}
        for node, queues in live.items():
            for queue in queues:
                serving.setdefault(queue, []).append(node)
        vlm = frozenset(serving.get(VLM_API_QUEUE, ()))
        server = self._server.check() if vlm else None
        return Snapshot(time.monotonic(), redis=True,
                        serving={q: tuple(sorted(n)) for q, n in serving.items()},
                        vlm_nodes=vlm, server_ok=None if server is None else server.ok,
                        server_message="" if server is None else server.message)

    @property
    def snapshot_queues(self) -> int:
        """How many queues the current snapshot holds (those live workers consume)."""
        snapshot = self._snapshot
        return 0 if snapshot is None else len(snapshot.serving)

    def __call__(self, queue: str, detailed: bool = False) -> Readiness:
        """Redis answers and a live worker consumes `queue` (from the last snapshot).

        The queue of an engine whose pool scales from zero (OCR_ENGINES_FROM_ZERO) is
        ready with no worker: a job sent there waits, and its depth wakes the pool.
        The answer names those engines beside the live workers' (`engines`).

        When vlm-api workers consume it: whether their inference server answers; not
        ready when it does not and only they consume the queue. `detailed` (an
        authenticated caller): the workers' node names and the queues served.
        """
        self.start()
        snapshot = self._snapshot
        if snapshot is None or time.monotonic() - snapshot.taken > STALE_SECONDS:
            return Readiness(ready=False, redis=False, queue=queue, workers=[],
                             message="readiness not known yet" if snapshot is None else
                             "readiness is stale (the refresh has stopped)")
        if not snapshot.redis:
            return Readiness(ready=False, redis=False, queue=queue, workers=[],
                             message=f"redis unreachable: {snapshot.redis_error}")
        workers = snapshot.serving.get(queue, ())
        vlm = snapshot.vlm_nodes & set(workers)
        server_ok = snapshot.server_ok if vlm else None
        down = server_ok is False
        waits = from_zero_engine(queue, self._from_zero)
        ready = bool(workers) and not (down and vlm == set(workers)) or (
            not workers and waits is not None)
        message = (snapshot.server_message if down else "" if workers else
                   f"no worker consumes queue {queue}" if waits is None else
                   scaling_from_zero(waits).message)
        return Readiness(ready=ready, redis=True, queue=queue,
                         engines=live_engines({"": set(snapshot.serving)}),
                         engines_from_zero=list(self._from_zero),
                         workers=list(workers) if detailed else [],
                         worker_count=len(workers), inference_server=server_ok,
                         message=message,
                         queues=sorted(snapshot.serving) if detailed else None)
