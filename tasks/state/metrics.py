"""Service metrics kept in Redis and served to Prometheus.

Worker processes record with `MetricsStore` (pool children's counters after each task
and their gauges at most every 10 s, the worker parent when it prunes children that are
gone); the Procfile `metrics` process (scripts/metrics_exporter.py) reads everything
back on each scrape with `RedisCollector` (tasks/metrics/metrics_collector.py), so one
exporter covers every worker on every host. Keys:

- `ocr:metrics:nodes`: set of worker node names that recorded anything.
- `ocr:metrics:node:<node>`: counters of one worker node (hash). They outlive pool
  children and worker restarts; kept `COUNTER_TTL` seconds after the last update.
- `ocr:metrics:children:<node>`: set of the node's pool-child pids with gauges.
- `ocr:metrics:child:<node>:<pid>`: gauges of one pool child (hash), removed when the
  child exits or its worker parent finds it gone, else `CHILD_TTL` after the last
  refresh.
- `ocr:metrics:histograms`: the latency histograms of the whole cluster (hash; no
  `node` label: a pod name per node would multiply the series), kept `COUNTER_TTL`.

Hash fields are JSON `[metric, {label: value}]`, values numbers; a histogram's are
`[metric, {label: value}, part]`, `part` a bucket's upper bound (its own count, not
cumulative) or `sum`; the count is the buckets' total.

A process holds its counters' and histograms' increments, merged by field, and writes
them `FLUSH_EVERY` seconds after the oldest of them came: each waits at most that long,
and two writes are at least that far apart. A busy pool child writes a field once a
second however many pages it read in it (two pages of one engine and client: one
HINCRBYFLOAT of 2.0), and a counter may reach Redis up to a second after the job's
result. A pool child writes what it holds as it exits (recycled after its tasks, or a
warm shutdown), the worker parent as it stops. A process killed outright (a cancel's
or a hard time limit's SIGKILL, the OOM killer) loses what it held: the increments of
at most its last `FLUSH_EVERY` seconds, and while Redis was unreachable every
increment since its last write that went in.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from tasks.state import lua
from tasks.state.keys import METRICS_HISTOGRAMS_KEY as HISTOGRAMS_KEY
from tasks.state.keys import METRICS_NODES_KEY as NODES_KEY
from tasks.state.keys import metrics_child_key as child_key
from tasks.state.keys import metrics_children_key as children_key
from tasks.state.keys import metrics_node_key as node_key

COUNTER_TTL = 7 * 24 * 3600
CHILD_TTL = 300
# Seconds between one process's writes of a key's TTL and of its node's and children's
# set memberships: a counter's write is its HINCRBYFLOAT alone the rest of the time.
KEEP_EVERY = 60.0
# Seconds a process holds counter and histogram increments before writing them.
FLUSH_EVERY = 1.0
log = logging.getLogger(__name__)

Sample = tuple[str, dict[str, str], float]
# Upper bounds of the latency buckets: a 0.3 s scan and a 30 s VLM page each fall
# among steps of about 1.5x, so a quantile of either is read within a step.
PAGE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0,
                20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0)
JOB_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
               600.0, 1200.0, 1800.0, 3600.0, 7200.0)


@dataclass(frozen=True)
class MetricSpec:
    """A metric: counter, gauge or histogram, its help text, its own labels, its buckets."""

    kind: str
    doc: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


# Counters are per worker node (label `node`); `ocr_child_*` gauges per pool child
# (labels `node` and `pid`).
METRICS: dict[str, MetricSpec] = {
    "ocr_jobs_total": MetricSpec(
        "counter", "Jobs finished, by engine and outcome (SUCCESS, PARTIAL, FAILURE).",
        ("engine", "outcome")),
    "ocr_job_seconds_total": MetricSpec(
        "counter", "Seconds finished jobs took, start to end, by engine and outcome.",
        ("engine", "outcome")),
    "ocr_job_failures_total": MetricSpec(
        "counter", "Jobs that ended FAILURE, by engine and error code.", ("engine", "code")),
    "ocr_page_failures_total": MetricSpec(
        "counter", "Pages that failed (their job went on), by engine and error code.",
        ("engine", "code")),
    "ocr_client_jobs_total": MetricSpec(
        "counter", "Jobs finished, by client (an API token's name, `anonymous`, or "
        "`other` for a name no token has) and outcome.", ("client", "outcome")),
    "ocr_client_pages_total": MetricSpec(
        "counter", "Pages by client (an API token's name, `anonymous`, or `other`), "
        "engine and outcome: read, failed, or cached (a cached job's).",
        ("client", "engine", "outcome")),
    "ocr_pages_total": MetricSpec(
        "counter", "Pages of finished jobs by source: ocr, text-layer, blank, failed, cached.",
        ("engine", "source")),
    "ocr_vlm_tokens_total": MetricSpec(
        "counter", "Tokens of the pages a vision-language model read (each page's last "
        "try), by kind: prompt (image and prompt) or generation.", ("engine", "kind")),
    "ocr_vlm_pages_total": MetricSpec(
        "counter", "Pages a vision-language model read, by the finish reason of the last "
        "try: stop, length, repetition, error.", ("engine", "finish_reason")),
    "ocr_vlm_fallbacks_total": MetricSpec(
        "counter", "Pages whose text came from a fallback engine after the model's read "
        "did not finish, by fallback engine and reason.", ("engine", "fallback", "reason")),
    "ocr_pages_escalated_total": MetricSpec(
        "counter", "Pages the job's engine was unsure of, sent to its escalation engine, by "
        "the engine that read them first (from), the escalation engine (to) and reason: "
        "low_confidence or no_text.", ("from", "to", "reason")),
    "ocr_vlm_server_outages_total": MetricSpec(
        "counter", "Times the inference server of a vlm-api worker was found down or "
        "loading (its pages waited, none failed), counted once it answered again.",
        ("engine",)),
    "ocr_vlm_server_wait_seconds_total": MetricSpec(
        "counter", "Seconds a vlm-api worker waited for its inference server to answer "
        "again.", ("engine",)),
    "ocr_engine_loads_total": MetricSpec(
        "counter", "Engine loads in pool children.", ("engine",)),
    "ocr_engine_load_seconds_total": MetricSpec(
        "counter", "Seconds spent loading engines in pool children.", ("engine",)),
    "ocr_engine_load_failures_total": MetricSpec(
        "counter", "Engine loads that failed in pool children.", ("engine",)),
    "ocr_child_rss_bytes": MetricSpec(
        "gauge", "Resident memory of a pool child after a task, at most 10 s old (peak on macOS)."),
    "ocr_child_memory_bytes": MetricSpec(
        "gauge", "Engine memory of a pool child at the end of its last task, by kind "
        "(mlx_active, mlx_peak during the task, mlx_cache before it was cleared).",
        ("kind",)),
    "ocr_child_tasks": MetricSpec("gauge", "Tasks a pool child has run since it started."),
    "ocr_child_redis_pools": MetricSpec(
        "gauge", "Redis connection pools the service's own code holds in a pool child "
        "(one per Redis it talks to; Celery's and kombu's own apart)."),
    "ocr_child_engine_load_seconds": MetricSpec(
        "gauge", "Load time of each engine loaded in a pool child.", ("engine", "model")),
    "ocr_child_updated_timestamp_seconds": MetricSpec(
        "gauge", "When a pool child last recorded its gauges (Unix time)."),
    "ocr_child_cgroup_memory_bytes": MetricSpec(
        "gauge", "Working set (usage less inactive file pages) of the memory cgroup the "
        "pool child runs in, its container's: the figure the OOM killer goes by."),
    "ocr_child_cgroup_memory_limit_bytes": MetricSpec(
        "gauge", "Memory limit of that cgroup (absent where it has none)."),
    "ocr_child_vlm_in_flight": MetricSpec(
        "gauge", "Pages a vlm-api worker has at its inference server now.", ("engine",)),
    "ocr_child_vlm_server_up": MetricSpec(
        "gauge", "Whether a vlm-api worker's inference server answers (0: its pages found "
        "it down or loading and wait for it).", ("engine",)),
    "ocr_job_latency_seconds": MetricSpec(
        "histogram", "Seconds from a job's acceptance (its client's enqueue) to its end, "
        "by engine and outcome.", ("engine", "outcome"), JOB_BUCKETS),
    "ocr_page_latency_seconds": MetricSpec(
        "histogram", "Seconds an engine took to read one page (orientation, deskew, "
        "recognition, fallback), by the engine that read it.", ("engine",), PAGE_BUCKETS),
}


def _field(name: str, labels: dict[str, str], part: str | None = None) -> str:
    """A hash field: `[name, labels]`, or a histogram's `[name, labels, part]`, as JSON.

    Made once per process for each metric, label set and part (a pool child ends every
    job with the same few), by `_encoded`.
    """
    if name not in METRICS:
        raise KeyError(f"unknown metric {name}")
    return _encoded(name, tuple(sorted(labels.items())), part)


@functools.lru_cache(maxsize=4096)
def _encoded(name: str, labels: tuple[tuple[str, str], ...], part: str | None) -> str:
    field = json.dumps([name, dict(labels)], sort_keys=True)
    return field if part is None else f"{field[:-1]}, {json.dumps(part)}]"


def _bucket(bounds: Sequence[float], value: float) -> str:
    """The bucket of `value`: the first upper bound at or above it, as text."""
    return next((repr(b) for b in bounds if value <= b), "+Inf")


class MetricsStore:
    """Writes one worker node's metrics. Raises `redis.RedisError` when Redis fails.

    Counter and histogram increments are held and merged by field, and written (one
    pipeline, one HINCRBYFLOAT a field) FLUSH_EVERY s after the oldest of them came: by
    a call that adds more then (a task's end), else by a daemon timer thread at that
    moment, another task or not. So an increment waits at most FLUSH_EVERY s, and two
    writes are at least FLUSH_EVERY s apart. A write that fails keeps its increments
    for the next one (a field's sum: what is held stays bounded by the fields there
    are, however long Redis is away).
    """

    def __init__(self, client: redis.Redis, node: str) -> None:
        self._redis = client
        self.node = node
        self._kept: dict[str, float] = {}  # key -> when this process last set its TTL
        self._gauges: dict[int, set[str]] = {}  # child pid -> the gauge fields it wrote
        self._held: dict[tuple[str, str], float] = {}  # (key, field) -> increment held
        self._held_since = 0.0  # when the oldest increment held came
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()  # a thread pool's tasks end in several threads
        self._writing = threading.Lock()  # held while held increments are on their way

    def _due(self, key: str) -> bool:
        """Whether `key`'s TTL (or membership) is to be written again now."""
        now = time.monotonic()
        if now - self._kept.get(key, -KEEP_EVERY) < KEEP_EVERY:
            return False
        self._kept[key] = now
        return True

    def _execute(self, pipe: Any) -> None:
        try:
            lua.execute(pipe)
        except redis.RedisError:
            self._kept.clear()  # every TTL is written again by the next write
            raise

    def add(self, samples: Iterable[Sample], observed: Iterable[Sample] = (),
            also: Callable[[Any], None] | None = None) -> None:
        """Add each sample's value to the node's counter; put `observed` in histograms.

        Held and written with the others of up to FLUSH_EVERY s. `also` queues other
        writes (a client's usage), made at once; what is due goes in the same pipeline.
        """
        more = [(node_key(self.node), _field(name, labels), value)
                for name, labels, value in samples]
        for name, labels, value in observed:
            # the count is the buckets' sum (read back so): not written apart
            more += [(HISTOGRAMS_KEY, _field(name, labels, part), amount) for part, amount
                     in ((_bucket(METRICS[name].buckets, value), 1.0), ("sum", value))]
        pipe = self._redis.pipeline(transaction=False)
        if also is not None:
            also(pipe)
        self._write(pipe, more)

    def flush(self) -> None:
        """Write what this process holds now, after a write on its way (a process that ends)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._write(self._redis.pipeline(transaction=False), [], now=True)

    def _write(self, pipe: Any, more: list[tuple[str, str, float]], now: bool = False) -> None:
        """Hold `more`, queue what is due on `pipe` after its own commands, run it."""
        writing = now and self._writing.acquire()  # one write of held ones at a time
        try:
            with self._lock:
                if more and not self._held:
                    self._held_since = time.monotonic()
                for key, field, amount in more:
                    self._held[key, field] = self._held.get((key, field), 0.0) + amount
                wait = self._held_since + FLUSH_EVERY - time.monotonic()
                if self._held and not writing and wait <= 0:
                    writing = self._writing.acquire(blocking=False)
                held: dict[tuple[str, str], float] = {}
                if writing:
                    held, self._held = self._held, {}
                if self._held and self._timer is None:  # written a moment later
                    # (a write on its way: the next one a second after it)
                    self._timer = threading.Timer(wait if wait > 0 else FLUSH_EVERY,
                                                  self._flush_later)
                    self._timer.daemon = True
                    self._timer.start()
            first = len(pipe)
            for (key, field), amount in held.items():
                pipe.hincrbyfloat(key, field, amount)
            keys = {key for key, _ in held}
            if node_key(self.node) in keys and self._due(node_key(self.node)):
                pipe.expire(node_key(self.node), COUNTER_TTL)
                pipe.sadd(NODES_KEY, self.node)
                pipe.expire(NODES_KEY, COUNTER_TTL)
            if HISTOGRAMS_KEY in keys and self._due(HISTOGRAMS_KEY):
                pipe.expire(HISTOGRAMS_KEY, COUNTER_TTL)
            if len(pipe):
                self._run(pipe, first, held)
        finally:
            if writing:
                self._writing.release()

    def _run(self, pipe: Any, first: int, held: dict[tuple[str, str], float]) -> None:
        """Run `pipe`; what of `held` (its commands from `first` on) did not go in is held.

        Raises the first error.
        """
        try:
            got = lua.answers(pipe)
        except redis.RedisError:
            self._hold_again(held)
            self._kept.clear()
            raise
        failed = {k for k, answer in zip(held, got[first:], strict=False)
                  if isinstance(answer, Exception)}
        self._hold_again({k: held[k] for k in failed})
        errors = [answer for answer in got if isinstance(answer, Exception)]
        if errors:
            self._kept.clear()  # every TTL is written again by the next write
            raise errors[0]

    def _hold_again(self, held: dict[tuple[str, str], float]) -> None:
        """Hold again what a write did not make; the next write is a second away."""
        if not held:
            return
        with self._lock:
            if not self._held:
                self._held_since = time.monotonic()
            for field, amount in held.items():
                self._held[field] = self._held.get(field, 0.0) + amount
            if self._timer is None:
                self._timer = threading.Timer(FLUSH_EVERY, self._flush_later)
                self._timer.daemon = True
                self._timer.start()

    def _flush_later(self) -> None:
        """In the timer's thread: write what is held if due (else the timer starts again)."""
        with self._lock:
            self._timer = None
        try:
            self._write(self._redis.pipeline(transaction=False), [])
        except redis.RedisError as exc:
            log.warning("metrics not written, held for the next write: %s",
                        type(exc).__name__)

    def set_child(self, pid: int, samples: Iterable[Sample]) -> None:
        """Replace the gauges of pool child `pid`.

        The first time in this process, in one transaction (a key its pid's earlier
        child left is dropped); then its fields are set, and those missing from the
        new set dropped after them: a scrape between the two sees a gauge gone a moment
        late, never none.
        """
        mapping: dict[Any, Any] = {_field(n, labels): v for n, labels, v in samples}
        key = child_key(self.node, pid)
        written = self._gauges.get(pid)
        pipe = self._redis.pipeline(transaction=written is None)
        if written is None or not mapping:
            pipe.delete(key)
        if mapping:
            pipe.hset(key, mapping=mapping)
            gone = (written or set()) - set(mapping)
            if gone:
                pipe.hdel(key, *gone)
            pipe.expire(key, CHILD_TTL)
        if self._due(f"{children_key(self.node)}:{pid}"):
            pipe.sadd(children_key(self.node), pid)
            pipe.expire(children_key(self.node), COUNTER_TTL)
            pipe.sadd(NODES_KEY, self.node)
            pipe.expire(NODES_KEY, COUNTER_TTL)
        try:
            self._execute(pipe)
        except redis.RedisError:
            self._gauges.pop(pid, None)  # the next write replaces them whole
            raise
        self._gauges[pid] = set(mapping)

    def drop_child(self, pid: int) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(child_key(self.node, pid))
        pipe.srem(children_key(self.node), pid)
        pipe.execute()

    def keep_children(self, live: Iterable[int]) -> None:
        """Drop the gauges of children not in `live`; keep the others' fresh."""
        live_ids = {str(pid) for pid in live}
        known = {as_text(p) for p in self._redis.smembers(children_key(self.node))}
        pipe = self._redis.pipeline(transaction=False)
        for pid in known - live_ids:
            pipe.delete(child_key(self.node, pid))
            pipe.srem(children_key(self.node), pid)
        for pid in known & live_ids:
            pipe.expire(child_key(self.node, pid), CHILD_TTL)
        pipe.expire(children_key(self.node), COUNTER_TTL)
        pipe.expire(node_key(self.node), COUNTER_TTL)
        pipe.execute()


def as_text(value: Any) -> str:
    """A Redis reply's bytes (or number) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
