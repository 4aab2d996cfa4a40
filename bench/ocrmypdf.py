"""OCRmyPDF through the queue: its own tesseract against the plugin, one run.

One scanned PDF of 24 pages built from the corpus's scans (the 6 pages of Vicksburg
three times, the skewed Linn page twice, the lorem-ipsum scan, and the tesseract
phototest, Linn and Meditations images as pages at their own resolution) goes through
OCRmyPDF 17 from the clean venv `make ocrmypdf-plugin` builds (.venv-ocrmypdf), three
ways, each `--force-ocr --output-type pdf`:

- OCRmyPDF's own tesseract (`-l eng`, `--jobs 2`);
- the plugin over the HTTP API with a token, read by a tesseract worker (2 pool
  children; `-l eng`, `--jobs 2`);
- the plugin with `--ocr-queue-engine vlm-api`, read by a vlm-api worker whose inference
  server is the simulator of devkit/inference_server.py answering every page after
  LATENCY seconds (`--jobs 8`: 8 pages in flight); tesseract in that worker finds the
  word boxes the model's words are placed on.

Per row: pages/s (pages over the `ocrmypdf` command's wall time, start-up included)
and the CER of the output PDF's text layer against the ground truth. The simulator
answers every page with one fixed sentence, so the VLM row's CER against the ground
truth means nothing: its `layer vs model` column is the CER of the text layer against
what the model said (the sentence once per page), i.e. how much of the model's text
reached OCRmyPDF's layer.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pymupdf
from PIL import Image

from bench.common import BenchError, Context, Ratio, Report, Table, new_figure, pooled_cer
from devkit.api_server import ApiServer, create_token
from devkit.corpus import CORPUS
from devkit.harness import ROOT, RedisServer, Worker
from devkit.inference_server import SimulatedInferenceServer

OCRMYPDF = ROOT / ".venv-ocrmypdf" / "bin" / "ocrmypdf"
LATENCY = 4.0  # seconds the simulated GPU server takes for a page
MODEL_TEXT = "The page as the simulated vision-language model read it"
COMMON = ["--force-ocr", "--output-type", "pdf"]
WORKER_ENV = {"OCR_CACHE_RESULTS": "0", "OCR_TESSERACT_THREADS": "1"}


def scanned_pdf(pages: int) -> tuple[bytes, list[str]]:
    """The benchmark's scanned PDF (its first `pages` pages) and each page's truth."""
    doc = pymupdf.open()
    truths: list[str] = []

    def add_pdf(name: str) -> None:
        with pymupdf.open(CORPUS / name) as src:
            doc.insert_pdf(src)
        truths.extend((CORPUS / name.replace(".pdf", ".gt.txt")).read_text().split("\f"))

    def add_image(name: str) -> None:
        with Image.open(CORPUS / name) as image:
            dpi = float((image.info.get("dpi") or (300, 300))[0]) or 300.0
            buffer = io.BytesIO()
            image.convert("L").save(buffer, "PNG")
            page = doc.new_page(width=image.width * 72 / dpi, height=image.height * 72 / dpi)
        page.insert_image(page.rect, stream=buffer.getvalue())
        truths.append((CORPUS / (name.rsplit(".", 1)[0] + ".gt.txt")).read_text())

    for _ in range(3):
        add_pdf("scan_vicksburg_ocrlayer_6p.pdf")
    add_pdf("scan_linn_skew.pdf")
    add_pdf("scan_dh_lorem_ipsum.pdf")
    for name in ("scan_tess_phototest.tif", "scan_linn.png", "scan_meditations.jpg"):
        add_image(name)
    add_pdf("scan_linn_skew.pdf")
    doc.select(list(range(pages)))
    data = bytes(doc.tobytes(garbage=3, deflate=True))
    doc.close()
    return data, truths[:pages]


def text_pages(pdf: Path) -> list[str]:
    with pymupdf.open(pdf) as doc:
        return [page.get_text() for page in doc]


def ocrmypdf(args: list[str], source: Path, out: Path) -> float:
    """Seconds `ocrmypdf ARGS source out` took; raises BenchError when it failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCR_", "PYTHON"))}
    started = time.perf_counter()
    done = subprocess.run([str(OCRMYPDF), *COMMON, *args, str(source), str(out)],
                          capture_output=True, text=True, timeout=3600, env=env, cwd="/")
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"ocrmypdf {' '.join(args[:2])} exited {done.returncode}: "
                         f"{done.stderr[-600:]}")
    return seconds


