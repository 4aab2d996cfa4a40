"""The HTTP API's added latency per job, against the Python client on the same stack.

One Procfile worker (OCR_CONCURRENCY=1, result cache off, tesseract) and the
Procfile's `api` process on the same Redis. The same 240x40 PNG is sent one job at a
time, alternately through `OcrClient` (submit, poll status every 2 ms, result) and
through the API (multipart POST, GET the status every 2 ms, GET the text), so that
drift in the machine's load hits both alike. The added latency is the difference of
the two percentiles; the API's own request times (POST, one status GET) are shown
too.

Then throughput: the same one-page images (100 text pages, 720x240, four
lines each; 20 with --quick) through `submit.py FILE...` (one process: submit all,
wait) and through the API at 50 connections (each: multipart POST, then the job's SSE
stream to its end, then GET the text), on one worker with two children, in the order
submit.py, API, API, submit.py. Pages/s of each over its two passes, one run.
"""

from __future__ import annotations

import io
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from bench.common import BenchError, Context, Ratio, Report, Services, Table, percentile
from bench.overhead import tiny_image
from devkit.api_server import ApiServer, create_token, session
from devkit.harness import ROOT

POLL = 0.002
CONNECTIONS = 50


def run(ctx: Context) -> Report:
    jobs = ctx.size(100, 10)
    data = tiny_image()
    series: dict[str, list[float]] = {"client": [], "api": [], "api POST": [],
                                      "api status GET": []}
    with Services(ctx.workdir) as services, \
            services.stack(OCR_CONCURRENCY="1") as (_, client):
        url = client.settings.redis_url
        api = ApiServer(ctx.workdir / "api.log", {"REDIS_URL": url, "OCR_ENGINE": "tesseract",
                                                  "OCR_CACHE_RESULTS": "0"}).start()
        try:
            http = session(create_token(url, "bench"))
            for _ in range(3):  # warm-up: engine loaded, connections open
                _through_client(client, data)
                _through_api(http, api, data, {})
            for _ in range(jobs):
                series["client"].append(_through_client(client, data))
                series["api"].append(_through_api(http, api, data, series))
            pages = ctx.size(100, 20)
            files = _pages(ctx.workdir / "pages", pages)
            # ABBA: submit.py, API, API, submit.py; drift in the machine's load hits both.
            cli_seconds = api_seconds = 0.0
            for path in ("cli", "api", "api", "cli"):
                if path == "cli":
                    cli_seconds += _through_submit_py(files, url)
                else:
                    api_seconds += _api_at_once(api, url, files)
            pages *= 2
        finally:
            api.stop()
    throughput = {"pages": pages, "connections": CONNECTIONS,
                  "submit_py_pages_s": pages / cli_seconds,
                  "api_pages_s": pages / api_seconds}
    stats = {name: {"n": len(v), "p50_ms": 1000 * percentile(v, 50),
                    "p95_ms": 1000 * percentile(v, 95)} for name, v in series.items()}
    added = {q: stats["api"][f"p{q}_ms"] - stats["client"][f"p{q}_ms"] for q in (50, 95)}
    table = Table(f"HTTP API vs Python client: {jobs} sequential jobs of each, alternating "
                  f"(240x40 PNG, tesseract, {POLL * 1000:.0f} ms polls)",
                  ["path", "n", "p50 ms", "p95 ms"])
    for name, s in stats.items():
        table.rows.append([name, s["n"], s["p50_ms"], s["p95_ms"]])
    table.rows.append(["added by the API (api - client)", jobs, added[50], added[95]])
    flow = Table(f"Throughput: {pages // 2} one-page images twice each way (ABBA), "
                 "tesseract, one worker with 2 children", ["path", "pages/s"])
    flow.rows += [["submit.py FILE... (one process)", throughput["submit_py_pages_s"]],
                  [f"HTTP API, {CONNECTIONS} connections, SSE", throughput["api_pages_s"]]]
    report = Report("api", tables=[table, flow], data={
        "jobs": jobs, "poll_seconds": POLL, "stats": stats, "added_ms": added,
        "api_startup_seconds": round(api.startup_seconds, 3), "series_s": series,
        "throughput": throughput})
    ratio = throughput["api_pages_s"] / throughput["submit_py_pages_s"]
    report.ratios.append(Ratio("api pages/s / submit.py pages/s (50 connections)", ratio,
                               goal=">= 0.9", met=ratio >= 0.9, note="one run"))
    report.ratios += [
        Ratio("api added latency p50 (ms)", added[50], note="no goal"),
        Ratio("api added latency p95 (ms)", added[95], note="no goal"),
        Ratio("api latency p50 / client latency p50",
              stats["api"]["p50_ms"] / stats["client"]["p50_ms"], note="no goal"),
    ]
    report.notes.append(f"the api process answered /healthz {api.startup_seconds:.2f} s "
                        "after it was started (process start, imports, app, socket)")
    return report


