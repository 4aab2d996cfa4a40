"""Per-job overhead: submit-to-result latency of a tiny image vs the engine's own time.

One Procfile worker (OCR_CONCURRENCY=1, result cache off); jobs one at a time through
`OcrClient.submit` + `OcrClient.wait` with a 2 ms poll (so polling adds at most 2 ms).
The engine's own time is `TesseractEngine.recognize` on the same image in this
process; the worker's `timings` (ocr_seconds, total_seconds) split the rest into
in-task work and the queue's transport (upload, Redis, prefork, result backend).
"""

from __future__ import annotations

import io
import time
from typing import Any

from bench.common import (
    Context,
    Direct,
    Ratio,
    Report,
    Services,
    Table,
    median,
    new_figure,
    percentile,
    run_jobs,
)

TEXT = "Invoice 2024-001"
POLL = 0.002


def tiny_image() -> bytes:
    """A 240x40 PNG with one short line of text."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("L", (240, 40), 255)
    ImageDraw.Draw(image).text((8, 6), TEXT, fill=0, font=ImageFont.load_default(size=22))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def run(ctx: Context) -> Report:
    jobs = ctx.size(200, 15)
    data = tiny_image()

    direct = Direct()
    try:
        from PIL import Image

        from tasks.engines import RecognizeOptions

        image = Image.open(io.BytesIO(data))
        image.load()
        engine_s: list[float] = []
        for _ in range(max(20, jobs // 4) + 3):
            t0 = time.perf_counter()
            text = direct.engine.recognize(image, RecognizeOptions()).text
            engine_s.append(time.perf_counter() - t0)
        engine_s = engine_s[3:]
        document_s = []
        for _ in range(max(20, jobs // 4)):
            t0 = time.perf_counter()
            direct.run(data, "tiny.png")
            document_s.append(time.perf_counter() - t0)
    finally:
        direct.close()

    latency: list[float] = []
    results: list[dict[str, Any]] = []
    with Services(ctx.workdir) as services, \
            services.stack(OCR_CONCURRENCY="1") as (_, client):
        run_jobs(client, [(data, {"filename": "tiny.png"})] * 3, poll=POLL)  # warm-up
        for _ in range(jobs):
            seconds, (result,) = run_jobs(client, [(data, {"filename": "tiny.png"})],
                                          poll=POLL)
            latency.append(seconds)
            results.append(result)
    worker_ocr = [r["timings"]["ocr_seconds"] for r in results]
    worker_total = [r["timings"]["total_seconds"] for r in results]
    series = {
        "engine recognize (direct)": engine_s,
        "run_document (direct)": document_s,
        "engine in worker (ocr_seconds)": worker_ocr,
        "task in worker (total_seconds)": worker_total,
        "submit -> result (client)": latency,
        "overhead: latency - engine in worker": [a - b for a, b in
                                                 zip(latency, worker_ocr, strict=True)],
        "transport: latency - task in worker": [a - b for a, b in
                                                zip(latency, worker_total, strict=True)],
    }
    stats = {name: {"n": len(v), "p50_ms": 1000 * percentile(v, 50),
                    "p95_ms": 1000 * percentile(v, 95), "mean_ms": 1000 * sum(v) / len(v)}
             for name, v in series.items()}
    table = Table(f"Per-job overhead: {jobs} sequential jobs of a 240x40 PNG "
                  f"(tesseract read {text.strip()!r})",
                  ["what", "n", "p50 ms", "p95 ms", "mean ms"])
    for name, s in stats.items():
        table.rows.append([name, s["n"], s["p50_ms"], s["p95_ms"], s["mean_ms"]])
    engine_p50 = median(engine_s)
    report = Report("overhead", tables=[table], data={
        "jobs": jobs, "poll_seconds": POLL, "image_bytes": len(data), "text": text.strip(),
        "stats": stats, "series_s": series})
    report.ratios += [
        Ratio("latency p50 / engine p50", percentile(latency, 50) / engine_p50,
              note=f"engine p50 {1000 * engine_p50:.1f} ms; no goal"),
        Ratio("latency p95 / engine p50", percentile(latency, 95) / engine_p50,
              note="no goal"),
    ]
    report.notes.append(f"the client polls every {POLL * 1000:.0f} ms; Celery's own "
                        "result.get() would subscribe instead")
    report.figure = plot(series)
    return report


def plot(series: dict[str, list[float]]) -> Any:
    fig, axes = new_figure(width=7)
    ax = axes[0][0]
    names = ["engine recognize (direct)", "engine in worker (ocr_seconds)",
             "task in worker (total_seconds)", "submit -> result (client)"]
    ax.boxplot([[1000 * x for x in series[n]] for n in names], vert=False, showfliers=True,
               tick_labels=names)
    ax.set_xlabel("ms")
    ax.set_xlim(left=0)
    ax.set_title("Tiny image: where the time of one job goes")
    return fig
