"""Blank pages: a 500-page blank PDF end to end, and the detector's cost.

- queue, blank pages skipped (the default): one job of the 500-page blank PDF (about
  61 KB) through a Procfile worker with 2 children; every page must
  come back `source: blank`.
- queue, OCR_SKIP_BLANK_PAGES=0 (every page OCR'd): the same kind of PDF, fewer pages
  (every page is rendered at 300 dpi and read by tesseract), reported per page and
  extrapolated to 500, so the bench stays short.
- detector, in this process: `ink_report` on a 300-dpi A4 scan (blank with grain, and a
  page of text), and `plan_pdf` per page of the blank PDF.

Goal: 500 blank pages < 10 s end to end.
"""

from __future__ import annotations

from typing import Any

from bench.common import (
    BenchError,
    Context,
    Ratio,
    Report,
    Services,
    Table,
    median,
    run_jobs,
    timed,
)

GOAL_SECONDS = 10.0


def blank_pdf(pages: int) -> bytes:
    import pymupdf

    doc = pymupdf.open()
    for _ in range(pages):
        doc.new_page()  # Letter, nothing drawn: a word processor's empty pages
    return bytes(doc.tobytes(garbage=3, deflate=True))


def detector_ms(repeats: int) -> dict[str, float]:
    """Median milliseconds of the in-process checks."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from tasks.pipeline.blank import ink_report
    from tasks.pipeline.pdf import plan_pdf
    from tasks.settings import Settings

    rng = np.random.default_rng(7)
    grain = np.clip(rng.normal(240, 10, (3508, 2480)), 0, 255).astype(np.uint8)
    blank = Image.fromarray(grain, "L")
    text = Image.new("L", (2480, 3508), 250)
    draw = ImageDraw.Draw(text)
    font = ImageFont.load_default(size=42)
    for line in range(60):
        draw.text((200, 200 + line * 52), "The quick brown fox jumps over the lazy dog " * 2,
                  fill=0, font=font)
    settings = Settings.from_env({})
    data = blank_pdf(500)

    def plan() -> None:
        plan_pdf(data, None, None, "auto", settings).doc.close()

    out = {}
    for name, fn in (("ink_report, blank A4 300 dpi", lambda: ink_report(blank)),
                     ("ink_report, text A4 300 dpi", lambda: ink_report(text)),
                     ("plan_pdf, 500 blank pages (per page)", plan)):
        times = [timed(fn)[0] for _ in range(repeats)]
        per = 500 if name.startswith("plan_pdf") else 1
        out[name] = median(times) * 1000 / per
    return out


def run(ctx: Context) -> Report:
    pages = 500
    baseline_pages = ctx.size(40, 4)
    data = blank_pdf(pages)
    with Services(ctx.workdir) as services:
        with services.stack(OCR_CONCURRENCY="2") as (_, client):
            run_jobs(client, [(blank_pdf(2), {"filename": "warm.pdf"})])
            skipped_s, (skipped,) = run_jobs(client, [(data, {"filename": "blank.pdf"})])
        sources = {p["source"] for p in skipped["pages"]}
        if sources != {"blank"} or len(skipped["pages"]) != pages:
            raise BenchError(f"expected {pages} blank pages, got {sources}")
        with services.stack(OCR_CONCURRENCY="2", OCR_SKIP_BLANK_PAGES="0") as (_, client):
            run_jobs(client, [(blank_pdf(2), {"filename": "warm.pdf"})])
            off_s, (off,) = run_jobs(client, [(blank_pdf(baseline_pages),
                                               {"filename": "blank-off.pdf"})])
    off_per_page = off_s / baseline_pages
    checks = detector_ms(ctx.size(5, 1))

    table = Table(f"Blank pages: {pages}-page blank PDF ({len(data) / 1024:.0f} KB), "
                  "queue with 2 children",
                  ["run", "pages", "seconds", "ms / page", "500 pages (s)"])
    table.rows.append(["skipped (default)", pages, skipped_s, skipped_s * 1000 / pages,
                       skipped_s])
    table.rows.append(["OCR_SKIP_BLANK_PAGES=0", baseline_pages, off_s, off_per_page * 1000,
                       f"{off_per_page * pages:.0f} (extrapolated)"])
    checks_table = Table("Detector cost in one process (median)", ["check", "ms"])
    checks_table.rows.extend([name, ms] for name, ms in checks.items())
    data_out: dict[str, Any] = {
        "pages": pages, "pdf_bytes": len(data), "skipped_seconds": skipped_s,
        "off_pages": baseline_pages, "off_seconds": off_s,
        "off_extrapolated_500_s": off_per_page * pages,
        "off_sources": sorted({p["source"] for p in off["pages"]}),
        "worker_timings": skipped["timings"], "detector_ms": checks}
    report = Report("blank", tables=[table, checks_table], data=data_out)
    report.ratios.append(Ratio("500 blank pages end to end (s)", skipped_s,
                               goal=f"< {GOAL_SECONDS:.0f} s", met=skipped_s < GOAL_SECONDS))
    report.ratios.append(Ratio("blank page cost, skipped / OCR'd (per page)",
                               skipped_s / pages / off_per_page, note="lower is better"))
    report.notes.append(f"without skipping, {baseline_pages} blank pages took {off_s:.1f} s; "
                        f"500 would take about {off_per_page * pages:.0f} s")
    return report
