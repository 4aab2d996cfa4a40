"""Escalation: tesseract reads every page, a vlm-api worker reads the unsure ones again.

The mix: English corpus scans with ground truth, each as given and in copies degraded
with Pillow (reduced, bilinear, then a Gaussian blur: ½ size and 0.8, ⅓ and 1.0, ¼
and 1.2, as docs/escalation.md's table), one one-page PNG job each. Two Procfile
workers on one Redis: tesseract with the fleet's escalation on (OCR_ESCALATE_ENGINE=
vlm-api, OCR_ESCALATE_BELOW's default 0.85), and vlm-api (OCR_QUEUES=ocr-vlm-api,
OCR_VLM_API_IN_FLIGHT=IN_FLIGHT) in front of a simulated OpenAI-compatible server in
this process (devkit/inference_server.py). The server is an oracle: it answers each
page with its ground truth (it finds the page by a thumbnail of the image it is sent).

1. Throughput. The server answers each request LATENCY s after it arrives; the worker
   sends IN_FLIGHT at once, so the server reads IN_FLIGHT / LATENCY pages/s at most:
   it stands for a GPU server at its capacity. The mix with escalation, and the same
   mix read by vlm-api alone (`engine=vlm-api`), in turned orders over two rounds:
   pages/s from the first submit to the last result (pooled over the rounds), the
   pages sent to the server, each worker's CPU seconds a page (psutil, parent and
   children). Their ratios are of one run.
2. The curve. The mix at several `escalate_below` thresholds, the server answering at
   once: the pooled CER against the ground truth (tasks/evaluation/scoring.py, as
   `submit.py eval` scores) and the share of pages escalated. Threshold 0 is tesseract
   alone, 1 every page escalated. The oracle reads every escalated page right: the
   curve is the most escalation can give; a real model's CER adds to it.

`--quick`: three scans as given and at ¼ size, 1-s answers, one round, thresholds 0,
0.85 and 1.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from bench.common import (
    BASE_ENV,
    BenchError,
    Context,
    Ratio,
    Report,
    Services,
    Table,
    new_figure,
)
from bench.vlm_fleet import cpu_seconds
from devkit.corpus import CORPUS, CORPUS_MISSING
from devkit.harness import Worker
from devkit.inference_server import SimulatedInferenceServer

SCANS = ("scan_tess_phototest.tif", "scan_linn.png", "scan_meditations.jpg",
         "scan_dh_lorem_ipsum.pdf")
# (name, size divisor, blur radius): docs/escalation.md's degraded copies.
VARIANTS = (("as given", 1, 0.0), ("1/2, blur 0.8", 2, 0.8), ("1/3, blur 1.0", 3, 1.0),
            ("1/4, blur 1.2", 4, 1.2))
THRESHOLDS = (0.0, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
IN_FLIGHT = 4
COMMON = {"OCR_CACHE_RESULTS": "0"}
THUMB = 32


def sizes(ctx: Context) -> dict[str, Any]:
    if ctx.quick:
        return {"scans": SCANS[:3], "variants": (VARIANTS[0], VARIANTS[3]),
                "latency": 1.0, "thresholds": (0.0, 0.85, 1.0), "rounds": 1}
    return {"scans": SCANS, "variants": VARIANTS, "latency": 3.0, "thresholds": THRESHOLDS,
            "rounds": 2}


@dataclass(frozen=True)
class Page:
    """One page of the mix: its scan, how it was degraded, its PNG, its ground truth."""

    scan: str
    variant: str
    png: bytes
    truth: str

    @property
    def name(self) -> str:
        return f"{self.scan} ({self.variant})"


def scan_image(name: str) -> Image.Image:
    """A corpus scan as a grey image (a scanned PDF's first page rendered at 300 dpi)."""
    path = CORPUS / name
    if not path.is_file():
        raise BenchError(f"corpus file missing: {path}" if CORPUS.is_dir() else CORPUS_MISSING)
    if name.endswith(".pdf"):
        import pymupdf

        with pymupdf.open(path) as doc:
            pixmap = doc[0].get_pixmap(dpi=300, colorspace=pymupdf.csGRAY)
            return Image.frombytes("L", (pixmap.width, pixmap.height), pixmap.samples)
    with Image.open(path) as image:
        return image.convert("L")


def degraded(image: Image.Image, divisor: int, blur: float) -> Image.Image:
    if divisor == 1:
        return image
    small = image.resize((image.width // divisor, image.height // divisor),
                         Image.Resampling.BILINEAR)
    return small.filter(ImageFilter.GaussianBlur(blur))


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def the_mix(scans: tuple[str, ...], variants: tuple[tuple[str, int, float], ...]
            ) -> tuple[list[Page], dict[str, Image.Image]]:
    """The pages of the mix, scan by scan; and each scan as given (the oracle's key)."""
    pages, clean = [], {}
    for scan in scans:
        image = scan_image(scan)
        clean[scan] = image
        truth = (CORPUS / (scan.rsplit(".", 1)[0] + ".gt.txt")).read_text()
        for variant, divisor, blur in variants:
            pages.append(Page(scan, variant, png(degraded(image, divisor, blur)), truth))
    return pages, clean


def thumbnail(image: Image.Image) -> np.ndarray:
    """A small grey copy, centred and of unit norm: what the oracle compares."""
    small = np.asarray(image.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX),
                       dtype=np.float32).ravel()
    small -= small.mean()
    return small / (float(np.linalg.norm(small)) or 1.0)


class Oracle:
    """The server's answer to a page: the ground truth of the scan it looks most like.

    Every degraded copy of a scan has that scan's truth, so the nearest scan as given
    (its thumbnail, in each of its four orientations) names it.
    """

    def __init__(self, clean: dict[str, Image.Image], truths: dict[str, str]) -> None:
        self.keys = [(scan, thumbnail(image.rotate(angle, expand=True)))
                     for scan, image in clean.items() for angle in (0, 90, 180, 270)]
        self.truths = truths

    def __call__(self, body: dict[str, Any]) -> str:
        url = _image_url(body)
        if url is None:
            return ""
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
            seen = thumbnail(image)
        scan = max(self.keys, key=lambda key: float(np.dot(key[1], seen)))[0]
        return self.truths[scan]


def _image_url(node: Any) -> str | None:
    """The first `data:image/...` URL in a chat request's body."""
    if isinstance(node, str):
        return node if node.startswith("data:image/") else None
    children = node.values() if isinstance(node, dict) else node \
        if isinstance(node, list) else ()
    for child in children:
        if (found := _image_url(child)) is not None:
            return found
    return None


@contextmanager
def fleet(services: Services, server: SimulatedInferenceServer
          ) -> Iterator[tuple[Any, list[Worker]]]:
    """A tesseract worker with escalation on and a vlm-api worker, on one database."""
    from tasks.client import OcrClient
    from tasks.settings import Settings

    url = services.redis.url(1)
    cpu = Worker(services.workdir / "worker-tesseract.log", {
        **BASE_ENV, **COMMON, "REDIS_URL": url, "OCR_ESCALATE_ENGINE": "vlm-api"})
    gpu = Worker(services.workdir / "worker-vlm-api.log", {
        **BASE_ENV, **COMMON, "REDIS_URL": url, "OCR_ENGINE": "vlm-api",
        "OCR_QUEUES": "ocr-vlm-api", "OCR_VLM_API_URL": server.url,
        "OCR_VLM_API_MODEL": server.model, "OCR_VLM_API_IN_FLIGHT": str(IN_FLIGHT),
        "OCR_VLM_TEMPERATURES": "0"})
    client = OcrClient(Settings.from_env({**BASE_ENV, "REDIS_URL": url}))
    try:
        for worker in (cpu, gpu):
            worker.spawn()
        for worker in (cpu, gpu):
            worker.wait_ready(180)
        yield client, [cpu, gpu]
    finally:
        for worker in (cpu, gpu):
            worker.stop()
        client.close()


def read_mix(client: Any, server: SimulatedInferenceServer, pages: list[Page],
             **options: Any) -> dict[str, Any]:
    """Every page of the mix at once, as one-page jobs: seconds, results, pages sent."""
    asked = len(server.requests)
    started = time.perf_counter()
    ids = [client.submit(page.png, filename=f"{i}.png", no_cache=True, **options)
           for i, page in enumerate(pages)]
    results = client.wait(ids, timeout=1800, poll=0.05)
    seconds = time.perf_counter() - started
    ordered = [results[i] for i in ids]
    failed = [r for r in ordered if r.get("status") != "SUCCESS"]
    if failed:
        raise BenchError(f"{len(failed)} of {len(ids)} jobs failed, first: "
                         f"{str(failed[0])[:1500]}")
    return {"seconds": seconds, "results": ordered, "sent": len(server.requests) - asked}


def scored(pages: list[Page], run: dict[str, Any]) -> dict[str, Any]:
    """A run's pooled CER, its pages escalated and why, and each page's reading."""
    from tasks.evaluation.scoring import score, total

    rows, scores = [], []
    for page, result in zip(pages, run["results"], strict=True):
        read = (result.get("pages") or [{}])[0]
        one = score(page.truth, str(read.get("text") or ""))
        scores.append(one)
        escalation = read.get("escalation") or {}
        rows.append({"page": page.name, "engine": read.get("engine"),
                     "confidence": read.get("confidence"), "cer": one.to_json()["cer"],
                     "escalated": bool(escalation) and not escalation.get("error"),
                     "reason": escalation.get("reason"),
                     "first_confidence": escalation.get("confidence"),
                     "error": (escalation.get("error") or {}).get("code")})
    pooled = total(scores)
    escalated = sum(1 for r in rows if r["escalated"])
    return {"cer": pooled.char_edits / pooled.chars if pooled.chars else 0.0,
            "escalated": escalated, "share": escalated / len(pages), "pages": rows,
            "kept_first": sum(1 for r in rows if r["error"])}


def run(ctx: Context) -> Report:
    report = Report("escalation")
    size = sizes(ctx)
    latency = size["latency"]
    pages, clean = the_mix(size["scans"], size["variants"])
    truths = {page.scan: page.truth for page in pages}
    server = SimulatedInferenceServer(latency=latency)
    server.answer = Oracle(clean, truths)
    server.start()
    throughput: dict[str, dict[str, Any]] = {}
    curve: list[dict[str, Any]] = []
    try:
        with Services(ctx.workdir) as services, fleet(services, server) as (client, workers):
            for engine in ("tesseract", "vlm-api"):  # each pool's children load their engine
                read_mix(client, server, [pages[-1]], engine=engine)
            for turn in range(size["rounds"]):  # turned orders: A B, then B A
                runs = (("escalation", "tesseract"), ("all VLM", "vlm-api"))
                for label, engine in runs if turn % 2 == 0 else runs[::-1]:
                    before = [cpu_seconds(w) for w in workers]
                    done = read_mix(client, server, pages, engine=engine)
                    cpu = [cpu_seconds(w) - b for w, b in zip(workers, before, strict=True)]
                    throughput.setdefault(label, {"rounds": []})["rounds"].append({
                        "seconds": round(done["seconds"], 2), "sent": done["sent"],
                        "pages_per_s": len(pages) / done["seconds"],
                        "cpu_s": {"tesseract": round(cpu[0], 2), "vlm-api": round(cpu[1], 2)},
                        **scored(pages, done)})
                    print(f"{label}: {len(pages) / done['seconds']:.2f} pages/s, "
                          f"{done['sent']} of {len(pages)} pages sent to the server, worker "
                          f"CPU {cpu[0]:.1f} + {cpu[1]:.1f} s", flush=True)
            server.latency = 0.0
            for below in size["thresholds"]:
                done = read_mix(client, server, pages, engine="tesseract", escalate="vlm-api",
                                escalate_below=below)
                point = {"escalate_below": below, "sent": done["sent"],
                         "seconds": round(done["seconds"], 2), **scored(pages, done)}
                curve.append(point)
                print(f"escalate below {below:g}: CER {point['cer']:.2%}, "
                      f"{point['share']:.0%} escalated", flush=True)
    finally:
        server.stop()
    add_results(report, ctx, pages, throughput, curve, latency)
    return report


def add_results(report: Report, ctx: Context, pages: list[Page],
                throughput: dict[str, dict[str, Any]], curve: list[dict[str, Any]],
                latency: float) -> None:
    for row in throughput.values():
        rounds = row["rounds"]
        row["pages_per_s"] = len(rounds) * len(pages) / sum(r["seconds"] for r in rounds)
        row["sent"] = rounds[0]["sent"]
        row["cer"] = rounds[0]["cer"]
        row["cpu_s_per_page"] = {w: round(sum(r["cpu_s"][w] for r in rounds)
                                          / (len(rounds) * len(pages)), 3)
                                 for w in ("tesseract", "vlm-api")}
    escalating, alone = throughput["escalation"], throughput["all VLM"]
    speed = Table(f"{len(pages)} one-page scans (tesseract + vlm-api, escalation at 0.85) "
                  f"and the same read by vlm-api alone, {len(escalating['rounds'])} rounds "
                  f"in turned orders; the server answers each page {latency:g} s after it "
                  f"arrives, {IN_FLIGHT} at once",
                  ["run", "pages/s (pooled)", "each round", "pages sent to the server",
                   "share of pages", "server seconds", "tesseract CPU s a page",
                   "vlm-api CPU s a page", "CER %"])
    for label, row in throughput.items():
        speed.rows.append([label, round(row["pages_per_s"], 3),
                           " ".join(f"{r['pages_per_s']:.2f}" for r in row["rounds"]),
                           row["sent"], round(row["sent"] / len(pages), 3),
                           round(row["sent"] * latency / IN_FLIGHT, 1),
                           row["cpu_s_per_page"]["tesseract"],
                           row["cpu_s_per_page"]["vlm-api"], round(100 * row["cer"], 2)])
    table = Table("CER against the share escalated, the server an oracle (it answers each "
                  "page's ground truth at once)",
                  ["escalate below", "pages escalated", "share", "CER %", "kept first"])
    for point in curve:
        table.rows.append([point["escalate_below"], point["escalated"],
                           round(point["share"], 3), round(100 * point["cer"], 2),
                           point["kept_first"]])
    first = next((p for p in curve if p["escalate_below"] == 0.0), None)
    every = next((p for p in curve if p["escalate_below"] == 1.0), None)
    per_page = Table("each page: tesseract's mean word confidence and CER alone (threshold "
                     "0), and whether it escalates at 0.85",
                     ["page", "confidence", "tesseract CER %", "escalates at 0.85"])
    confidences = {r["page"]: r["first_confidence"] for r in (every or {}).get("pages", [])}
    for row, at in zip((first or {}).get("pages", []), escalating["rounds"][0]["pages"],
                       strict=False):
        per_page.rows.append([row["page"], confidences.get(row["page"]),
                              None if row["cer"] is None else round(100 * row["cer"], 1),
                              at["reason"] or "no"])
    report.tables += [speed, table, per_page]
    report.data = {"pages": [p.name for p in pages], "latency": latency,
                   "in_flight": IN_FLIGHT, "throughput": throughput, "curve": curve}
    sent = escalating["sent"] / alone["sent"] if alone["sent"] else 0.0
    report.ratios += [
        Ratio("pages sent to the server: escalation at 0.85 / all VLM", sent),
        Ratio("pages/s: escalation at 0.85 / all VLM (pooled over the rounds)",
              escalating["pages_per_s"] / alone["pages_per_s"]),
    ]
    at = next((p for p in curve if p["escalate_below"] == 0.85), None)
    if first is not None and at is not None and first["cer"]:
        report.ratios.append(Ratio("CER with an oracle at 0.85 / tesseract alone",
                                   at["cer"] / first["cer"]))
    report.notes.append(
        f"the server reads at most {IN_FLIGHT} pages at once, each in {latency:g} s: "
        f"{IN_FLIGHT / latency:.2f} pages/s, a GPU server at its capacity; the tesseract "
        "pool's own pages/s is bounded by this machine's cores, shared with the vlm-api "
        "worker, the simulated server and the bench itself")
    report.notes.append(
        "server seconds: the pages sent x the answer's seconds / the pages it reads at "
        "once, the time the server is full; a server shared by a fleet reads "
        f"{1 / sent if sent else 0:.1f}x the pages with escalation at 0.85")
    report.notes.append(
        "the oracle answers every escalated page right: a real model's errors add to "
        "the curve's CER, never its share")
    report.figure = _figure(curve, throughput, len(pages))


def _figure(curve: list[dict[str, Any]], throughput: dict[str, dict[str, Any]],
            pages: int) -> Any:
    fig, axes = new_figure(ncols=2, width=5.0)
    ax = axes[0][0]
    ax.plot([100 * p["share"] for p in curve], [100 * p["cer"] for p in curve], "o-",
            label="tesseract + oracle")
    labels: dict[tuple[float, float], list[str]] = {}
    for point in curve:  # thresholds that give the same point share one label
        at = (100 * point["share"], 100 * point["cer"])
        labels.setdefault(at, []).append(f"{point['escalate_below']:g}")
    for i, (at, names) in enumerate(labels.items()):  # above and below in turn
        ax.annotate(", ".join(names), at, textcoords="offset points",
                    xytext=(4, 4 if i % 2 == 0 else -11), fontsize=8)
    ax.set_xlabel("pages escalated %")
    ax.set_ylabel("CER %")
    ax.set_title("CER against the share escalated (labels: escalate_below)")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    runs = list(throughput)
    ax.bar(runs, [throughput[run]["pages_per_s"] for run in runs])
    twin = ax.twinx()
    twin.plot(runs, [throughput[run]["sent"] for run in runs], "ko", label="pages sent")
    twin.set_ylim(0, pages * 1.1)
    twin.set_ylabel("pages sent to the server (dots)")
    ax.set_ylabel("pages/s (bars)")
    ax.set_title(f"{pages} pages: escalation at 0.85 and all VLM")
    return fig
