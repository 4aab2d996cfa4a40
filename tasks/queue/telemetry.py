"""Worker telemetry: the `ocr.job` line of each ended job, and metrics in Redis.

Counters and gauges per worker node, and the cluster's latency histograms: a job's
from its acceptance to its end (observed where it ended), each OCR page's read
(observed where it was read).

`connect_telemetry()` connects the handlers. In the worker parent: `celeryd_after_setup`
(the node name, inherited by the children) and `heartbeat_sent` (drops the gauges of
children that are gone, keeps the others fresh). In pool children:
`worker_process_init`, `task_postrun` (after `tasks.queue.signals`' handler, so that the
engine's memory figures are those of the finished task) and `worker_process_shutdown`.
A process holds its counts, merged, and writes them a second after the oldest of them
(tasks/state/metrics.py `FLUSH_EVERY`: at the end of a task if that second is over,
else on a timer thread), and what it holds as it stops (`worker_process_shutdown` in a child,
`worker_shutdown` in the parent); a child killed outright loses at most its last
second's counts. The job's one exit (tasks/lifecycle/job_exit.py) calls `job_ended()`
wherever the job ended, the worker parent included: it counts the job. Pages are
counted where they were read (`pages_read()`: the job task for an image or an unsplit
PDF and for a split PDF's text-layer pages, each page or chunk task for its own), so a
page is credited to the worker that read it, not to the one that ended its job (a
control worker that cancelled it, or the worker of its last page). A page or chunk
task's usage is counted by the script that records its pages.

A failing metrics write is logged, never raised: jobs never depend on it. Counts it
did not write are held for the next write; gauges wait for their next turn.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import redis
from celery.signals import (
    celeryd_after_setup,
    heartbeat_sent,
    task_postrun,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from tasks.engines import resident
from tasks.errors import OcrError
from tasks.queue import cgroup_memory
from tasks.queue.job_samples import (
    client_page_samples,
    escalation_samples,
    job_line,
    job_record,
    page_failures,
    page_latencies,
    page_samples,
)
from tasks.records.jobs import JobStatus, Outcome
from tasks.records.results import PageRecord
from tasks.state.client_labels import ANONYMOUS_LABEL, OTHER_LABEL, ClientLabels
from tasks.state.connection import connect, connection_pools
from tasks.state.metrics import MetricsStore, Sample
from tasks.state.usage import PageUsage, today
from tasks.state.usage_counts import JobPages, page_engines

if TYPE_CHECKING:
    from tasks.engines.resident import ResidentEngines
    from tasks.settings import Settings

log = logging.getLogger(__name__)
# Seconds between the worker parent's checks of its children's gauges (it runs on
# every heartbeat, every 5 s, but acts only this often).
KEEP_INTERVAL = 60.0
# Seconds between a pool child's writes of its gauges (the first task's at once): a
# child that runs many short tasks does not rewrite them after each one.
GAUGE_INTERVAL = 10.0


def rss_bytes() -> int:
    """Resident memory of this process (Linux: now; elsewhere: peak)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def child_gauges(registry: ResidentEngines) -> list[Sample]:
    """The gauges of one pool child, from its engine registry."""
    samples: list[Sample] = [
        ("ocr_child_rss_bytes", {}, float(rss_bytes())),
        ("ocr_child_tasks", {}, float(registry.tasks_in_process)),
        ("ocr_child_redis_pools", {}, float(connection_pools())),
        ("ocr_child_updated_timestamp_seconds", {}, time.time()),
        *cgroup_memory.samples(),
    ]
    for name, loaded in registry.loaded():
        samples.append(("ocr_child_engine_load_seconds",
                        {"engine": name, "model": str(loaded.engine.model)},
                        loaded.load_seconds))
        samples += [(metric, {"engine": name}, value)
                    for metric, value in loaded.engine.gauges().items()]
    for key, value in registry.last_memory.items():
        if key.endswith("_mb"):
            samples.append(("ocr_child_memory_bytes", {"kind": key[:-3]}, value * 2**20))
    return samples


