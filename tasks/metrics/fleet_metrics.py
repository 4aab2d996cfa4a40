"""The fleet's health as Prometheus gauges: Redis, queues' oldest messages, workers, dead letters.

Runs in the Procfile `metrics` process (scripts/metrics_exporter.py), beside
`RedisCollector` (tasks/metrics/metrics_collector.py), read at each scrape; what the alert rules
(deploy/prometheus/rules.yaml) and the dashboard (deploy/grafana/) read besides the
workers' own counters:

- `ocr_redis_up{redis}`, `ocr_redis_memory_used_bytes{redis}`,
  `ocr_redis_maxmemory_bytes{redis}`: the store Redis (REDIS_URL: results, blobs,
  metrics) and, when BROKER_URL names another Redis, the broker (`redis="broker"`);
  from PING and INFO memory. Down, the other figures are left out, the scrape answers.
- `ocr_queue_oldest_age_seconds{queue}`: the oldest waiting message of each queue,
  as a worker last looked (`QueueDepth.recorded_ages`, Redis broker only: RabbitMQ
  keeps no publish time a passive declare could read).
- `ocr_queue_workers{queue}`: live workers consuming each queue (presence records).
- `ocr_dead_letter_messages`, `ocr_dead_letters_total`: refused broker messages kept
  in `ocr:dead-letter` (a list capped at OCR_DEAD_LETTER_MAX), and how many were ever
  refused (Redis broker only; `dead_letters`, tasks/broker/reads.py).
- `ocr_queue_depth_read_timestamp_seconds{queue}`: when the KEDA figure of a set of
  queues (`/v1/queues/<queues>/depth`) was last asked of this exporter.
- `ocr_batches_running`, `ocr_batch_documents{batch,client,state}` and
  `ocr_batch_pages{batch,client,state}`: the unfinished batches and each one's counts
  (tasks/state/batch_store.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tasks.broker.reads import dead_letters
from tasks.metrics.queue_depth import QueueDepth
from tasks.state.batch_store import BatchStore, progress_of
from tasks.state.liveness import WorkerPresence


class DepthReads:
    """When each figure KEDA reads was last asked (thread-safe; this process's memory)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def read(self, queues: Sequence[str], now: float | None = None) -> None:
        with self._lock:
            self._last[",".join(queues)] = time.time() if now is None else now

    def last(self) -> dict[str, float]:
        with self._lock:
            return dict(self._last)


class FleetCollector(Collector):
    """The gauges above, from the store Redis, the broker's (if Redis) and `reads`."""

    def __init__(self, store: redis.Redis, queues: Sequence[str],
                 depth: QueueDepth | None = None, broker: redis.Redis | None = None,
                 reads: DepthReads | None = None) -> None:
        """`depth`, `broker`: the Redis broker's (None on RabbitMQ; `broker`: its own)."""
        self._store = store
        self._queues = tuple(queues)
        self._depth = depth
        self._broker = broker
        self._reads = reads

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("ocr_redis_up", "Whether the Redis answers PING (store: "
                               "REDIS_URL; broker: BROKER_URL when it is another Redis).",
                               labels=["redis"])
        used = GaugeMetricFamily("ocr_redis_memory_used_bytes", "Memory the Redis uses "
                                 "(INFO used_memory).", labels=["redis"])
        limit = GaugeMetricFamily("ocr_redis_maxmemory_bytes", "The Redis's maxmemory "
                                  "(0: none set).", labels=["redis"])
        answers: dict[str, tuple[int, int] | None] = {}
        servers = [("store", self._store)] + ([("broker", self._broker)]
                                              if self._broker is not None else [])
        for role, client in servers:
            answers[role] = memory = _memory(client)
            up.add_metric([role], 1.0 if memory is not None else 0.0)
            if memory is not None:
                used.add_metric([role], float(memory[0]))
                limit.add_metric([role], float(memory[1]))
        yield from (up, used, limit)
        broker_up = answers.get("broker", answers["store"]) is not None
        yield from self._queue_gauges(answers["store"] is not None, broker_up)
        reads = GaugeMetricFamily(
            "ocr_queue_depth_read_timestamp_seconds", "When the KEDA figure of these "
            "queues (/v1/queues/<queues>/depth) was last asked of this exporter (Unix "
            "time).", labels=["queue"])
        for queues, at in sorted((self._reads.last() if self._reads else {}).items()):
            reads.add_metric([queues], at)
        yield reads
        if answers["store"] is not None:
            yield from self._batch_gauges()

    def _batch_gauges(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("ocr_batches_running", "Batches not ended.")
        documents = GaugeMetricFamily(
            "ocr_batch_documents", "Documents of each unfinished batch: done, failed, "
            "skipped, running (in flight).", labels=["batch", "client", "state"])
        pages = GaugeMetricFamily("ocr_batch_pages", "Pages of each unfinished batch: "
                                  "done, failed.", labels=["batch", "client", "state"])
        try:
            store = BatchStore(self._store, 0)
            ids = store.running()
            running.add_metric([], float(len(ids)))
            for batch_id in ids:
                record = store.get(batch_id)
                if not record.exists:
                    continue
                shown = progress_of(record, store.in_flight(batch_id))
                labels = [batch_id, record.client]
                for state, value in shown["documents"].items():
                    if state in ("done", "failed", "skipped", "running"):
                        documents.add_metric([*labels, state], float(value))
                for state, value in shown["pages"].items():
                    pages.add_metric([*labels, state], float(value))
        except redis.RedisError:
            pass
        yield from (running, documents, pages)

    def _queue_gauges(self, store_up: bool, broker_up: bool) -> Iterator[Metric]:
        oldest = GaugeMetricFamily(
            "ocr_queue_oldest_age_seconds", "Seconds the oldest message waiting in each "
            "queue has waited (0: none waits; Redis broker only).", labels=["queue"])
        workers = GaugeMetricFamily("ocr_queue_workers", "Live workers consuming each "
                                    "queue (their presence records).", labels=["queue"])
        dead = GaugeMetricFamily("ocr_dead_letter_messages", "Refused broker messages "
                                 "kept in ocr:dead-letter (capped; Redis broker only).")
        refused = CounterMetricFamily("ocr_dead_letters", "Broker messages refused and "
                                      "dead-lettered (Redis broker only).")
        try:
            if store_up:
                live = WorkerPresence(self._store).live_queues()
                served = {q for queues in live.values() for q in queues}
                for queue in sorted(set(self._queues) | served):
                    workers.add_metric([queue], float(sum(queue in qs for qs in live.values())))
            if broker_up and self._depth is not None:
                for queue, age in self._depth.recorded_ages(self._store,
                                                            self._queues).items():
                    oldest.add_metric([queue], round(age, 3))
                client = self._broker if self._broker is not None else self._store
                kept, ever = dead_letters(client)
                dead.add_metric([], float(kept))
                refused.add_metric([], float(ever))
        except redis.RedisError:
            pass  # gone since the PING: `ocr_redis_up` says so at the next scrape
        yield from (oldest, workers, dead, refused)


def _memory(client: redis.Redis) -> tuple[int, int] | None:
    """(used_memory, maxmemory) of a Redis, or None when it does not answer."""
    try:
        info = client.info("memory")
    except redis.RedisError:
        return None
    return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
