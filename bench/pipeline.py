"""Pipeline efficiency: pages/s through the queue at concurrency 1 and 2 vs a direct loop.

Direct: `TesseractEngine.load` + `run_document` in this process, one document after the
other, on the same bytes with the same settings as the workers. Queue: a Procfile
worker with OCR_CONCURRENCY=1 or 2, the result cache off, every job submitted at once
through `OcrClient` (blob upload, Redis, a pool child, the result backend, polling).
PDFs are read with mode=ocr, so the scanned PDF with an OCR text layer is OCRed too.

A second direct row runs two such loops at once in two processes (no queue): what two
cores give this engine on this machine, so that the queue's own loss at concurrency 2
can be told from the machine's (shared caches, memory bandwidth, a busy neighbour).

A third queue row runs at concurrency 2 with OCR_PAGE_PREVIEWS=0: what the pages'
previews cost the queue (CPU a page against the previews-on row). Beside it, each
page's preview is made again from its page image in this process (`page_preview`, the
best of 3), its CPU set against the direct loop's CPU a page: the preview's own share,
which other load barely moves.

CPU seconds are counted beside the wall clock (`time.process_time` for the direct loop;
user + system time of the worker's processes, main and pool children, for the queue),
so that a loaded machine can be told apart: "CPU-bound x direct" is what the run would
give with the cores to itself, `concurrency x direct CPU per page / queue CPU per page`.

Goals: queue at concurrency 1 >= 0.95 x direct; concurrency 2 >= 1.8 x direct.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import psutil

from bench.common import (
    Context,
    Direct,
    Ratio,
    Report,
    Services,
    Table,
    load_doc,
    new_figure,
    pooled_cer,
    run_jobs,
    timed,
    worker_pids,
    worker_processes,
)

SCANS = ("scan_tess_phototest.tif", "scan_dh_lorem_ipsum.pdf", "scan_linn.png",
         "scan_linn_skew.pdf", "scan_meditations.jpg", "scan_vicksburg_ocrlayer_6p.pdf")
QUICK_SCANS = ("scan_tess_phototest.tif", "scan_dh_lorem_ipsum.pdf")
# Warm-up (untimed): an image and a PDF, so that first-use costs of both paths are paid.
WARMUP = ("scan_tess_phototest.tif", "scan_dh_lorem_ipsum.pdf")
OPTIONS = {"mode": "ocr"}
GOAL_C1 = 0.95
GOAL_C2 = 1.8
GOAL_C2_DEFAULTS = 1.7  # with orientation and deskew on (the defaults)
GOAL_PREVIEW_SHARE = 0.03  # a page's preview: at most a few percent of the page's CPU
NO_PREVIEWS = {"OCR_PAGE_PREVIEWS": "0"}


def run(ctx: Context) -> Report:
    docs = [load_doc(n) for n in (QUICK_SCANS if ctx.quick else SCANS)]
    passes = ctx.size(2, 1)
    warm = [load_doc(n) for n in WARMUP]

    direct = Direct()
    try:
        for w in warm:
            direct.run(w.data, w.name, **OPTIONS)
        pass_seconds: list[float] = []
        direct_results: list[dict[str, Any]] = []
        cpu_started = time.process_time()
        for _ in range(passes):
            seconds, results = timed(lambda: [direct.run(d.data, d.name, **OPTIONS)
                                              for d in docs])
            pass_seconds.append(seconds)
            direct_results = results
        direct_cpu = time.process_time() - cpu_started
    finally:
        direct.close()
    pages_per_pass = sum(len(r["pages"]) for r in direct_results)
    pages = pages_per_pass * passes
    # The direct loop with every page read `eng` (no probe):
    # what the queue with its defaults (`lang=auto`) is held against.
    eng = Direct({"OCR_LANG": "eng"})
    try:
        for w in warm:
            eng.run(w.data, w.name, **OPTIONS)
        eng_runs = [timed(lambda: [eng.run(d.data, d.name, **OPTIONS) for d in docs])
                    for _ in range(passes)]
    finally:
        eng.close()
    direct_seconds = sum(pass_seconds)
    direct_ocr = sum(p_ocr(r) for r in direct_results) * passes

    rows: dict[str, dict[str, Any]] = {"direct": {
        "seconds": direct_seconds, "pages": pages, "pages_per_s": pages / direct_seconds,
        "pass_seconds": pass_seconds, "engine_seconds": direct_ocr,
        "cpu_seconds": direct_cpu, "cpu_per_page": direct_cpu / pages}}
    eng_seconds = sum(seconds for seconds, _ in eng_runs)
    rows["direct, OCR_LANG=eng"] = {
        "seconds": eng_seconds, "pages": pages, "pages_per_s": pages / eng_seconds,
        "engine_seconds": sum(p_ocr(r) for _, results in eng_runs for r in results)}
    spans = parallel_direct([d.name for d in docs], processes=2)
    wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    rows["direct x2 processes"] = {
        "seconds": wall, "pages": 2 * pages_per_pass, "pages_per_s": 2 * pages_per_pass / wall,
        "engine_seconds": sum(e for _, _, e in spans) * passes / 2, "children": 2}
    texts_match = True
    with Services(ctx.workdir) as services:
        for concurrency, env, name in ((1, {}, "queue c1"), (2, {}, "queue c2"),
                                       (2, NO_PREVIEWS, "queue c2, OCR_PAGE_PREVIEWS=0")):
            with services.stack(OCR_CONCURRENCY=str(concurrency), **env) as (worker, client):
                run_jobs(client, [(w.data, {"filename": w.name, **OPTIONS})
                                  for w in warm] * concurrency)
                jobs = [(d.data, {"filename": d.name, **OPTIONS}) for d in docs] * passes
                cpu_before = cpu_seconds(worker)
                seconds, results = run_jobs(client, jobs)
                queue_cpu = cpu_seconds(worker) - cpu_before
            texts_match &= all(r["text"] == d["text"] for r, d in
                               zip(results, direct_results * passes, strict=True))
            rows[name] = {
                "seconds": seconds, "pages": pages, "pages_per_s": pages / seconds,
                "engine_seconds": sum(p_ocr(r) for r in results),
                "task_seconds": sum(r["timings"]["total_seconds"] for r in results),
                "children": len(set().union(*(worker_pids(r) for r in results))),
                "cpu_seconds": queue_cpu, "cpu_per_page": queue_cpu / pages,
            }

    base = rows["direct"]["pages_per_s"]
    for row in rows.values():
        row["ratio"] = row["pages_per_s"] / base
        # Engine seconds per page against the direct loop: >1 when processes compete
        # for the cores, caches or memory bandwidth (or other load on the machine).
        row["engine_vs_direct"] = row["engine_seconds"] / direct_ocr
        if "cpu_per_page" in row:
            row["cpu_bound_ratio"] = row.get("children", 1) * \
                rows["direct"]["cpu_per_page"] / row["cpu_per_page"]
    preview_cpu = preview_seconds(docs)
    previews_off = rows["queue c2, OCR_PAGE_PREVIEWS=0"]
    off_rate = previews_off["pages_per_s"] / rows["queue c2"]["pages_per_s"]
    cer = pooled_cer([(d.truth, r["text"]) for d, r in zip(docs, direct_results, strict=True)
                      if d.truth is not None])

    report = Report("pipeline", data={"files": [d.name for d in docs], "passes": passes,
                                      "pages_per_pass": pages_per_pass, "rows": rows,
                                      "cer_pooled": cer, "queue_texts_equal_direct": texts_match,
                                      "preview_cpu_per_page": preview_cpu})
    table = Table(f"Pipeline efficiency: {len(docs)} scans, {pages_per_pass} pages x "
                  f"{passes} passes, tesseract, mode=ocr",
                  ["run", "pages", "seconds", "pages/s", "x direct", "engine s/page x direct",
                   "busy children", "CPU s/page", "CPU-bound x direct"])
    for name, row in rows.items():
        table.rows.append([name, row["pages"], row["seconds"], row["pages_per_s"],
                           row["ratio"], row["engine_vs_direct"], row.get("children", 1),
                           row.get("cpu_per_page"), row.get("cpu_bound_ratio")])
    report.tables.append(table)
    report.notes.append(f"pooled CER of these pages {cer:.2%}; queue texts identical to the "
                        f"direct loop: {texts_match}")
    report.ratios += [
        Ratio("queue c1 / direct pages/s", rows["queue c1"]["ratio"], f">= {GOAL_C1}",
              rows["queue c1"]["ratio"] >= GOAL_C1),
        Ratio("queue c2 / direct pages/s", rows["queue c2"]["ratio"], f">= {GOAL_C2}",
              rows["queue c2"]["ratio"] >= GOAL_C2,
              note="images are one job each; scanned PDFs fan out into page tasks"),
        Ratio("queue c2 / direct pages/s, default clean-up on both",
              rows["queue c2"]["ratio"], f">= {GOAL_C2_DEFAULTS}",
              rows["queue c2"]["ratio"] >= GOAL_C2_DEFAULTS,
              note="bench/peers.py compares with the direct loop without clean-up too"),
        Ratio("queue c2 / direct, CPU-bound (2 x direct CPU/page / queue CPU/page)",
              rows["queue c2"]["cpu_bound_ratio"], f">= {GOAL_C2_DEFAULTS}",
              rows["queue c2"]["cpu_bound_ratio"] >= GOAL_C2_DEFAULTS,
              note="what two free cores would give: robust to other load, blind to "
                   "idle waits and an unbalanced split"),
        Ratio("queue c2 with defaults (lang=auto) / direct loop with OCR_LANG=eng, pages/s",
              rows["queue c2"]["pages_per_s"] / rows["direct, OCR_LANG=eng"]["pages_per_s"],
              f">= {GOAL_C2_DEFAULTS}", rows["queue c2"]["pages_per_s"]
              / rows["direct, OCR_LANG=eng"]["pages_per_s"] >= GOAL_C2_DEFAULTS,
              note="what lang=auto costs the default path"),
        Ratio("a page's preview CPU / a page's CPU (direct loop)",
              preview_cpu / rows["direct"]["cpu_per_page"], f"<= {GOAL_PREVIEW_SHARE}",
              preview_cpu / rows["direct"]["cpu_per_page"] <= GOAL_PREVIEW_SHARE,
              note=f"page_preview on each page image, {preview_cpu * 1000:.1f} ms a page"),
        Ratio("queue c2 CPU/page, previews off / on",
              previews_off["cpu_per_page"] / rows["queue c2"]["cpu_per_page"],
              note=f"pages/s off / on {off_rate:.3f}; 1 - this is the previews' share "
                   "of the queue's CPU; no goal"),
        Ratio("queue c2 / direct x2 processes pages/s",
              rows["queue c2"]["pages_per_s"] / rows["direct x2 processes"]["pages_per_s"],
              note=f"the machine gives {rows['direct x2 processes']['ratio']:.2f}x direct "
                   "with two processes and no queue; no goal"),
    ]
    report.figure = plot(rows)
    return report


_start_together: Any = None


def _init_process(barrier: Any) -> None:
    global _start_together
    _start_together = barrier


def _direct_pass(names: list[str]) -> tuple[float, float, float]:
    """In a fresh process: load, warm up, wait for the sibling, time one pass."""
    from bench.common import Direct, load_doc

    docs = [load_doc(n) for n in names]
    direct = Direct()
    try:
        for warm in [load_doc(n) for n in WARMUP]:
            direct.run(warm.data, warm.name, **OPTIONS)
        _start_together.wait()
        start = time.time()
        results = [direct.run(d.data, d.name, **OPTIONS) for d in docs]
        return start, time.time(), sum(p_ocr(r) for r in results)
    finally:
        direct.close()


def parallel_direct(names: list[str], processes: int) -> list[tuple[float, float, float]]:
    """(start, end, engine seconds) of one direct pass in each of `processes` processes."""
    mp = multiprocessing.get_context("spawn")  # a clean interpreter, as a pool child has
    barrier = mp.Barrier(processes)
    with ProcessPoolExecutor(processes, mp_context=mp, initializer=_init_process,
                             initargs=(barrier,)) as pool:
        return list(pool.map(_direct_pass, [names] * processes))


def preview_seconds(docs: list[Any]) -> float:
    """CPU seconds a page's preview takes: `page_preview` on each page image, best of 3."""
    from bench.breakdown import page_images  # breakdown imports this module's scans
    from tasks.pipeline.previews import page_preview

    direct = Direct()
    seconds: list[float] = []
    try:
        for doc in docs:
            for _, image, _ in page_images(doc, direct):
                best = float("inf")
                for _ in range(3):
                    started = time.process_time()
                    page_preview(image)
                    best = min(best, time.process_time() - started)
                seconds.append(best)
                image.close()
    finally:
        direct.close()
    return sum(seconds) / len(seconds)


