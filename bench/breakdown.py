"""Where a page's time goes: CPU time per step, and a sampled profile of a pool child.

1. Steps, in this process: every page of the pipeline benchmark's scans (and the
   phototest page turned 0/90/180/270 degrees, the orientation fallback) goes through
   `ocr_page` with the worker's default settings; `time.process_time` (this process's
   CPU, so other load on the machine does not count) is read around each step: the
   engine's reading(s), its orientation pass (OSD, run only when the reading was not
   upright), the skew estimate, turning/deskewing the image, and the rest (blank-page
   check, grey conversion, result building). Decoding or rendering the page is timed
   apart. Clean-up = every step that is not a reading, as a share of the reading.
2. Pool child: a Procfile worker with one pool child reads the same files as queue jobs
   while `py-spy record` samples that child (its active time, 100 Hz); the samples are
   grouped by the innermost pipeline step on the stack, so the queue's own share
   (Celery, Redis, blobs, JSON) shows beside the engine's.

Goal: clean-up <= 15 % of recognition time per page.
"""

from __future__ import annotations

import collections
import io
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from bench.common import (
    Context,
    Direct,
    Doc,
    Ratio,
    Report,
    Services,
    Table,
    edits_and_length,
    load_doc,
    new_figure,
    run_jobs,
    worker_processes,
)
from bench.pipeline import QUICK_SCANS, SCANS

GOAL_CLEANUP = 0.15
STEPS = ("read", "orientation", "skew estimate", "turn/deskew", "other")
# py-spy frames (function name, file suffix) -> step; the innermost match on a stack wins.
PROFILE_STEPS = (
    ("recognize", "tasks/engines/tesseract.py", "read (libtesseract)"),
    ("detect_orientation", "tasks/engines/tesseract.py", "orientation (OSD)"),
    ("estimate_skew", "tasks/pipeline/_preprocess.py", "skew estimate"),
    ("apply", "tasks/pipeline/_preprocess.py", "turn/deskew"),
    ("is_blank", "tasks/pipeline/blank.py", "blank check"),
    ("render_page", "tasks/pipeline/pdf/_render.py", "render PDF page"),
    ("plan_pdf", "tasks/pipeline/pdf/_read.py", "plan PDF"),
    ("iter_image_pages", "tasks/pipeline/images.py", "decode image"),
    ("ocr_page", "tasks/pipeline/page_reading.py", "other page work"),
)


