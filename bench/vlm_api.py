"""vlm-api: one model copy behind mlx_vlm.server vs the model in process.

The model: random weights, ~102M parameters in the language model (12 layers of 768,
`devkit/tiny_vlm.py` geometry `bench-100m`) with Qwen2-VL's image geometry, float32,
built offline. Every run reads the same pages (the Letter scan scan_linn.png, sent at
448 px longest side) and generates 256 tokens a page: random weights never stop,
so each read ends at the limit (`length`), sampled at temperature 1.0 so that the
repetition guard does not cut it short; `OCR_VLM_FALLBACK=none`, so no tesseract
fallback time is mixed in and a page ends as `vlm_incomplete` after its 256 tokens
(counted as read: the tokens were generated; `generation_tokens` is checked where the
result has it).

1. Through the queue: a worker with the in-process `mlx-vlm` engine and one pool child,
   against a `vlm-api` worker with `OCR_CONCURRENCY` 1, 4 and 8 in front of the
   Procfile's `vlm-server` (mlx_vlm.server, continuous batching). Pages/s from the
   first submit to the last result; memory as the peak of the summed RSS of the VLM
   side: the in-process pool child, or the server plus the vlm-api pool children.
   Goals: at 8 in flight >= 2x the in-process pages/s; memory at 8 in flight <= 1.3x
   the in-process child.
2. The server alone, no queue: the same pages sent straight to mlx_vlm.server by 1, 4
   and 8 threads (streamed, as the engine sends them); what batching gives here
   before any queue cost.

Without the `vlm-api` engine in this checkout, part 1 measures only
the in-process engine, and the ratios compare it with the server alone (part 2), saying
so. MLX runs only in the worker children and the server, never in the bench process.

`--quick`: 4 pages per run at 224 px, 32 tokens, 1 and 4 at once, and part 2 only
without the engine. On the project's
2 shared CPU cores, MLX's CPU backend reads this model at ~4 tokens/s (prefill and
decode alike: compute-bound), so the full run (8 pages of 256 tokens, 1 + 3 queue runs
and 3 server runs) takes about an hour there; `--quick` about 10 minutes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    MLX_ENV,
    BenchError,
    Context,
    Ratio,
    Report,
    Services,
    Table,
    build_tiny_model,
    rss_mb,
)
from devkit.corpus import CORPUS
from devkit.harness import Worker
from devkit.inference_server import VlmServer

MODEL = "bench-100m"
PAGE = "scan_linn.png"


def sizes(ctx: Context) -> dict[str, Any]:
    """Pages per run, tokens a page, the page's longest side (px), pages in flight."""
    if ctx.quick:
        return {"pages": 4, "tokens": 32, "side": 224, "in_flight": (1, 4)}
    return {"pages": 8, "tokens": 256, "side": 448, "in_flight": (1, 4, 8)}


def engine_available() -> bool:
    from tasks.engines import BUILTIN_ENGINES

    return "vlm-api" in BUILTIN_ENGINES


def _vlm_env(models: Path, tokens: int, side: int) -> dict[str, str]:
    return {**MLX_ENV, "OCR_MODEL_DIR": str(models), "OCR_MODEL": MODEL,
            "OCR_VLM_MAX_TOKENS": str(tokens), "OCR_VLM_TEMPERATURES": "1.0",
            "OCR_VLM_FALLBACK": "none", "OCR_VLM_LONGEST_SIDE": str(side),
            "OCR_AUTO_ROTATE": "0", "OCR_DESKEW": "0", "OCR_CACHE_RESULTS": "0",
            "OCR_VLM_API_TIMEOUT": "900"}


class PeakRss:
    """The peak over time of the summed RSS of some processes (sampled in a thread)."""

    def __init__(self, processes: list[psutil.Process], interval: float = 0.1) -> None:
        self.processes = processes
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = sum(mb for p in self.processes if (mb := rss_mb(p)) is not None)
            self.peak_mb = max(self.peak_mb, total)
            self._stop.wait(self.interval)


def pool_children(worker: Worker) -> list[psutil.Process]:
    assert worker.proc is not None
    return psutil.Process(worker.proc.pid).children(recursive=True)


