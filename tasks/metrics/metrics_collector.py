"""The service's metrics read back from Redis for Prometheus, at each scrape.

Runs in the Procfile `metrics` process (scripts/metrics_exporter.py): `RedisCollector`
reads what every worker node recorded with `MetricsStore` (tasks/state/metrics.py, whose
docstring gives the keys and fields) and the queues' lengths; `histogram_families`
turns the cluster's histogram fields into Prometheus' cumulative buckets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tasks.state.metrics import (
    HISTOGRAMS_KEY,
    METRICS,
    NODES_KEY,
    as_text,
    child_key,
    children_key,
    node_key,
)

QUEUE_LENGTH = "ocr_queue_length"


class RedisCollector(Collector):
    """Prometheus collector reading every node's metrics from Redis at each scrape."""

    def __init__(self, client: redis.Redis, queues: Sequence[str] = (),
                 suffixes: Sequence[str] = ("",),
                 broker_lengths: Callable[[Sequence[str]], dict[str, int]] | None = None
                 ) -> None:
        """`broker_lengths` reads queue lengths from a broker other than Redis."""
        self._redis = client
        self._queues = tuple(queues)
        self._suffixes = tuple(suffixes)
        self._broker_lengths = broker_lengths

    def collect(self) -> Iterator[Metric]:
        """Every metric; with Redis unreachable, what was read before (`ocr_redis_up`)."""
        families: dict[str, Any] = {}
        for name, spec in METRICS.items():
            if spec.kind == "histogram":
                continue
            labels = ["node", *(["pid"] if name.startswith("ocr_child_") else []),
                      *spec.labels]
            cls = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            families[name] = cls(name, spec.doc, labels=labels)
        stored: dict[Any, Any] = {}
        lengths = GaugeMetricFamily(QUEUE_LENGTH, "Jobs waiting in each queue (all "
                                    "priorities).", labels=["queue"])
        try:
            for node in sorted(as_text(n) for n in self._redis.smembers(NODES_KEY)):
                self._add(families, self._redis.hgetall(node_key(node)), [node])
                pids = sorted(as_text(p) for p in self._redis.smembers(children_key(node)))
                for pid in pids:
                    self._add(families, self._redis.hgetall(child_key(node, pid)),
                              [node, pid])
            stored = self._redis.hgetall(HISTOGRAMS_KEY)
            self._queue_lengths(lengths)
        except redis.RedisError:
            pass  # the scrape still answers: `ocr_redis_up` (fleet_metrics.py) says why
        yield from families.values()
        yield from histogram_families(stored)
        yield lengths

    @staticmethod
    def _add(families: dict[str, Any], stored: dict[Any, Any], head: list[str]) -> None:
        for raw_field, raw_value in stored.items():
            try:
                name, labels = json.loads(raw_field)
                value = float(raw_value)
            except ValueError:
                continue  # a field written by another version: skip it
            spec = METRICS.get(name)
            if spec is None or name not in families:
                continue
            families[name].add_metric(head + [str(labels.get(k, "")) for k in spec.labels],
                                      value)

    def _queue_lengths(self, family: GaugeMetricFamily) -> None:
        if not self._queues:
            return
        if self._broker_lengths is not None:
            for queue, length in self._broker_lengths(self._queues).items():
                family.add_metric([queue], float(length))
            return
        pipe = self._redis.pipeline(transaction=False)
        for queue in self._queues:
            for suffix in self._suffixes:
                pipe.llen(queue + suffix)
        # A key of another type under a queue's name answers an error: counted as 0.
        lengths = [n if isinstance(n, int) else 0 for n in pipe.execute(raise_on_error=False)]
        step = len(self._suffixes)
        for i, queue in enumerate(self._queues):
            family.add_metric([queue], float(sum(lengths[i * step:(i + 1) * step])))


def histogram_families(stored: dict[Any, Any]) -> list[HistogramMetricFamily]:
    """The histograms of `ocr:metrics:histograms` (every one, even without samples)."""
    found: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}
    for raw_field, raw_value in stored.items():
        try:
            name, labels, part = json.loads(raw_field)
            value = float(raw_value)
        except (ValueError, TypeError):
            continue  # a field written by another version: skip it
        spec = METRICS.get(name)
        if spec is not None and spec.kind == "histogram" and isinstance(labels, dict):
            key = (name, tuple(str(labels.get(k, "")) for k in spec.labels))
            found.setdefault(key, {})[str(part)] = value
    families = {name: HistogramMetricFamily(name, spec.doc, labels=list(spec.labels))
                for name, spec in METRICS.items() if spec.kind == "histogram"}
    for (name, values), parts in sorted(found.items()):
        running, buckets = 0.0, []
        for bound in (*map(repr, METRICS[name].buckets), "+Inf"):
            running += parts.get(bound, 0.0)
            buckets.append((bound, running))
        families[name].add_metric(list(values), buckets, parts.get("sum", 0.0))
    return list(families.values())