class _Clock:
    """CPU seconds per step of the page being read."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)

    def wrap(self, step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[step] += time.process_time() - started
        return timed


class _TimedEngine:
    """The real engine, its reading and orientation pass timed (attributes pass through)."""

    def __init__(self, engine: Any, clock: _Clock) -> None:
        self._engine = engine
        self.recognize = clock.wrap("read", engine.recognize)
        self.detect_orientation = clock.wrap("orientation", engine.detect_orientation)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


@contextmanager
def _timed_steps(clock: _Clock) -> Iterator[None]:
    from tasks.pipeline import _preprocess as preprocess
    from tasks.pipeline import page_reading

    class TimedCorrection(preprocess.Correction):
        def apply(self, image: Any) -> Any:
            if not (self.rotation or self.skew):
                return image
            return clock.wrap("turn/deskew", super().apply)(image)

    with mock.patch.object(page_reading, "estimate_skew",
                           clock.wrap("skew estimate", preprocess.estimate_skew)), \
            mock.patch.object(page_reading, "Correction", TimedCorrection):
        yield


def page_images(doc: Doc, direct: Direct) -> Iterator[tuple[int, Any, float]]:
    """(number, page image, CPU seconds to decode or render it) of every page."""
    import pymupdf

    from tasks.pipeline.images import iter_image_pages
    from tasks.pipeline.pdf import render_page
    from tasks.records.formats import sniff_format

    fmt = sniff_format(doc.data)
    if fmt == "pdf":
        pdf = pymupdf.open(stream=doc.data, filetype="pdf")
        try:
            for number in range(1, pdf.page_count + 1):
                started = time.process_time()
                image = render_page(pdf, number, direct.settings, mode=direct.engine.page_mode)
                yield number, image, time.process_time() - started
        finally:
            pdf.close()
        return
    pages = iter_image_pages(doc.data, fmt, None, direct.settings)
    while True:
        started = time.process_time()
        item = next(pages, None)
        if item is None:
            return
        yield item[0], item[3], time.process_time() - started


def page_truth(doc: Doc, number: int) -> str | None:
    """Ground truth of one page: the corpus separates pages with form feeds."""
    if doc.truth is None:
        return None
    parts = doc.truth.split("\f")
    return parts[number - 1] if len(parts) > 1 else doc.truth


def cer(truth: str, text: str) -> float:
    edits, length = edits_and_length(truth, text)
    return edits / length


def rotated_doc() -> Doc:
    """The phototest scan as a 4-page PDF, turned 0, 90, 180 and 270 degrees."""
    from PIL import Image

    from devkit.pdf_fixtures import image_pdf

    base = load_doc("scan_tess_phototest.tif")
    scan = Image.open(io.BytesIO(base.data)).convert("L")
    data = image_pdf([scan.rotate(a, expand=True) for a in (0, 90, 180, 270)])
    return Doc("phototest turned 0/90/180/270", data, base.truth)


def step_rows(docs: list[Doc]) -> list[dict[str, Any]]:
    from tasks.pipeline.documents import ocr_page, recognize_options
    from tasks.records.request import JobRequest

    direct = Direct()
    rows = []
    try:
        options = recognize_options(JobRequest(source="blob", filename="x", mode="ocr"))
        warm = next(page_images(docs[0], direct))[1]
        ocr_page(1, warm, direct.engine, options, direct.settings)
        for doc in docs:
            for number, image, decode in page_images(doc, direct):
                clock = _Clock()
                engine = _TimedEngine(direct.engine, clock)
                with _timed_steps(clock):
                    started = time.process_time()
                    page = ocr_page(number, image, engine,  # type: ignore[arg-type]
                                    options, direct.settings)
                    total = time.process_time() - started
                steps = dict(clock.seconds)
                steps["other"] = max(0.0, total - sum(steps.values()))
                cleanup = total - steps.get("read", 0.0)
                truth = page_truth(doc, number)
                rows.append({"file": doc.name, "page": number, "decode": decode,
                             "cer": None if truth is None else cer(truth, page.text),
                             "total": total, "steps": steps, "cleanup": cleanup,
                             "cleanup_share": cleanup / max(1e-9, steps.get("read", 0.0)),
                             "rotation": page.rotation, "skew": page.skew,
                             "readings": 2 if page.rotation else 1})
                image.close()
    finally:
        direct.close()
    return rows


def profile_child(ctx: Context, docs: list[Doc]) -> dict[str, Any]:
    """py-spy on the one pool child of a worker while it reads `docs` as queue jobs."""
    if shutil.which("py-spy") is None:
        return {"skipped": "py-spy is not installed (requirements-bench.txt)"}
    raw = ctx.workdir / "py-spy.txt"
    jobs = [(d.data, {"filename": d.name, "mode": "ocr"}) for d in docs]
    with Services(ctx.workdir) as services, \
            services.stack(OCR_CONCURRENCY="1") as (worker, client):
        run_jobs(client, jobs[:1])  # warm-up: the engine is loaded, imports done
        children = worker_processes(worker)[1:]
        if len(children) != 1:
            return {"skipped": f"expected one pool child, found {len(children)}"}
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(children[0].pid),
                                "--rate", "100", "--format", "raw", "--nonblocking",
                                "--output", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # attached before the first job arrives
        seconds, _ = run_jobs(client, jobs)
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
    if not raw.is_file():
        return {"skipped": f"py-spy wrote nothing: {err.strip()[-300:]}"}
    shares = classify(raw.read_text())
    return {"seconds": seconds, "samples": sum(shares.values()), "by_step": shares}


def classify(collapsed: str) -> dict[str, int]:
    """Samples per step from py-spy's collapsed stacks ("f (file:line);g (...) count")."""
    out: dict[str, int] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        step = "queue, Celery, Redis, blobs"
        for frame in reversed(stack.split(";")):
            name, _, where = frame.partition(" (")
            match = next((s for f, path, s in PROFILE_STEPS
                          if name.rsplit(".", 1)[-1] == f and path in where), None)
            if match is not None:
                step = match
                break
        out[step] += int(count)
    return dict(out)


