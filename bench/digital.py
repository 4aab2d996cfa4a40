"""Born-digital fast path: pages/s on the 117-page digital PDF vs PyMuPDF alone.

- PyMuPDF alone: open the bytes and `page.get_text("text")` every page, in this process.
- direct: `run_document` with mode=auto (text layer where a page has text) in this process.
- queue: one job per run (mode=auto) through a Procfile worker (concurrency 1), one job
  at a time, so each figure is one document's latency.

No goal is set by issue 7; the ratios say what the queue costs over the library.
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


def pymupdf_text(data: bytes) -> str:
    import pymupdf

    with pymupdf.open(stream=data, filetype="pdf") as doc:
        return "\f".join(page.get_text("text") for page in doc)


def run(ctx: Context) -> Report:
    doc = load_doc(PDF)
    repeats = ctx.size(5, 1)
    pymupdf_text(doc.data)  # warm-up: imports and fonts
    library = [timed(lambda: pymupdf_text(doc.data)) for _ in range(repeats)]

    direct = Direct()
    try:
        direct.run(doc.data, doc.name)
        direct_runs = [timed(lambda: direct.run(doc.data, doc.name)) for _ in range(repeats)]
    finally:
        direct.close()
    pages = len(direct_runs[0][1]["pages"])
    sources = {p["source"] for p in direct_runs[0][1]["pages"]}

    queue_runs: list[tuple[float, dict[str, Any]]] = []
    with Services(ctx.workdir) as services, \
            services.stack(OCR_CONCURRENCY="1") as (_, client):
        run_jobs(client, [(doc.data, {"filename": doc.name})])
        for _ in range(repeats):
            seconds, (result,) = run_jobs(client, [(doc.data, {"filename": doc.name})],
                                          poll=0.005)
            queue_runs.append((seconds, result))

    rows: dict[str, tuple[list[float], str]] = {
        "PyMuPDF alone (get_text)": ([s for s, _ in library], library[-1][1]),
        "direct run_document (mode=auto)": ([s for s, _ in direct_runs],
                                            direct_runs[-1][1]["text"]),
        "queue c1, one job": ([s for s, _ in queue_runs], queue_runs[-1][1]["text"]),
    }
    stats: dict[str, dict[str, Any]] = {}
    for name, (times, text) in rows.items():
        stats[name] = {"seconds": times, "median_s": median(times),
                       "pages_per_s": pages / median(times),
                       "cer": pooled_cer([(doc.truth or "", text)])}
    base = stats["PyMuPDF alone (get_text)"]["pages_per_s"]
    table = Table(f"Born-digital: {PDF}, {pages} pages, median of {repeats} run(s)",
                  ["run", "median s", "pages/s", "x PyMuPDF", "CER vs text-layer GT"])
    for name, s in stats.items():
        table.rows.append([name, s["median_s"], s["pages_per_s"], s["pages_per_s"] / base,
                           f"{s['cer']:.2%}"])
    worker = queue_runs[-1][1]["timings"]
    report = Report("digital", tables=[table], data={
        "file": PDF, "pages": pages, "repeats": repeats, "page_sources": sorted(sources),
        "stats": stats, "last_queue_timings": worker})
    report.notes.append(f"page sources: {', '.join(sorted(sources))}; the worker's own "
                        f"timings.total_seconds: {worker['total_seconds']:.3f} s")
    for name in ("direct run_document (mode=auto)", "queue c1, one job"):
        report.ratios.append(Ratio(f"{name} / PyMuPDF alone pages/s",
                                   stats[name]["pages_per_s"] / base,
                                   note="no goal in issue 7"))
    report.figure = plot(stats)
    return report


def plot(stats: dict[str, dict[str, Any]]) -> Any:
    fig, axes = new_figure(width=7)
    ax = axes[0][0]
    names = list(stats)
    bars = ax.barh(names, [stats[n]["pages_per_s"] for n in names],
                   color=["#999999", "#1f77b4", "#2ca02c"])
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("pages / s")
    ax.set_title("117-page born-digital PDF: text layer")
    return fig
