"""Batches: a collection in S3 as one batch vs the same documents sent as separate jobs.

N generated one-page images (distinct sizes) in moto's S3 emulator (`moto_server`,
devkit/moto_s3.py). Each path gets a redis-server of its own (its `used_memory_peak` is
its own), an OCR worker with the fake engine (devkit/fake_engines.py: the service's
own cost per document, not an engine's) and two children, and the control worker:

- jobs: every document sent at once as a job naming `s3://bench/docs/<n>.png`, its
  result written to `s3://bench/jobs/`; documents/s from the first send to the last
  result. Redis holds every message at once.
- batch: one batch (`s3://bench/docs/` into `s3://bench/batch-<round>/`): the driver lists the
  prefix page by page and keeps OCR_BATCH_WINDOW documents in flight; documents/s from
  its creation to its end (manifest.jsonl composed).
- crash: the same batch into another target, the workers SIGKILLed once half the
  documents are done and started again; the documents read twice (jobs sent - N) are
  counted, and the manifest checked complete and right.

    BENCH_BATCH_DOCS=10000 .venv/bin/python -m bench --only batch

BENCH_BATCH_DOCS (default 1000; --quick 40), BENCH_BATCH_WINDOW (default 64),
BENCH_BATCH_ROUNDS (default 2; --quick 1): jobs and batch interleaved, the order
turned each round, documents/s from each path's median. "read twice" is the larger of
the jobs sent beyond N and the deliveries to OCR workers beyond N (a job whose message
came back after the kill is read again under its own id).
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import redis
from PIL import Image

from bench.common import BenchError, Context, Ratio, Report, Table
from bench.pipeline import cpu_seconds
from devkit.harness import RedisServer, Worker, eventually, fake_env, kill_all
from devkit.moto_s3 import MotoS3
from tasks.client import OcrClient
from tasks.queue.batch_steps import batch_store, start_chain
from tasks.records.batches import BatchRecord, BatchState
from tasks.records.status import JobStatus
from tasks.settings import Settings

BUCKET = "bench"
SHORT = {"OCR_SOFT_TIME_LIMIT": "8", "OCR_HARD_TIME_LIMIT": "10",
         "OCR_PAGE_SOFT_TIME_LIMIT": "8", "OCR_PAGE_HARD_TIME_LIMIT": "10",
         "OCR_VISIBILITY_TIMEOUT": "15"}


def page(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (40 + i % 60, 30 + i % 45), 150 + i % 90).save(out, "PNG")
    return out.getvalue()


class Fleet:
    """A redis-server, an OCR worker and the control worker, for one path."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.redis = RedisServer(workdir, appendonly=True)
        self.redis.start()
        self.url = self.redis.url(0)
        self.env = {**env, "REDIS_URL": self.url}
        self.workers: list[Worker] = []
        self.round = 0
        self.start_workers()
        self.client = OcrClient(Settings.from_env(self.env))

    def start_workers(self) -> None:
        self.round += 1
        self.workers = [Worker(self.workdir / f"worker-{self.round}.log", self.env).start(180),
                        Worker(self.workdir / f"control-{self.round}.log", self.env,
                               "control").start(180)]

    def peak_mb(self) -> float:
        return int(redis.Redis.from_url(self.url).info("memory")["used_memory_peak"]) / 2**20

    def close(self) -> None:
        kill_all(self.workers)
        self.client.close()
        self.redis.stop()


def cpu(fleet: Fleet, moto: MotoS3) -> tuple[float, float]:
    """CPU seconds so far: the fleet's workers (OCR and control), and moto's S3 server."""
    assert moto.proc is not None
    times = psutil.Process(moto.proc.pid).cpu_times()
    return sum(cpu_seconds(w) for w in fleet.workers), times.user + times.system


def measured(fleet: Fleet, moto: MotoS3, work: Any) -> dict[str, Any]:
    """`work()`'s figures, with the CPU seconds the workers and the store spent on it."""
    workers, store = cpu(fleet, moto)
    figures = dict(work())
    after = cpu(fleet, moto)
    return {**figures, "worker_cpu": after[0] - workers, "store_cpu": after[1] - store}