def run(ctx: Context) -> Report:
    docs = [load_doc(n) for n in (QUICK_SCANS if ctx.quick else SCANS)]
    rows = step_rows([*docs, rotated_doc()])
    report = Report("breakdown")
    table = Table("CPU seconds per page and step (time.process_time, this process), "
                  "default settings",
                  ["file", "page", "decode/render", *STEPS, "clean-up", "clean-up / read",
                   "rotation", "skew", "CER"])
    for row in rows:
        table.rows.append([row["file"], row["page"], row["decode"],
                           *(row["steps"].get(s, 0.0) for s in STEPS), row["cleanup"],
                           f"{row['cleanup_share']:.1%}", row["rotation"], row["skew"],
                           "" if row["cer"] is None else f"{row['cer']:.2%}"])
    upright = [r for r in rows if not r["rotation"]]
    turned = [r for r in rows if r["rotation"]]
    totals = {s: sum(r["steps"].get(s, 0.0) for r in upright) for s in STEPS}
    pooled = sum(r["cleanup"] for r in upright) / max(1e-9, totals["read"])
    worst = max(upright, key=lambda r: r["cleanup_share"])
    table.rows.append(["all upright pages", len(upright),
                       sum(r["decode"] for r in upright), *totals.values(),
                       sum(r["cleanup"] for r in upright), f"{pooled:.1%}", "", "", ""])
    report.tables.append(table)

    profile = profile_child(ctx, docs)
    if "skipped" in profile:
        report.notes.append(f"pool-child profile skipped: {profile['skipped']}")
    else:
        samples = max(1, profile["samples"])
        report.tables.append(Table(
            f"Pool child sampled by py-spy (100 Hz, active time) while it read the same "
            f"files as {len(docs)} queue jobs ({profile['seconds']:.1f} s wall)",
            ["step", "samples", "share"],
            [[step, n, f"{n / samples:.1%}"] for step, n in
             sorted(profile["by_step"].items(), key=lambda kv: -kv[1])]))

    report.ratios += [
        Ratio("clean-up / recognition CPU, upright pages pooled", pooled,
              f"<= {GOAL_CLEANUP:.0%}", pooled <= GOAL_CLEANUP),
        Ratio("clean-up / recognition CPU, worst upright page", worst["cleanup_share"],
              f"<= {GOAL_CLEANUP:.0%} per page", worst["cleanup_share"] <= GOAL_CLEANUP,
              note=f"{worst['file']} page {worst['page']}"),
    ]
    if turned:
        extra = sum(r["cleanup"] + r["steps"].get("read", 0.0) / 2 for r in turned) / \
            sum(r["steps"].get("read", 0.0) / 2 for r in turned)
        report.notes.append(
            f"turned pages ({len(turned)}): the first reading is not upright, so OSD runs and "
            f"the page is read again; their cost is {extra:.2f}x one reading (no goal)")
    report.notes.append("CPU time per process: other agents' load does not count in the "
                        "steps; the py-spy shares are of the child's active samples")
    report.data = {"rows": rows, "profile": profile, "cleanup_pooled": pooled}
    report.figure = plot(upright)
    return report


def plot(rows: list[dict[str, Any]]) -> Any:
    fig, axes = new_figure(width=8, height=4.5)
    ax = axes[0][0]
    labels = [f"{r['file'][:18]} p{r['page']}" for r in rows]
    left = [0.0] * len(rows)
    colors = dict(zip(STEPS, ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#999999"],
                      strict=True))
    for step in STEPS:
        values = [r["steps"].get(step, 0.0) for r in rows]
        ax.barh(labels, values, left=left, color=colors[step], label=step)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("CPU seconds per page")
    ax.set_title("Where a page's time goes (default settings)")
    ax.legend(fontsize=8)
    return fig