def cpu_seconds(worker: Any) -> float:
    """User + system CPU seconds of a worker's main process and pool children so far."""
    total = 0.0
    for process in worker_processes(worker):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def p_ocr(result: dict[str, Any]) -> float:
    return float(result["timings"]["ocr_seconds"])


def plot(rows: dict[str, dict[str, Any]]) -> Any:
    fig, axes = new_figure(width=7)
    ax = axes[0][0]
    names = list(rows)
    values = [rows[n]["pages_per_s"] for n in names]
    ax.bar(names, values, color=["#777777", "#aaaaaa", "#999999", "#1f77b4", "#2ca02c",
                                 "#98df8a"])
    base = rows["direct"]["pages_per_s"]
    ax.axhline(base * GOAL_C1, ls="--", color="#1f77b4", lw=1, label=f"goal c1: {GOAL_C1} x direct")
    ax.axhline(base * GOAL_C2, ls="--", color="#2ca02c", lw=1, label=f"goal c2: {GOAL_C2} x direct")
    for i, v in enumerate(values):
        ax.annotate(f"{v:.2f}\n({v / base:.2f}x)", (i, v), ha="center", va="bottom", fontsize=8)
    ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    ax.set_ylabel("pages / s")
    ax.set_title("Corpus scans: direct loop vs queue")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, max(values + [base * GOAL_C2]) * 1.3)
    return fig