class Telemetry:
    """The telemetry state of one process (a worker parent, or one of its children)."""

    def __init__(self, settings: Settings, engine: str) -> None:
        self.settings = settings
        self.engine = engine  # the worker's, resolved once (tasks/queue/app.py)
        self.node = "unknown"
        self.worker: Any = None
        self._store: MetricsStore | None = None
        self._labels: ClientLabels | None = None
        self._page_usage: PageUsage | None = None
        self._loads: dict[str, tuple[int, float]] = {}
        self._failures: set[str] = set()
        self._counted: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()  # a thread pool's tasks end in several threads
        self._last_keep = 0.0
        self._gauges_at: float | None = None  # when this process last wrote its gauges
        self._pools = 0  # its Redis pools then (a new one is shown at once)

    def store(self) -> MetricsStore:
        if self._store is None or self._store.node != self.node:
            self._store = MetricsStore(connect(self.settings.redis_target), self.node)
        return self._store

    def child_started(self) -> None:
        """In a new pool child: forget the parent's connection, record the first load."""
        self._store = None
        self._labels = None
        self._page_usage = None
        self._gauges_at = None
        self.observe(resident.current(self.settings))

    def task_finished(self) -> None:
        engines = resident.existing()
        if engines is not None:  # a control worker loads no engine
            self.observe(engines)

    def finished(self, job_id: str, filename: str, engine: str, seconds: float | None,
                 outcome: Any, client: str = "", trace_id: str | None = None,
                 latency: float | None = None) -> None:
        """Log the job's line, count it, and observe its `latency` (seconds), if known.

        Counted per engine, and per client's bounded label.
        """
        label = self.label(client)
        record, samples = job_record(job_id, self.node, filename, engine, seconds, outcome,
                                     client, label, trace_id)
        log.info("%s", job_line(record))
        observed: list[Sample] = []
        if latency is not None:
            labels = {"engine": str(record["engine"]), "outcome": str(record["outcome"])}
            observed.append(("ocr_job_latency_seconds", labels, max(latency, 0.0)))
        self._write(lambda store: store.add(samples, observed))

    def _client_labels(self) -> ClientLabels:
        if self._labels is None:
            self._labels = ClientLabels(connect(self.settings.redis_target))
        return self._labels

    def pages_read(self, engine: str, pages: Iterable[dict[str, Any]],
                   cached: bool = False, client: str = "", job: str = "",
                   recorded: bool = False) -> JobPages | None:
        """Count pages this process read, for this worker and `client`, and their latency.

        The pages read (not failed, not cached) are added to the client's usage of the
        day (tasks/state/usage.py, at once): what its page caps are checked against;
        with `job`, each of the job's pages once, whichever worker read it first.
        `recorded`: the usage is returned instead, for the script that records the
        pages to count (a page task's) or the job's end claim (a document's task:
        tasks/state/job_control.py). The counters and latencies are held (within a
        second in Redis).
        """
        pages = list(pages)
        samples = page_samples(engine, pages, cached)
        if not cached:
            samples += page_failures(engine, pages)
        samples += client_page_samples(self.label(client), engine, pages, cached)
        observed = [] if cached else page_latencies(engine, pages)
        read = [] if cached else [page for page in pages if page.get("error") is None]
        numbers = [int(page["number"]) for page in read]
        engines = tuple(page_engines(page, engine) for page in read)
        if recorded:
            self._write(lambda store: store.add(samples, observed))
            return (JobPages(client, job, tuple(numbers), today(), engines)
                    if job and numbers else None)
        usage = self._usage()
        # One pipeline: the client's usage, and the counts held if their write is due.
        if not self._write(lambda store: store.add(
                samples, observed, lambda pipe: usage.add(client, len(numbers), pipe=pipe,
                                                          job=job, numbers=numbers,
                                                          engines=engines))):
            usage.forget_ttls()  # its keys' TTLs are set again by the next write
        return None

    def pages_escalated(self, pages: Iterable[dict[str, Any]]) -> None:
        """Count the pages among `pages` that escalated (held, within a second in Redis)."""
        samples = escalation_samples(pages)
        if samples:
            self._write(lambda store: store.add(samples, []))

    def label(self, client: str) -> str:
        """`client`'s bounded metric label (`other` while the token names are unread)."""
        try:
            return self._client_labels().label(client)
        except redis.RedisError as exc:
            log.warning("client %r counted as %s: %s", client, OTHER_LABEL,
                        type(exc).__name__)
            return OTHER_LABEL if client else ANONYMOUS_LABEL

    def _usage(self) -> PageUsage:
        if self._page_usage is None:
            self._page_usage = PageUsage(connect(self.settings.redis_target))
        return self._page_usage

    def observe(self, registry: ResidentEngines) -> None:
        """Count engine loads and failed loads since the last look; record the gauges."""
        now, pools = time.monotonic(), connection_pools()
        with self._lock:
            samples = self._news(registry)
            if (not samples and self._gauges_at is not None and pools == self._pools
                    and now - self._gauges_at < GAUGE_INTERVAL):
                return  # nothing new to count, gauges written a moment ago
            self._gauges_at, self._pools = now, pools
        gauges = child_gauges(registry)
        pid = os.getpid()

        def write(store: MetricsStore) -> None:
            store.add(samples)
            store.set_child(pid, gauges)

        self._write(write)

    def _news(self, registry: ResidentEngines) -> list[Sample]:
        """Counter samples of what changed in `registry` since the last look."""
        samples: list[Sample] = []
        for name, loaded in registry.loaded():
            identity = (id(loaded), loaded.load_seconds)
            if self._loads.get(name) != identity:
                self._loads[name] = identity
                samples += [("ocr_engine_loads_total", {"engine": name}, 1.0),
                            ("ocr_engine_load_seconds_total", {"engine": name},
                             loaded.load_seconds)]
        for name, loaded in registry.loaded():
            for metric, total in loaded.engine.counters().items():
                # The engine keeps running totals; the store adds what is new since.
                seen = self._counted.get((name, metric), 0.0)
                self._counted[(name, metric)] = total
                if total > seen:
                    samples.append((metric, {"engine": name}, total - seen))
        failed = set(registry.failures)
        samples += [("ocr_engine_load_failures_total", {"engine": name}, 1.0)
                    for name in sorted(failed - self._failures)]
        self._failures = failed
        return samples

    def child_exiting(self) -> None:
        pid = os.getpid()

        def write(store: MetricsStore) -> None:
            store.flush()
            store.drop_child(pid)

        self._write(write)

    def exiting(self) -> None:
        """In the worker parent as it stops: write the counts it holds."""
        if self._store is not None:
            self._write(lambda store: store.flush())

    def heartbeat(self) -> None:
        """In the worker parent: drop gauges of children that are gone, refresh the rest.

        A thread pool's process is its own child: its gauges are recorded again (the
        pages in flight at an inference server change while no task ends).
        """
        now = time.monotonic()
        pool = getattr(self.worker, "pool", None)
        if pool is None or now - self._last_keep < KEEP_INTERVAL:
            return
        self._last_keep = now
        live = pool.info.get("processes")
        if live is not None:  # the prefork pool: children with pids of their own
            self._write(lambda store: store.keep_children(live))
        engines = resident.existing()
        if live is None and engines is not None and engines.threaded:
            self.observe(engines)

    def _write(self, action: Callable[[MetricsStore], None]) -> bool:
        """Whether `action` wrote (a failure is logged and dropped)."""
        try:
            action(self.store())
        except redis.RedisError as exc:
            log.warning("metrics not recorded: %s", type(exc).__name__)
            return False
        return True


