"""Scanned PDFs queued by URL vs by upload: Redis `used_memory_peak`, pages/s.

Each path gets a redis-server of its own (so each peak is its own) and a Procfile worker
with the bundled tesseract engine and two children (BASE_ENV). By upload,
`OcrClient.submit(path)` puts every PDF into Redis as a blob before the job is sent; by
URL the same PDFs lie in moto's S3 emulator (`moto_server`, devkit/moto_s3.py) and the
jobs name `s3://bench/<n>.pdf`: the workers read them through AWS_ENDPOINT_URL and a
fanned-out PDF's pages are read from one local copy per host. Every job is queued at
once, then waited for; pages/s is pages over the seconds from the first submit to the
last result.

The PDFs are scans: the corpus's `scan_linn.png` page at 300 dpi with light sensor noise
(so the page images do not compress away), PNG-encoded: 8 MB a page, so BENCH_URL_MB=20
gives 2-page PDFs of 16 MB and 24 gives 3 pages of 24 MB. The count is a parameter:
200 x 20 MB is hours of tesseract on two cores. The paths run in
interleaved rounds (the order turned each round); pages/s is from each path's median.

    BENCH_URL_DOCS=6 BENCH_URL_MB=24 .venv/bin/python -m bench --only object_storage

BENCH_URL_DOCS (default 200; --quick 2), BENCH_URL_MB (default 20; --quick 8),
BENCH_URL_ROUNDS (default 3; --quick 1).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pymupdf
import redis
from PIL import Image

from bench.common import BenchError, Context, Ratio, Report, Services, Table
from bench.pipeline import cpu_seconds
from devkit.corpus import CORPUS
from devkit.moto_s3 import MotoS3
from tasks.client import OcrClient

PAGE_MB = 8.0  # one 300-dpi Letter page with the noise below, PNG-encoded
BUCKET = "bench"


def scanned_pdf(path: Path, megabytes: float) -> int:
    """Write a scanned PDF of about `megabytes`; its page count."""
    pages = max(1, round(megabytes / PAGE_MB))
    scan = Image.open(CORPUS / "scan_linn.png").convert("L").resize((2550, 3300))
    rng = np.random.default_rng(32)
    doc = pymupdf.open()
    for _ in range(pages):
        pixels = np.asarray(scan, dtype=np.int16) + rng.normal(0, 6, (3300, 2550))
        page_png = path.with_suffix(".page.png")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(page_png)
        page = doc.new_page(width=612, height=792)
        page.insert_image(page.rect, filename=str(page_png))
        page_png.unlink()
    doc.save(path)
    doc.close()
    return pages


def queue_all(client: OcrClient, sources: list[str], timeout: float) -> float:
    """Submit every source at once, wait for all; seconds from the first submit."""
    started = time.perf_counter()
    ids = [client.submit(source, mode="ocr") for source in sources]
    results = client.wait(ids, timeout=timeout, poll=0.1)
    seconds = time.perf_counter() - started
    failed = [r for r in results.values() if r.get("status") != "SUCCESS"]
    if failed:
        raise BenchError(f"{len(failed)} of {len(ids)} jobs failed, first: {failed[0]}")
    return seconds


def one_path(ctx: Context, name: str, sources: list[str], env: dict[str, str],
             timeout: float) -> dict[str, Any]:
    with Services(ctx.workdir / name) as services, \
            services.stack(**env) as (worker, client):
        server = redis.Redis.from_url(services.redis.url(0))
        idle = int(server.info("memory")["used_memory"])
        cpu_before = cpu_seconds(worker)
        seconds = queue_all(client, sources, timeout)
        cpu = cpu_seconds(worker) - cpu_before
        memory = server.info("memory")
        return {"seconds": seconds, "worker_cpu_seconds": cpu, "idle_mb": idle / 2**20,
                "used_memory_peak_mb": int(memory["used_memory_peak"]) / 2**20}


def run(ctx: Context) -> Report:
    docs = int(os.environ.get("BENCH_URL_DOCS", "2" if ctx.quick else "200"))
    megabytes = float(os.environ.get("BENCH_URL_MB", "8" if ctx.quick else "20"))
    rounds = int(os.environ.get("BENCH_URL_ROUNDS", "1" if ctx.quick else "3"))
    pdf = ctx.workdir / "scan.pdf"
    pages = scanned_pdf(pdf, megabytes)
    size = pdf.stat().st_size
    total_pages = docs * pages
    timeout = 600 + 60 * total_pages
    # By upload: N copies of the same scan (the cache is off: each is read).
    copies = []
    for n in range(docs):
        copy = ctx.workdir / f"upload-{n}.pdf"
        copy.hardlink_to(pdf)
        copies.append(str(copy))
    runs: dict[str, list[dict[str, Any]]] = {"upload": [], "url": []}
    moto = MotoS3(ctx.workdir / "moto.log").start()
    try:
        store = moto.client()
        store.create_bucket(Bucket=BUCKET)
        data = pdf.read_bytes()
        for n in range(docs):
            store.put_object(Bucket=BUCKET, Key=f"{n}.pdf", Body=data)
        del data
        env = {"OCR_ALLOWED_URLS": f"s3://{BUCKET}/", "OCR_URL_SPOOL_DIR":
               str(ctx.workdir / "spool"), **moto.env()}
        urls = [f"s3://{BUCKET}/{n}.pdf" for n in range(docs)]
        # Interleaved, the order turned each round: load from other work drifts.
        for i in range(rounds):
            order = ("upload", "url") if i % 2 == 0 else ("url", "upload")
            for path in order:
                runs[path].append(
                    one_path(ctx, f"{path}-{i}", urls, env, timeout) if path == "url"
                    else one_path(ctx, f"{path}-{i}", copies, {}, timeout))
    finally:
        moto.stop()
    rows: list[Sequence[Any]] = []
    summary = {}
    for path, label in (("upload", "by upload"), ("url", "by URL (s3://)")):
        seconds = statistics.median(r["seconds"] for r in runs[path])
        cpu = statistics.median(r["worker_cpu_seconds"] for r in runs[path])
        peak = max(r["used_memory_peak_mb"] for r in runs[path])
        summary[path] = {"seconds": seconds, "cpu": cpu, "peak_mb": peak}
        rows.append([label, docs, total_pages, round(peak, 1),
                     " / ".join(f"{r['seconds']:.1f}" for r in runs[path]),
                     round(total_pages / seconds, 3), round(cpu / total_pages, 2)])
    ratio = summary["upload"]["seconds"] / summary["url"]["seconds"]
    cpu_ratio = summary["upload"]["cpu"] / summary["url"]["cpu"]
    peak = summary["url"]["peak_mb"]
    return Report(
        name="object_storage",
        tables=[Table(f"{docs} scanned PDFs of {size / 2**20:.1f} MB ({pages} pages each), "
                      f"mode=ocr, tesseract, one worker with 2 children, {rounds} "
                      "interleaved rounds (pages/s from the median)",
                      ["path", "PDFs", "pages", "Redis used_memory_peak MB (max)",
                       "seconds per round", "pages/s", "worker CPU s/page"], rows)],
        ratios=[Ratio("Redis used_memory_peak by URL (MB)", peak, "< 64", peak < 64),
                Ratio("pages/s by URL / by upload", ratio, ">= 0.95", ratio >= 0.95,
                      "median of interleaved rounds, on a shared machine"),
                Ratio("pages per worker CPU second, by URL / by upload", cpu_ratio,
                      note="the CPU-bound view of the same runs (other work on the "
                           "machine does not count)")],
        data={"docs": docs, "pdf_bytes": size, "pages_per_pdf": pages, "rounds": runs})