def read_pages(client: Any, data: bytes, pages: int, timeout: float = 1800
               ) -> tuple[float, list[dict[str, Any]]]:
    """`pages` one-page jobs at once; (seconds, results). Each must have read its page."""
    started = time.perf_counter()
    ids = [client.submit(data, filename=PAGE) for _ in range(pages)]
    results = client.wait(ids, timeout=timeout, poll=0.05)
    seconds = time.perf_counter() - started
    ordered = [results[i] for i in ids]
    for result in ordered:
        code = (result.get("error") or {}).get("code")
        if result.get("status") != "SUCCESS" and code not in ("vlm_incomplete",
                                                                "pages_failed"):
            raise BenchError(f"a page was not read: {json.dumps(result)[:2000]}")
    return seconds, ordered


def vlm_records(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [page["vlm"] for r in results for page in r.get("pages") or [] if page.get("vlm")]


@contextmanager
def worker(services: Services, env: dict[str, str]) -> Iterator[tuple[Worker, Any]]:
    with services.stack(**env) as (started, client):
        yield started, client


def run(ctx: Context) -> Report:
    report = Report("vlm_api")
    models = ctx.workdir / "models"
    build_tiny_model(models, MODEL)
    size = sizes(ctx)
    pages, tokens, side, in_flights = (size["pages"], size["tokens"], size["side"],
                                       size["in_flight"])
    data = (CORPUS / PAGE).read_bytes()
    env = _vlm_env(models, tokens, side)
    queued = engine_available()
    rows: list[dict[str, Any]] = []
    direct: list[dict[str, Any]] = []

    with Services(ctx.workdir) as services:
        with worker(services, {**env, "OCR_ENGINE": "mlx-vlm", "OCR_CONCURRENCY": "1"}) as (
                w, client):
            read_pages(client, data, 1)  # warm-up: the first page compiles kernels
            with PeakRss(pool_children(w)) as rss:
                seconds, results = read_pages(client, data, pages)
            rows.append({"mode": "mlx-vlm in process", "in_flight": 1, "pages": pages,
                         "seconds": round(seconds, 2), "pages_per_s": pages / seconds,
                         "rss_mb": round(rss.peak_mb, 1), "vlm": vlm_records(results)[:1]})
            print(f"in process: {pages / seconds:.3f} pages/s, child {rss.peak_mb:.0f} MB",
                  flush=True)

        port_env = {**env, "OCR_ENGINE": "vlm-api"}
        server = VlmServer(ctx.workdir / "vlm-server.log", port_env).start(timeout=600)
        try:
            port_env["OCR_VLM_SERVER_PORT"] = str(server.port)
            server_proc = psutil.Process(server.pid)
            if not (ctx.quick and queued):  # --quick with the engine: the queue only
                direct = serve_directly(server, data, tokens, pages, side, in_flights,
                                        server_proc)
            for in_flight in in_flights if queued else ():
                with worker(services, {**port_env, "OCR_CONCURRENCY": str(in_flight)}) as (
                        w, client):
                    read_pages(client, data, 1)  # warm-up
                    with PeakRss([server_proc, *pool_children(w)]) as rss:
                        seconds, results = read_pages(client, data, pages)
                    rows.append({"mode": "vlm-api", "in_flight": in_flight, "pages": pages,
                                 "seconds": round(seconds, 2),
                                 "pages_per_s": pages / seconds,
                                 "rss_mb": round(rss.peak_mb, 1),
                                 "vlm": vlm_records(results)[:1]})
                    print(f"vlm-api c{in_flight}: {pages / seconds:.3f} pages/s, "
                          f"{rss.peak_mb:.0f} MB", flush=True)
        finally:
            server.stop()

    report.data = {"rows": rows, "direct": direct, "pages": pages, "tokens": tokens,
                   "side": side, "model": MODEL, "vlm_api_engine": queued}
    queue = Table(f"{pages} one-page jobs of {PAGE} at {side} px, {tokens} tokens a page, "
                  "through the queue", ["engine", "pages in flight", "seconds", "pages/s",
                                        "vs in process", "VLM-side RSS peak MB",
                                        "vs in-process child"])
    base = rows[0]
    for row in rows:
        queue.rows.append([row["mode"], row["in_flight"], row["seconds"],
                           round(row["pages_per_s"], 3),
                           round(row["pages_per_s"] / base["pages_per_s"], 2),
                           row["rss_mb"], round(row["rss_mb"] / base["rss_mb"], 2)])
    alone = Table(f"the server alone: the same {pages} pages sent straight to "
                  "mlx_vlm.server (streamed), no queue",
                  ["requests at once", "seconds", "pages/s", "vs 1 at once",
                   "vs in process (queue)", "server RSS peak MB", "generated tokens"])
    for row in direct:
        alone.rows.append([row["in_flight"], row["seconds"], round(row["pages_per_s"], 3),
                           round(row["pages_per_s"] / direct[0]["pages_per_s"], 2),
                           round(row["pages_per_s"] / base["pages_per_s"], 2),
                           row["rss_mb"], row["tokens"]])
    report.tables += [queue, alone] if direct else [queue]
    top = rows[-1] if queued else {**direct[-1], "mode": "server alone"}
    how = (f"vlm-api {top['in_flight']} in flight" if queued else
           f"the server alone, {top['in_flight']} at once (no vlm-api engine here)")
    speed = top["pages_per_s"] / base["pages_per_s"]
    memory = top["rss_mb"] / base["rss_mb"]
    goals = not ctx.quick and queued
    report.ratios += [
        Ratio(f"pages/s: {how} / in process", speed, ">= 2" if goals else "",
              speed >= 2 if goals else None),
        Ratio(f"VLM-side memory: {how} / one in-process child", memory,
              "<= 1.3" if goals else "", memory <= 1.3 if goals else None),
    ]
    if not queued:
        report.notes.append("the vlm-api engine is not in this checkout: no queue rows "
                            "for it; the ratios compare the server alone")
    report.notes.append(
        f"random-weight ~102M-parameter model (float32), CPU only, {os.cpu_count()} cores "
        "shared with the workers, the server and the bench itself; on such a machine "
        "batched decoding has little idle compute to use, so the speed-up here is a lower "
        "bound of what a GPU or an M-series Mac shows")
    return report


def serve_directly(server: VlmServer, data: bytes, tokens: int, pages: int, side: int,
                   in_flights: tuple[int, ...], process: psutil.Process
                   ) -> list[dict[str, Any]]:
    """`pages` requests by 1, 4 (and 8) threads to the server's chat completions."""
    from PIL import Image

    from tasks.models.locate import served_model
    from tasks.settings import DEFAULT_PROMPT, Settings

    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = side / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    model = served_model(Settings.from_env({k: v for k, v in server.env.items()
                                            if k.startswith("OCR_")}))
    body = json.dumps({"model": model, "stream": True, "max_tokens": tokens,
                       "temperature": 1.0, "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": [
                           {"type": "image_url", "image_url": {"url": url}},
                           {"type": "text", "text": DEFAULT_PROMPT}]}]}).encode()

    def one() -> int:
        request = urllib.request.Request(f"{server.url}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        generated = 0
        with urllib.request.urlopen(request, timeout=1800) as answer:  # noqa: S310
            for raw in answer:
                line = raw.decode().strip()
                if line.startswith("data: {"):
                    usage = json.loads(line[6:]).get("usage") or {}
                    generated = int(usage.get("completion_tokens") or generated)
        return generated

    one()  # warm-up
    out = []
    for in_flight in in_flights:
        started = time.perf_counter()
        with PeakRss([process]) as rss, ThreadPoolExecutor(in_flight) as pool:
            counts = list(pool.map(lambda _: one(), range(pages)))
        seconds = time.perf_counter() - started
        out.append({"in_flight": in_flight, "seconds": round(seconds, 2),
                    "pages_per_s": pages / seconds, "tokens": sorted(counts),
                    "rss_mb": round(rss.peak_mb, 1)})
        print(f"server alone, {in_flight} at once: {pages / seconds:.3f} pages/s "
              f"(tokens {sorted(set(counts))})", flush=True)
    return out