_telemetry: Telemetry | None = None


def connect_telemetry(settings: Settings, engine: str) -> Telemetry:
    """Connect the handlers once per process, bound to `settings` and `engine`."""
    global _telemetry
    if _telemetry is not None:
        return _telemetry
    telemetry = _telemetry = Telemetry(settings, engine)

    def on_after_setup(sender: str, instance: Any, **_: Any) -> None:
        telemetry.node = sender
        telemetry.worker = instance

    def on_postrun(**_: Any) -> None:
        telemetry.task_finished()

    celeryd_after_setup.connect(on_after_setup, weak=False)
    heartbeat_sent.connect(lambda **_: telemetry.heartbeat(), weak=False)
    worker_process_init.connect(lambda **_: telemetry.child_started(), weak=False)
    task_postrun.connect(on_postrun, weak=False)
    worker_process_shutdown.connect(lambda **_: telemetry.child_exiting(), weak=False)
    worker_shutdown.connect(lambda **_: telemetry.exiting(), weak=False)
    return telemetry


def job_ended(outcome: Outcome, accepted: float | None = None) -> None:
    """The `ocr.job` line, counters and latency of a job that ended (job_exit.py).

    Wherever the job ended: a pool child, a control worker or the worker parent. Its
    latency counts from `accepted` (when its client enqueued it), else from its start.
    """
    if _telemetry is None:
        return
    engine = outcome.engine or (outcome.request.engine if outcome.request else None) \
        or _telemetry.engine
    if outcome.status is JobStatus.FAILURE:
        result: Any = outcome.error or OcrError()
    else:
        result = outcome.brief()
    since = accepted if accepted is not None else outcome.started
    _telemetry.finished(outcome.job_id, outcome.filename, engine, outcome.seconds, result,
                        outcome.client, outcome.trace_id,
                        None if since is None else time.time() - since)


def pages_read(engine: str, pages: Iterable[PageRecord], cached: bool = False,
               client: str = "", job: str = "", recorded: bool = False) -> JobPages | None:
    """Count pages this process read (or a cached job's pages it answered), for its worker.

    And for the job's `client` (its counters and its usage of the day). Called before
    the pages are recorded, so a job's pages are in its client's usage by the time its
    result is stored (its worker's counters within a second). `recorded`: the usage is
    returned instead, for the script that records the pages to count (a page task's
    record, tasks/state/join.py) or the job's end claim (a document's task); None when
    there is nothing to count. A process
    without telemetry (a client, a test) counts nothing.
    """
    if _telemetry is None:
        return None
    return _telemetry.pages_read(engine, (page.to_json() for page in pages), cached, client,
                                 job, recorded)


def pages_escalated(pages: Iterable[PageRecord]) -> None:
    """Count the escalated pages among `pages`, where their escalation was decided.

    That is the task that read them first (escalated or not, a page is counted once):
    a page task, or the job task of an image. A process without telemetry counts nothing.
    """
    if _telemetry is None:
        return
    _telemetry.pages_escalated(page.to_json() for page in pages if page.escalation is not None)