def _through_client(client: Any, data: bytes) -> float:
    started = time.perf_counter()
    job_id = client.submit(data, filename="tiny.png")
    result = client.wait([job_id], poll=POLL)[job_id]
    seconds = time.perf_counter() - started
    if result.get("status") != "SUCCESS":
        raise BenchError(f"client job failed: {result}")
    return seconds


def _through_api(http: requests.Session, api: ApiServer, data: bytes,
                 series: dict[str, list[float]]) -> float:
    started = time.perf_counter()
    sent = http.post(f"{api.url}/v1/jobs", files={"file": ("tiny.png", data)}, timeout=30)
    posted = time.perf_counter()
    if sent.status_code != 202:
        raise BenchError(f"POST answered {sent.status_code}: {sent.text}")
    job_id = sent.json()["id"]
    first_get = None
    while True:
        t0 = time.perf_counter()
        status = http.get(f"{api.url}/v1/jobs/{job_id}", timeout=30).json()
        first_get = first_get or time.perf_counter() - t0
        if status["status"] not in ("QUEUED", "RUNNING"):
            break
        time.sleep(POLL)
    text = http.get(f"{api.url}/v1/jobs/{job_id}/result", timeout=30)
    seconds = time.perf_counter() - started
    if status["status"] != "SUCCESS" or text.status_code != 200:
        raise BenchError(f"api job failed: {status}")
    if "api POST" in series:
        series["api POST"].append(posted - started)
        series["api status GET"].append(first_get)
    return seconds


def _pages(folder: Path, count: int) -> list[Path]:
    """`count` distinct one-page PNGs of four printed lines each."""
    from PIL import Image, ImageDraw, ImageFont

    folder.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=26)
    files = []
    for i in range(count):
        image = Image.new("L", (720, 240), 255)
        draw = ImageDraw.Draw(image)
        for line in range(4):
            draw.text((20, 20 + 52 * line), f"Invoice {i:04d} line {line}: total {i * 7 + line}"
                      " EUR", fill=0, font=font)
        out = io.BytesIO()
        image.save(out, format="PNG")
        path = folder / f"page-{i:04d}.png"
        path.write_bytes(out.getvalue())
        files.append(path)
    return files


def _through_submit_py(files: list[Path], redis_url: str) -> float:
    """Seconds `submit.py FILE...` takes for all of them (submit, wait, print)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "submit.py", *map(str, files)], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "REDIS_URL": redis_url})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"submit.py exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds


def _api_at_once(api: ApiServer, redis_url: str, files: list[Path]) -> float:
    """Seconds for every file through the API from CONNECTIONS connections at once."""
    # A client of its own with room for every job at once (the default quota is 100).
    token = create_token(redis_url, f"bench-flow-{uuid.uuid4().hex[:8]}", "--jobs-in-flight",
                         "0")
    todo: queue.Queue[Path] = queue.Queue()
    for path in files:
        todo.put(path)
    failures: list[str] = []

    def connection() -> None:
        with session(token) as http:
            while True:
                try:
                    path = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    _one_through_api(http, api, path)
                except (BenchError, requests.RequestException) as exc:
                    failures.append(f"{path.name}: {exc}")

    started = time.perf_counter()
    threads = [threading.Thread(target=connection) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise BenchError(f"{len(failures)} API jobs failed: {failures[:3]}")
    return seconds


def _one_through_api(http: requests.Session, api: ApiServer, path: Path) -> None:
    sent = http.post(f"{api.url}/v1/jobs", files={"file": (path.name, path.read_bytes())},
                     timeout=120)
    if sent.status_code != 202:
        raise BenchError(f"POST answered {sent.status_code}: {sent.text}")
    job_id = sent.json()["id"]
    with http.get(f"{api.url}/v1/jobs/{job_id}/events", stream=True, timeout=600) as events:
        ended = False
        for raw in events.iter_lines():
            line = raw.decode()
            if line == "event: end":
                ended = True
            elif ended and line.startswith("data: "):
                if '"status":"SUCCESS"' not in line.replace(" ", ""):
                    raise BenchError(f"job {job_id} ended {line[6:200]}")
                break
    text = http.get(f"{api.url}/v1/jobs/{job_id}/result", timeout=120)
    if text.status_code != 200:
        raise BenchError(f"result answered {text.status_code}")
