"""Markdown with the document's structure (PyMuPDF 2.0's layout analysis).

- born digital: dig_tracemonkey_14p.pdf through a Procfile worker (one child), one job
  at a time, `output=text` and `output=markdown` in interleaved rounds; pages/s from
  the jobs' own `timings.total_seconds` (the worker child's time, planning included).
  Goal: >= 2 pages/s with structure on this 2-core machine.
  The same markdown job on a worker with two children, its text-layer pages analysed
  in chunk tasks (OCR_STRUCTURE_CHUNK_PAGES=4) that both children take.
  Throughput on every core: two markdown jobs submitted together, wall-clock
  seconds from the first submit to the last result, on a one-child worker and on a
  two-children worker (each child's layout sessions with its share of the cores:
  2 intra-op threads for one child, 1 each for two, on two cores), both up at once and
  measured in alternating rounds. Goal: two children >= 1.8x one. Beside them a
  one-child worker held to one core (its processes' CPU affinity, so its layout
  sessions take one thread): what one core gives, against which two children on two
  cores show how structure scales with cores (the one-child worker on two cores
  already spends part of the second core on each page). The load average is recorded
  before and after (the VM is shared).
- OCR'd pages: tracemonkey pages 1 and 4 (a title page and a two-column page) as a
  200-dpi image PDF, read by tesseract in this process (`run_document`), `text` and
  `markdown` interleaved; the pages' own `seconds` (OCR, plus the structure for
  markdown). Goal: structure adds <= 20 % to a page's OCR time.
- install: what PyMuPDF 2.0 adds to the lean install (`requirements.txt`), from the
  installed files of the packages it brought (PyMuPDF 1.28.2's own 60 MiB measured from
  its unpacked wheel when the pin moved).
"""

from __future__ import annotations

import importlib.metadata
import os
import time
from pathlib import Path
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
    run_jobs,
)

PDF = "dig_tracemonkey_14p.pdf"
PAGES_GOAL = 2.0  # born-digital Markdown with structure, pages/s per child
OCR_GOAL = 0.20  # structure adds at most 20 % to an OCR'd page's time
CORES_GOAL = 1.8  # two children on two cores, at least 1.8x one child
# What PyMuPDF 2.0 brought into requirements.txt's install (pip's resolution of both pins).
ADDED = ("pymupdf", "onnxruntime", "networkx", "protobuf", "psutil", "tabulate",
         "flatbuffers", "pymupdf-layout", "pymupdf4llm")
CHUNK = 4  # pages per chunk task in the two-children run
PYMUPDF_128_MIB = 60.0  # pymupdf 1.28.2's installed files (its manylinux wheel, unpacked)


def installed_mib(name: str) -> float:
    dist = importlib.metadata.distribution(name)
    paths = (Path(str(dist.locate_file(file))) for file in dist.files or ())
    return sum(path.stat().st_size for path in paths if path.is_file()) / 2**20


def hold_to_one_core(worker: Any) -> None:
    """Hold a worker (its parent, and so the children it forks, and its children) to one CPU.

    A child's layout sessions take their thread count from its affinity when its first
    page with structure builds them (`tasks.pipeline.structure.layout_threads`).
    """
    import psutil

    parent = psutil.Process(worker.proc.pid)
    first = sorted(os.sched_getaffinity(0))[:1]
    for process in (parent, *parent.children(recursive=True)):
        process.cpu_affinity(first)


def scanned_pages(indices: tuple[int, ...] = (0, 3)) -> bytes:
    import pymupdf

    doc = load_doc(PDF)
    with pymupdf.open(stream=doc.data, filetype="pdf") as source:
        out = pymupdf.open()
        for index in indices:
            page = source[index]
            pix = page.get_pixmap(dpi=200, colorspace=pymupdf.csGRAY)
            new = out.new_page(width=page.rect.width, height=page.rect.height)
            new.insert_image(new.rect, stream=pix.tobytes("png"))
        return bytes(out.tobytes())


