"""Born-digital fast path: pages/s on the 117-page digital PDF vs PyMuPDF alone.

- PyMuPDF alone: open the bytes and `page.get_text("text")` every page, in this process.
- direct: `run_document` with mode=auto (text layer where a page has text) in this process.
- queue: one job per run (mode=auto) through a Procfile worker (concurrency 1), one job
  at a time, so each figure is one document's latency, submit to result (client).
- queue, in the worker: the same jobs' `timings.total_seconds` (task start, planning
  included, to the result handed to the job's exit).

The three are measured in interleaved rounds (PyMuPDF, direct, queue, PyMuPDF, ...), so
load from other work on the machine weighs on each alike; a ratio is the median of the
rounds' own ratios. The goal: a queued job at >= 80 % of PyMuPDF's pages/s.
"""

from __future__ import annotations

from typing import Any

from bench.common import (
    Context,
    Direct,
    Ratio,
    Report,
    Services,
    Table,
    load_doc,
    median,
    new_figure,
    pooled_cer,
    run_jobs,
    timed,
)

PDF = "dig_geotopo_117p.pdf"
LIBRARY = "PyMuPDF alone (get_text)"
DIRECT = "direct run_document (mode=auto)"
QUEUE = "queue c1, one job (client)"
WORKER = "queue c1, in the worker (total_seconds)"
GOAL = 0.80  # a queued born-digital job at >= 80 % of PyMuPDF's get_text speed


def pymupdf_text(data: bytes) -> str:
    import pymupdf

    with pymupdf.open(stream=data, filetype="pdf") as doc:
        return "\f".join(page.get_text("text") for page in doc)


def run(ctx: Context) -> Report:
    doc = load_doc(PDF)
    repeats = ctx.size(9, 1)
    times: dict[str, list[float]] = {LIBRARY: [], DIRECT: [], QUEUE: [], WORKER: []}
    texts: dict[str, str] = {}
    with Services(ctx.workdir) as services, \
            services.stack(OCR_CONCURRENCY="1") as (_, client):
        direct = Direct()  # loaded once the worker runs: nothing is forked after it
        try:
            # Warm-up, not counted: imports, fonts, the worker child's first job.
            pymupdf_text(doc.data)
            direct.run(doc.data, doc.name)
            run_jobs(client, [(doc.data, {"filename": doc.name})])
            for _ in range(repeats):
                seconds, texts[LIBRARY] = timed(lambda: pymupdf_text(doc.data))
                times[LIBRARY].append(seconds)
                seconds, result = timed(lambda: direct.run(doc.data, doc.name))
                times[DIRECT].append(seconds)
                texts[DIRECT] = result["text"]
                seconds, (result,) = run_jobs(client, [(doc.data, {"filename": doc.name})],
                                              poll=0.005)
                times[QUEUE].append(seconds)
                texts[QUEUE] = texts[WORKER] = result["text"]
                times[WORKER].append(float(result["timings"]["total_seconds"]))
                pages = len(result["pages"])
                sources = {p["source"] for p in result["pages"]}
        finally:
            direct.close()

    stats: dict[str, dict[str, Any]] = {}
    for name, runs in times.items():
        stats[name] = {"seconds": runs, "median_s": median(runs),
                       "pages_per_s": pages / median(runs),
                       "cer": pooled_cer([(doc.truth or "", texts[name])])}
    base = stats[LIBRARY]["pages_per_s"]
    table = Table(f"Born-digital: {PDF}, {pages} pages, median of {repeats} interleaved "
                  "round(s)", ["run", "median s", "pages/s", "x PyMuPDF",
                               "CER vs text-layer GT"])
    for name, s in stats.items():
        table.rows.append([name, s["median_s"], s["pages_per_s"], s["pages_per_s"] / base,
                           f"{s['cer']:.2%}"])
    # Each round's PyMuPDF time over its other times: pages/s relative to PyMuPDF's.
    relative = {name: median([lib / t for lib, t in zip(times[LIBRARY], times[name],
                                                        strict=True)])
                for name in (DIRECT, QUEUE, WORKER)}
    report = Report("digital", tables=[table], data={
        "file": PDF, "pages": pages, "repeats": repeats, "page_sources": sorted(sources),
        "stats": stats, "relative_to_pymupdf": relative})
    report.notes.append(f"page sources: {', '.join(sorted(sources))}; ratios below are "
                        "medians of each round's own ratio")
    report.ratios.append(Ratio(f"{DIRECT} / PyMuPDF alone pages/s", relative[DIRECT],
                               note="no goal"))
    report.ratios.append(Ratio(f"{QUEUE} / PyMuPDF alone pages/s", relative[QUEUE],
                               goal=f">= {GOAL:.2f}", met=relative[QUEUE] >= GOAL))
    report.ratios.append(Ratio(f"{WORKER} / PyMuPDF alone pages/s", relative[WORKER],
                               goal=f">= {GOAL:.2f}", met=relative[WORKER] >= GOAL,
                               note="the job's own time in the worker"))
    report.figure = plot(stats)
    return report


def plot(stats: dict[str, dict[str, Any]]) -> Any:
    fig, axes = new_figure(width=7)
    ax = axes[0][0]
    names = list(stats)
    bars = ax.barh(names, [stats[n]["pages_per_s"] for n in names],
                   color=["#999999", "#1f77b4", "#2ca02c", "#98df8a"])
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("pages / s")
    ax.set_title("117-page born-digital PDF: text layer")
    return fig