def run(ctx: Context) -> Report:
    if not OCRMYPDF.exists():
        raise BenchError("OCRmyPDF's venv is missing: `make ocrmypdf-plugin` (make bench does)")
    pages = ctx.size(24, 3)
    data, truths = scanned_pdf(pages)
    source = ctx.workdir / "scanned.pdf"
    source.write_bytes(data)
    rows: list[dict[str, Any]] = []
    (ctx.workdir / "redis").mkdir()
    redis = RedisServer(ctx.workdir / "redis")
    redis.start()
    simulated = SimulatedInferenceServer(latency=LATENCY, text=MODEL_TEXT).start()
    workers: list[Worker] = []
    api: ApiServer | None = None
    try:
        url = redis.url(1)
        workers.append(Worker(ctx.workdir / "tesseract.log",
                              {**WORKER_ENV, "REDIS_URL": url, "OCR_CONCURRENCY": "2"}))
        workers.append(Worker(ctx.workdir / "vlm-api.log", {
            **WORKER_ENV, "REDIS_URL": url, "OCR_ENGINE": "vlm-api",
            "OCR_VLM_API_URL": simulated.url, "OCR_VLM_API_MODEL": "simulated-vlm",
            "OCR_QUEUES": "ocr-vlm-api", "OCR_VLM_API_IN_FLIGHT": "8"}))
        for worker in workers:
            worker.start(timeout=180)
        api = ApiServer(ctx.workdir / "api.log", {
            "REDIS_URL": url, "OCR_VLM_API_URL": simulated.url,
            "OCR_VLM_API_MODEL": "simulated-vlm"}).start()
        token = create_token(url, "bench-ocrmypdf")
        plugin = ["--ocr-queue-url", api.url, "--ocr-queue-token", token]
        ways = [("OCRmyPDF's own tesseract", ["-l", "eng", "--jobs", "2"], False),
                ("plugin: HTTP API, tesseract worker", [*plugin, "-l", "eng", "--jobs", "2"],
                 False),
                (f"plugin: HTTP API, vlm-api worker ({LATENCY:.0f} s a page)",
                 [*plugin, "--ocr-queue-engine", "vlm-api", "--jobs", "8"], True)]
        for n, (name, args, simulated_model) in enumerate(ways):
            out = ctx.workdir / f"out{n}.pdf"
            seconds = ocrmypdf(args, source, out)
            layer = text_pages(out)
            row = {"way": name, "jobs": args[args.index("--jobs") + 1], "pages": pages,
                   "seconds": round(seconds, 1), "pages_per_s": round(pages / seconds, 3),
                   "cer": None if simulated_model else
                   round(pooled_cer(list(zip(truths, layer, strict=True))), 4),
                   "layer_vs_model": round(pooled_cer([(MODEL_TEXT, t) for t in layer]), 4)
                   if simulated_model else None}
            rows.append(row)
            print(f"  {name}: {seconds:.1f} s", flush=True)
    finally:
        if api is not None:
            api.stop()
        for worker in workers:
            worker.stop()
        simulated.stop()
        redis.stop()
    return _report(rows, pages, simulated.most_in_flight)


def _report(rows: list[dict[str, Any]], pages: int, most_in_flight: int) -> Report:
    table = Table(f"OCRmyPDF 17 on a {pages}-page scanned PDF (--force-ocr --output-type pdf)",
                  ["way", "--jobs", "s", "pages/s", "CER", "layer vs model"],
                  [[r["way"], r["jobs"], r["seconds"], r["pages_per_s"],
                    "n/a (simulated text)" if r["cer"] is None else f"{100 * r['cer']:.2f}%",
                    "" if r["layer_vs_model"] is None else f"{100 * r['layer_vs_model']:.2f}%"]
                   for r in rows])
    own, queue, vlm = rows
    report = Report("ocrmypdf", tables=[table], data={"rows": rows, "latency_s": LATENCY,
                                                      "most_in_flight": most_in_flight})
    report.ratios += [
        Ratio("plugin (tesseract workers) / OCRmyPDF's own tesseract, pages/s",
              queue["pages_per_s"] / own["pages_per_s"]),
        Ratio("plugin CER - OCRmyPDF's own CER (points)",
              100 * (queue["cer"] - own["cer"]), goal="<= 1", met=abs(
                  queue["cer"] - own["cer"]) <= 0.01),
        Ratio(f"plugin (vlm-api worker, a {LATENCY:.0f} s/page server) / OCRmyPDF's own "
              "tesseract, pages/s", vlm["pages_per_s"] / own["pages_per_s"]),
    ]
    report.notes.append(f"the simulated server held at most {most_in_flight} pages at once")
    fig, axes = new_figure(ncols=2, width=5.0)
    left, right = axes[0]
    names = ["own tesseract", "plugin, tesseract", "plugin, vlm-api"]
    left.bar(names, [r["pages_per_s"] for r in rows], color=["#777", "#1f77b4", "#ff7f0e"])
    left.set_ylabel("pages/s")
    left.set_title(f"throughput, {pages} scanned pages")
    right.bar(names[:2], [100 * r["cer"] for r in rows[:2]], color=["#777", "#1f77b4"])
    right.set_ylabel("CER of the text layer (%)")
    right.set_title("CER (the vlm-api row reads simulated text)")
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=8)
    report.figure = fig
    return report