def run(ctx: Context) -> Report:
    doc = load_doc(PDF)
    repeats = ctx.size(3, 1)
    # --quick: 3 born-digital pages and one scan, one round
    selection = {"pages": "1-3"} if ctx.quick else {}
    digital: dict[str, list[float]] = {"text": [], "markdown": []}
    markdown = {"filename": doc.name, "output": "markdown", **selection}
    # Then the markdown job on a worker with two children: its text-layer pages in
    # chunk tasks of CHUNK pages (OCR_STRUCTURE_CHUNK_PAGES), which both children take.
    fanned: list[float] = []
    # children -> wall s of two jobs at once; 0: one child held to one core
    pair: dict[int, list[float]] = {0: [], 1: [], 2: []}
    load = [os.getloadavg()[0]]
    with Services(ctx.workdir) as services:
        with services.stack(OCR_CONCURRENCY="1") as (_, client):
            for output in digital:  # warm-up, not counted: the child's first job, the model
                run_jobs(client, [(doc.data, {"filename": doc.name, "output": output,
                                              **selection})])
            for _ in range(repeats):
                for output, runs in digital.items():
                    _, (result,) = run_jobs(client, [(doc.data, {"filename": doc.name,
                                                                  "output": output,
                                                                  **selection})])
                    runs.append(float(result["timings"]["total_seconds"]))
                    pages = len(result["pages"])
        with services.stack(OCR_CONCURRENCY="2",
                            OCR_STRUCTURE_CHUNK_PAGES=str(CHUNK)) as (_, client):
            run_jobs(client, [(doc.data, markdown)])  # warm-up
            for _ in range(repeats):
                _, (result,) = run_jobs(client, [(doc.data, markdown)])
                fanned.append(float(result["timings"]["total_seconds"]))
        # Two jobs at once, on one child and on two, in alternating rounds with both
        # workers up (each idle while the other works): the machine's load, which moves
        # over minutes here, weighs on both alike.
        with services.stack(OCR_CONCURRENCY="1") as (_, one), \
                services.stack(OCR_CONCURRENCY="2") as (_, two), \
                services.stack(OCR_CONCURRENCY="1") as (held, core):
            hold_to_one_core(held)  # before its child's first page builds the sessions
            for client in (one, two, core):  # warm-up: each child's first job, the model
                run_jobs(client, [(doc.data, markdown)] * 2)
            for _ in range(repeats):
                for n, client in ((1, one), (2, two), (0, core)):
                    pair[n].append(run_jobs(client, [(doc.data, markdown)] * 2)[0])
    load.append(os.getloadavg()[0])
    scans = scanned_pages((0,) if ctx.quick else (0, 3))
    ocr: dict[str, list[float]] = {"text": [], "markdown": []}
    # And within each markdown run, the CPU seconds of the structure step
    # (`_ocr_structure`) against the rest of the run's: paired in one run, so the
    # machine's load, which moves the wall-clock rows above by tens of percent, cancels.
    from tasks.pipeline import page_reading

    shares: list[float] = []
    direct = Direct()
    step = page_reading._ocr_structure
    spent: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return step(*args, **kwargs)
        finally:
            spent.append(time.process_time() - started)

    page_reading._ocr_structure = timed
    try:
        direct.run(scans, "scan.pdf", output="markdown")  # warm-up
        for _ in range(repeats):
            for output, runs in ocr.items():
                spent.clear()
                cpu = time.process_time()
                result = direct.run(scans, "scan.pdf", output=output)
                cpu = time.process_time() - cpu
                runs.append(sum(float(p["seconds"]) for p in result["pages"]))
                if output == "markdown":
                    shares.append(sum(spent) / (cpu - sum(spent)))
    finally:
        page_reading._ocr_structure = step
        direct.close()
    cpu_added = median(shares)

    rates = {name: pages / median(runs) for name, runs in digital.items()}
    cost = median(digital["markdown"]) / median(digital["text"])
    added = median(ocr["markdown"]) / median(ocr["text"]) - 1
    sizes = {name: round(installed_mib(name), 1) for name in ADDED}
    growth = sum(sizes.values()) - PYMUPDF_128_MIB

    table = Table(f"Born digital: {PDF}, {pages} pages, one worker child, median of "
                  f"{repeats} round(s)", ["output", "median s (in the worker)", "pages/s"])
    for name, runs in digital.items():
        table.rows.append([name, median(runs), rates[name]])
    job_rate = pages / median(fanned)
    table.rows.append([f"markdown, 2 children, chunks of {CHUNK}", median(fanned),
                       job_rate])
    pair_rates = {n: 2 * pages / median(runs) for n, runs in pair.items()}
    for n, runs in pair.items():
        who = "1 child held to one core" if n == 0 else f"{n} child(ren)"
        table.rows.append([f"markdown, two jobs at once, {who}, wall", median(runs),
                           pair_rates[n]])
    scan_table = Table(f"OCR'd pages: {PDF} pages 1 and 4 as 200-dpi scans, tesseract in "
                       f"this process, median of {repeats}", ["output", "page seconds (sum)"])
    for name, runs in ocr.items():
        scan_table.rows.append([name, median(runs)])
    size_table = Table("Install: what PyMuPDF 2.0 brings into requirements.txt",
                       ["package", "MiB installed"])
    size_table.rows += [[name, mib] for name, mib in sizes.items()]
    size_table.rows.append(["minus pymupdf 1.28.2", -PYMUPDF_128_MIB])
    size_table.rows.append(["growth", growth])
    data: dict[str, Any] = {"file": PDF, "pages": pages, "repeats": repeats,
                            "digital_seconds": digital, "ocr_seconds": ocr,
                            "pages_per_s": rates, "markdown_over_text": cost,
                            "fanned_seconds": fanned, "fanned_pages_per_s": job_rate,
                            "ocr_structure_added": added,
                            "ocr_structure_cpu_added": cpu_added, "install_mib": sizes,
                            "install_growth_mib": growth,
                            "pair_wall_seconds": pair, "pair_pages_per_s": pair_rates,
                            "load_average_before_after": load}
    report = Report("structure", tables=[table, scan_table, size_table], data=data)
    report.ratios.append(Ratio("born-digital Markdown with structure, pages/s per child",
                               rates["markdown"], goal=f">= {PAGES_GOAL:.0f}",
                               met=rates["markdown"] >= PAGES_GOAL))
    cores = pair_rates[2] / pair_rates[1]
    report.ratios.append(Ratio("born-digital Markdown, two jobs at once: 2 children / 1",
                               cores, goal=f">= {CORES_GOAL}", met=cores >= CORES_GOAL,
                               note=f"load average {load[0]:.1f} before, "
                                    f"{load[1]:.1f} after"))
    per_core = pair_rates[2] / pair_rates[0]
    report.ratios.append(Ratio("born-digital Markdown, two jobs at once: 2 children on 2 "
                               "cores / 1 child on one core", per_core,
                               goal=f">= {CORES_GOAL}", met=per_core >= CORES_GOAL,
                               note="structure scales with the cores"))
    report.ratios.append(Ratio("born-digital Markdown, one job on 2 children / on 1",
                               job_rate / rates["markdown"],
                               note="text-layer pages analysed in chunk tasks"))
    report.ratios.append(Ratio("born-digital markdown / text seconds", cost,
                               note="the structure's cost over the plain-text path"))
    report.ratios.append(Ratio("OCR'd pages: time structure adds to the page's",
                               added, goal=f"<= {OCR_GOAL:.2f}", met=added <= OCR_GOAL))
    report.ratios.append(Ratio("OCR'd pages: CPU the structure step adds (paired, one run)",
                               cpu_added, goal=f"<= {OCR_GOAL:.2f}",
                               met=cpu_added <= OCR_GOAL))
    report.ratios.append(Ratio("lean install growth from PyMuPDF 2.0, MiB", growth))
    return report
