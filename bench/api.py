"""The HTTP API's added latency per job, against the Python client on the same stack.

One Procfile worker (OCR_CONCURRENCY=1, result cache off, tesseract) and the
Procfile's `api` process on the same Redis. The same 240x40 PNG is sent one job at a
time, alternately through `OcrClient` (submit, poll status every 2 ms, result) and
through the API (multipart POST, GET the status every 2 ms, GET the text), so that
drift in the machine's load hits both alike. The added latency is the difference of
the two percentiles; the API's own request times (POST, one status GET) are shown
too.
"""

from __future__ import annotations

import time
from typing import Any

import requests

from bench.common import BenchError, Context, Ratio, Report, Services, Table, percentile
from bench.overhead import tiny_image
from tests.api_server import ApiServer, create_token, session

POLL = 0.002


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
        finally:
            api.stop()
    stats = {name: {"n": len(v), "p50_ms": 1000 * percentile(v, 50),
                    "p95_ms": 1000 * percentile(v, 95)} for name, v in series.items()}
    added = {q: stats["api"][f"p{q}_ms"] - stats["client"][f"p{q}_ms"] for q in (50, 95)}
    table = Table(f"HTTP API vs Python client: {jobs} sequential jobs of each, alternating "
                  f"(240x40 PNG, tesseract, {POLL * 1000:.0f} ms polls)",
                  ["path", "n", "p50 ms", "p95 ms"])
    for name, s in stats.items():
        table.rows.append([name, s["n"], s["p50_ms"], s["p95_ms"]])
    table.rows.append(["added by the API (api - client)", jobs, added[50], added[95]])
    report = Report("api", tables=[table], data={
        "jobs": jobs, "poll_seconds": POLL, "stats": stats, "added_ms": added,
        "api_startup_seconds": round(api.startup_seconds, 3), "series_s": series})
    report.ratios += [
        Ratio("api added latency p50 (ms)", added[50], note="no goal in issue 17"),
        Ratio("api added latency p95 (ms)", added[95], note="no goal in issue 17"),
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