def run_jobs(fleet: Fleet, docs: int, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    ids = [fleet.client.submit(f"s3://{BUCKET}/docs/{i:06d}.png",
                               result_url=f"s3://{BUCKET}/jobs/", priority="batch")
           for i in range(docs)]
    results = fleet.client.wait(ids, timeout=timeout, poll=0.2)
    seconds = time.perf_counter() - started
    failed = [r for r in results.values() if r.get("status") != "SUCCESS"]
    if failed:
        raise BenchError(f"{len(failed)} of {docs} jobs failed, first: {failed[0]}")
    return {"seconds": seconds, "peak_mb": fleet.peak_mb()}


def start_batch(fleet: Fleet, target: str) -> tuple[str, Any]:
    settings = fleet.client.settings
    store = batch_store(settings, redis.Redis.from_url(fleet.url))
    batch_id = store.create(BatchRecord(
        id="", source=f"s3://{BUCKET}/docs/", target=f"s3://{BUCKET}/{target}/",
        options={"output": "text"}, priority="batch", client="bench")).id
    start_chain(fleet.client.app, store, batch_id)
    return batch_id, store


def wait_batch(store: Any, batch_id: str, timeout: float) -> BatchRecord:
    return eventually(lambda: (lambda r: r if r.state.final else None)(store.get(batch_id)),
                      timeout,
                      lambda: f"batch {batch_id} did not end: {store.get(batch_id)}",
                      interval=0.2)


def run_batch(fleet: Fleet, target: str, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    batch_id, store = start_batch(fleet, target)  # a target of its own: nothing to skip
    record = wait_batch(store, batch_id, timeout)
    seconds = time.perf_counter() - started
    if record.state is not BatchState.SUCCESS:
        raise BenchError(f"the batch ended {record.state}: {record}")
    return {"seconds": seconds, "peak_mb": fleet.peak_mb(), "done": record.done}


def run_crash(fleet: Fleet, moto: MotoS3, docs: int, timeout: float) -> dict[str, Any]:
    batch_id, store = start_batch(fleet, "crash")
    eventually(lambda: store.get(batch_id).done >= docs // 2, timeout,
               "half the documents done", interval=0.1)
    at_kill = store.get(batch_id).done
    kill_all(fleet.workers)
    fleet.start_workers()
    record = wait_batch(store, batch_id, timeout)
    server = redis.Redis.from_url(fleet.url)
    sent = sum(1 for key in server.scan_iter("ocr:job:*", count=1000)
               if key.count(b":") == 2 and server.hget(key, "batch") == batch_id.encode())
    # Every delivery of a job to an OCR worker, the killed one's included: a job whose
    # message came back after the kill is read again under the same id.
    deliveries = sum(len(re.findall(r"Task ocr\.document\[[^\]]+\] received",
                                    log.read_text(errors="replace")))
                     for log in fleet.workdir.glob("worker-*.log"))
    body = moto.client().get_object(Bucket=BUCKET, Key="crash/manifest.jsonl")["Body"].read()
    lines = [json.loads(line) for line in body.decode().splitlines()]
    right = len(lines) == docs and all(line["status"] == JobStatus.SUCCESS for line in lines) and \
        len({line["name"] for line in lines}) == docs
    return {"state": record.state.value, "done_at_kill": at_kill, "jobs_sent": sent,
            "deliveries": deliveries, "read_twice": max(sent, deliveries) - docs,
            "manifest_lines": len(lines), "manifest_right": right}


def run(ctx: Context) -> Report:
    docs = int(os.environ.get("BENCH_BATCH_DOCS", "40" if ctx.quick else "1000"))
    window = int(os.environ.get("BENCH_BATCH_WINDOW", "64"))
    rounds = int(os.environ.get("BENCH_BATCH_ROUNDS", "1" if ctx.quick else "2"))
    timeout = 600 + docs
    moto = MotoS3(ctx.workdir / "moto.log").start()
    try:
        store = moto.client()
        store.create_bucket(Bucket=BUCKET)
        for i in range(docs):
            store.put_object(Bucket=BUCKET, Key=f"docs/{i:06d}.png", Body=page(i))
        env = {**fake_env("fake", OCR_CONCURRENCY="2"), **SHORT,
               "OCR_ALLOWED_URLS": f"s3://{BUCKET}/", "OCR_BATCH_WINDOW": str(window),
               "OCR_URL_SPOOL_DIR": str(ctx.workdir / "spool"), **moto.env()}
        runs: dict[str, list[dict[str, Any]]] = {"jobs": [], "batch": []}
        figures: dict[str, Any] = {"runs": runs}
        for i in range(rounds):  # interleaved, the order turned each round
            for name in (("jobs", "batch") if i % 2 == 0 else ("batch", "jobs")):
                fleet = Fleet(ctx.workdir / f"{name}-{i}", env)
                try:
                    runs[name].append(measured(fleet, moto, functools.partial(
                        run_jobs, fleet, docs, timeout) if name == "jobs" else
                        functools.partial(run_batch, fleet, f"batch-{i}", timeout)))
                finally:
                    fleet.close()
        fleet = Fleet(ctx.workdir / "crash", env)
        try:
            figures["crash"] = run_crash(fleet, moto, docs, timeout)
        finally:
            fleet.close()
    finally:
        moto.stop()
    for name in ("jobs", "batch"):
        figures[name] = {key: statistics.median(r[key] for r in runs[name])
                         for key in ("seconds", "worker_cpu", "store_cpu")}
        figures[name]["peak_mb"] = max(r["peak_mb"] for r in runs[name])
    batch, crash = figures["batch"], figures["crash"]
    rate = {name: docs / figures[name]["seconds"] for name in ("jobs", "batch")}
    ratio = rate["batch"] / rate["jobs"]
    cpu_ratio = figures["jobs"]["worker_cpu"] / figures["batch"]["worker_cpu"]
    rows: list[Sequence[Any]] = [
            [label, docs, " / ".join(f"{r['seconds']:.1f}" for r in runs[name]),
             round(rate[name], 2), round(figures[name]["worker_cpu"] / docs * 1000, 1),
             round(figures[name]["store_cpu"] / docs * 1000, 1),
             round(figures[name]["peak_mb"], 1)]
            for name, label in (("jobs", "separate jobs"),
                                ("batch", f"one batch (window {window})"))]
    return Report(
        name="batch",
        tables=[Table(f"{docs} one-page PNGs in moto's S3, fake engine, one worker with 2 "
                      f"children and the control worker, a redis-server each (AOF), {rounds} "
                      "interleaved rounds (documents/s from the median)",
                      ["path", "documents", "seconds per round", "documents/s (= pages/s)",
                       "workers' CPU ms/document", "moto's CPU ms/document",
                       "Redis used_memory_peak MB"], rows),
                Table("the batch killed halfway (workers SIGKILLed, started again)",
                      ["documents", "done at the kill", "jobs sent", "deliveries",
                       "read twice", "window", "manifest lines",
                       "manifest complete and right"],
                      [[docs, crash["done_at_kill"], crash["jobs_sent"],
                        crash["deliveries"], crash["read_twice"], window,
                        crash["manifest_lines"],
                        crash["manifest_right"]]])],
        ratios=[Ratio("documents/s, batch / separate jobs", ratio, ">= 0.95", ratio >= 0.95,
                      "wall clock on a shared 2-core machine, moto's S3 server on the same "
                      "cores"),
                Ratio("documents per workers' CPU second, batch / separate jobs", cpu_ratio,
                      note="the OCR worker's and the control worker's CPU (the driver "
                           "included); the store's is apart"),
                Ratio("Redis used_memory_peak of the batch (MB)", batch["peak_mb"], "< 64",
                      batch["peak_mb"] < 64),
                Ratio("documents read twice after the crash", crash["read_twice"],
                      f"<= {window}", 0 <= crash["read_twice"] <= window
                      and crash["manifest_right"])],
        data={"docs": docs, "window": window, "rounds": rounds, **figures})
