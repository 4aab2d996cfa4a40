"""Chinese pages: rapidocr against tesseract `chi_sim`, in one run.

- direct: the corpus's Chinese page through `run_document` in this process, each
  engine loaded as a pool child loads it (`ResidentEngines`, with rapidocr's
  orientation check by tesseract), the default settings; runs interleaved, median
  seconds per page, CPU seconds beside them.
- queue, 2 children: the same page as N jobs through a Procfile worker with
  OCR_CONCURRENCY=2: tesseract `chi_sim`, rapidocr with one ONNX Runtime thread per
  child (OCR_RAPIDOCR_THREADS=1, the default on a machine with a child per core) and
  with as many threads per child as cores (ONNX Runtime's own default: oversubscribed).

CER against the ground truth, whitespace-normalised (as the tests) and without
whitespace (the goal: <= 0.5 %; RapidOCR writes no space between Chinese and
Latin text, which the normalised CER counts).

- auto: the corpus' Vietnamese, Greek and Chinese pages, an English scan and
  the two pages of the mixed PDF (Greek, Vietnamese), each read in this process three
  ways, interleaved: `lang=eng` (every page in English, no probe), its
  right `lang` (on the engine a worker routes it to: rapidocr for chi_sim) and
  `lang=auto`; CER, the page's OCR time (`PageRecord.seconds`, median) and CPU time,
  and auto's CPU time over the right lang's (goal: at most 1.10 for an English page,
  1.15 for any other; CPU because the wall clock of a loaded machine swings more than
  the goals; the wall ratio beside it), median of 5 interleaved runs.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from bench.common import (
    BASE_ENV,
    Context,
    Doc,
    Ratio,
    Report,
    Services,
    Table,
    load_doc,
    median,
    pooled_cer,
    run_jobs,
)

PAGE = "lang_chi_sim_page.jpg"
EUROPEAN = "european.png"  # not corpus files: drawn by devkit/image_fixtures.py
NOTICE = "notice.png"
GOAL_NO_SPACE_CER = 0.005


def _no_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _cers(truth: str, text: str) -> tuple[float, float]:
    return pooled_cer([(truth, text)]), pooled_cer([(_no_space(truth), _no_space(text))])


def direct(data: bytes, repeats: int) -> dict[str, dict[str, Any]]:
    """Seconds (wall, CPU) per page and the text of each engine, in this process."""
    from tasks.engines.resident import ResidentEngines
    from tasks.pipeline.documents import run_document
    from tasks.pipeline.images import configure_pillow
    from tasks.records.request import JobRequest
    from tasks.settings import Settings

    settings = Settings.from_env({**BASE_ENV, "OCR_CONCURRENCY": "1",
                                  "OCR_RAPIDOCR_THREADS": "1"})
    configure_pillow(settings)
    engines = ResidentEngines(settings=settings, primary="tesseract")
    runs: dict[str, dict[str, Any]] = {
        "tesseract": {"lang": "chi_sim", "wall": [], "cpu": []},
        "rapidocr": {"lang": "chi_sim", "wall": [], "cpu": []}}
    for name in runs:
        engines.get(name)  # loaded before timing, as in a pool child
    for _ in range(repeats):
        for name, row in runs.items():
            request = JobRequest(source="blob", filename=PAGE, lang=row["lang"])
            wall, cpu = time.perf_counter(), time.process_time()
            result = run_document(data, request, engines.get(name).engine, settings)
            row["wall"].append(time.perf_counter() - wall)
            row["cpu"].append(time.process_time() - cpu)
            row["text"] = result.text
    engines.unload()
    return runs


# (label, corpus file, page number, its right `lang`): pages of each script, then
# Latin pages in other languages (read in their own) and English scans
# (which must stay `eng`).
AUTO_PAGES = [("lang_vie_page.png", "lang_vie_page.png", 1, "vie"),
              ("lang_ell_page.png", "lang_ell_page.png", 1, "ell+eng"),
              ("lang_chi_sim_page.jpg", "lang_chi_sim_page.jpg", 1, "chi_sim"),
              ("scan_meditations.jpg", "scan_meditations.jpg", 1, "eng"),
              ("lang_mixed_2p.pdf p1", "lang_mixed_2p.pdf", 1, "ell+eng"),
              ("lang_mixed_2p.pdf p2", "lang_mixed_2p.pdf", 2, "vie"),
              ("lang_fra_pangram.pdf", "lang_fra_pangram.pdf", 1, "fra"),
              ("lang_deu_wikipedia_scan.pdf", "lang_deu_wikipedia_scan.pdf", 1, "deu"),
              ("scan_linn.png", "scan_linn.png", 1, "eng"),
              ("scan_tess_phototest.tif", "scan_tess_phototest.tif", 1, "eng"),
              ("scan_dh_lorem_ipsum.pdf", "scan_dh_lorem_ipsum.pdf", 1, "eng"),
              # Pages in several Latin languages (devkit/image_fixtures.py, drawn: the
              # corpus has none): their right lang is the set `auto` reads them with,
              # the languages their lines name that this machine has (`drawn_right`).
              ("five languages (drawn)", EUROPEAN, 1, "deu+fra eng spa por"),
              ("six languages (drawn)", NOTICE, 1, "deu eng fra ita spa por")]
# Goals, auto's CPU time over the right lang's: an English page (right `eng`) within
# 10 %, any other page within 15 %.
GOAL_AUTO_TIME = 1.15
GOAL_AUTO_TIME_ENG = 1.10
# Language sets the auto rows read with (eng, vie, ell+eng, fra, deu, and the probe's
# own handles apart): a pool child keeps OCR_TESSERACT_HANDLES (4) open, so cycling
# through five evicted one each round and the named row, read first, paid its
# traineddata load (0.05-0.3 s) that `auto` then found open. A child reading one
# language keeps its handle: here every set keeps its own.
AUTO_HANDLES = 8


def european_doc(name: str = EUROPEAN) -> Doc:
    """A page in several languages the tests draw, with what it draws as its truth."""
    from devkit.image_fixtures import (
        NOTICE_PARAGRAPHS,
        european_page,
        european_text,
        notice_page,
    )

    if name == NOTICE:
        return Doc(NOTICE, notice_page(), european_text(NOTICE_PARAGRAPHS), "exact (drawn)")
    return Doc(EUROPEAN, european_page(), european_text(), "exact (drawn)")


def drawn_right(right: str, have: list[str]) -> str:
    """A drawn page's right lang on this machine: `right`'s first set, then the rest here.

    `right` is "<the set its probe shows> <the other languages it holds>": the page is
    read with the codes of both that this machine has (`have`), the probe's first, as
    `auto_lang.shown_languages` reads it (`deu+fra eng spa por` is `deu+fra` with
    neither `spa` nor `por`).
    """
    first, *rest = right.split()
    codes = [c for c in first.split("+") if c in have] + [c for c in rest if c in have]
    return "+".join(codes) or "eng"


def goal(right: str) -> float:
    """The auto / right lang CPU goal of a page whose right lang is `right`."""
    return GOAL_AUTO_TIME_ENG if right == "eng" else GOAL_AUTO_TIME


def auto_direct(repeats: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Per page and way (`eng`, `right`, `auto`): OCR and CPU seconds, engine, lang, text.

    `seconds` is the page's own clock (`PageRecord.seconds`, wall); `cpu` the process's
    CPU seconds over the whole `run_document` of the page (a PDF's page as a one-page
    PDF of its own), the figure that the load of other work on the machine does not
    inflate.
    """
    import pymupdf

    from tasks.engines.resident import ResidentEngines
    from tasks.pipeline.documents import run_document
    from tasks.pipeline.images import configure_pillow
    from tasks.records.request import JobRequest
    from tasks.settings import Settings

    settings = Settings.from_env({**BASE_ENV, "OCR_CONCURRENCY": "1",
                                  "OCR_RAPIDOCR_THREADS": "1",
                                  "OCR_TESSERACT_HANDLES": str(AUTO_HANDLES)})
    configure_pillow(settings)
    engines = ResidentEngines(settings=settings, primary="tesseract")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    from tasks.engines.tesseract import TesseractEngine

    have = TesseractEngine.languages(settings)
    docs = {name: european_doc(name) if name in (EUROPEAN, NOTICE) else load_doc(name)
            for _, name, _, _ in AUTO_PAGES}
    data: dict[str, bytes] = {}
    for label, name, number, _ in AUTO_PAGES:
        data[label] = docs[name].data
        if name.endswith(".pdf"):
            with pymupdf.open(stream=docs[name].data) as src, pymupdf.open() as one:
                one.insert_pdf(src, from_page=number - 1, to_page=number - 1)
                data[label] = one.tobytes()
    for label, name, _, right in AUTO_PAGES:
        if name in (EUROPEAN, NOTICE):
            right = drawn_right(right, have)
        langs = {"eng": "eng", "right": right, "auto": "auto"}
        out[label] = {way: {"lang": lang, "seconds": [], "cpu": []}
                      for way, lang in langs.items()}
        for row in out[label].values():  # every engine loaded before timing, as in a child
            engines.get(engines.for_job(None, row["lang"]))
        run_document(data[label], JobRequest(source="blob", filename=name, lang="auto"),
                     engines.get().engine, settings)  # the probe's handles opened
    for _ in range(repeats):
        for label, name, _, _ in AUTO_PAGES:
            for row in out[label].values():
                engine = engines.get(engines.for_job(None, row["lang"])).engine
                request = JobRequest(source="blob", filename=name, lang=row["lang"])
                cpu = time.process_time()
                result = run_document(data[label], request, engine, settings)
                row["cpu"].append(time.process_time() - cpu)
                page = result.pages[0]
                row["seconds"].append(page.seconds or 0.0)
                row.update(text=page.text, engine=page.engine, read=page.lang)
    engines.unload()
    for label, name, number, _ in AUTO_PAGES:
        truth = (docs[name].truth or "").split("\f")[number - 1]
        for row in out[label].values():  # no ground truth (the German scan): no CER
            row["cer"] = pooled_cer([(truth, row["text"])]) if truth.strip() else None
    return out


def auto_report(repeats: int) -> tuple[Table, dict[str, Any], list[Ratio]]:
    runs = auto_direct(repeats)
    table = Table(f"lang=auto against the right lang, direct in one process, median of "
                  f"{repeats}", ["page", "way", "read as", "CER", "OCR s / page",
                                 "CPU s / page", "CPU / right lang", "OCR s / right lang"])
    ratios = []
    for name, by_way in runs.items():
        right = median(by_way["right"]["seconds"])
        right_cpu = median(by_way["right"]["cpu"])
        for way, row in by_way.items():
            seconds, cpu = median(row["seconds"]), median(row["cpu"])
            table.rows.append([name, f"{way} ({row['lang']})",
                               f"{row['read']} ({row['engine']})",
                               "-" if row["cer"] is None else f"{row['cer']:.2%}",
                               seconds, cpu, cpu / right_cpu if right_cpu else 0.0,
                               seconds / right if right else 0.0])
        auto = median(by_way["auto"]["cpu"])
        ratio = auto / right_cpu if right_cpu else 0.0
        bound = goal(by_way["right"]["lang"])
        ratios.append(Ratio(f"auto / {by_way['right']['lang']} OCR CPU time, {name}", ratio,
                            goal=f"<= {bound}", met=ratio <= bound,
                            note="wall: " + f"{median(by_way['auto']['seconds']) / right:.2f}"
                            if right else ""))
    data = {name: {way: {k: v for k, v in row.items() if k != "text"}
                   for way, row in by_way.items()} for name, by_way in runs.items()}
    return table, data, ratios


def run(ctx: Context) -> Report:
    doc = load_doc(PAGE)
    truth = doc.truth or ""
    repeats = ctx.size(3, 1)
    pages = ctx.size(8, 2)
    runs = direct(doc.data, repeats)
    table = Table(f"Chinese page ({PAGE}), direct in one process, median of {repeats}",
                  ["engine", "s / page", "CPU s / page", "pages/s", "CER", "CER no spaces"])
    data_out: dict[str, Any] = {"page": PAGE, "repeats": repeats, "direct": {}, "queue": {}}
    for name, row in runs.items():
        wall, cpu = median(row["wall"]), median(row["cpu"])
        cer, cer_ns = _cers(truth, row["text"])
        table.rows.append([f"{name} ({row['lang']})", wall, cpu, 1 / wall,
                           f"{cer:.2%}", f"{cer_ns:.2%}"])
        data_out["direct"][name] = {"wall": row["wall"], "cpu": row["cpu"], "cer": cer,
                                    "cer_no_space": cer_ns}
    cores = os.cpu_count() or 1
    queue = Table(f"Queue, 2 children, {pages} jobs of the page",
                  ["run", "seconds", "pages/s", "CER", "CER no spaces"])
    configs = [("tesseract chi_sim", {"OCR_ENGINE": "tesseract"}, {}),
               ("rapidocr, 1 thread per child", {"OCR_ENGINE": "rapidocr",
                                                 "OCR_RAPIDOCR_THREADS": "1"},
                {"engine": "rapidocr"}),
               (f"rapidocr, {cores} threads per child", {"OCR_ENGINE": "rapidocr",
                                                         "OCR_RAPIDOCR_THREADS": str(cores)},
                {"engine": "rapidocr"})]
    rates: dict[str, float] = {}
    with Services(ctx.workdir) as services:
        for label, env, options in configs:
            with services.stack(OCR_CONCURRENCY="2", OCR_LANG_ENGINES="", **env) as (_, client):
                job = {"filename": PAGE, "lang": "chi_sim", **options}
                run_jobs(client, [(doc.data, job)] * 2)  # warm both children
                seconds, results = run_jobs(client, [(doc.data, job)] * pages)
            cer, cer_ns = _cers(truth, results[0]["text"])
            rates[label] = pages / seconds
            queue.rows.append([label, seconds, pages / seconds, f"{cer:.2%}", f"{cer_ns:.2%}"])
            data_out["queue"][label] = {"seconds": seconds, "pages": pages, "cer": cer,
                                        "cer_no_space": cer_ns, "env": env}
    auto_table, data_out["auto"], auto_ratios = auto_report(ctx.size(5, 1))
    report = Report("languages", tables=[table, queue, auto_table], data=data_out)
    report.ratios.extend(auto_ratios)
    rapid = data_out["direct"]["rapidocr"]
    report.ratios.append(Ratio("rapidocr no-space CER on the Chinese page",
                               rapid["cer_no_space"], goal=f"<= {GOAL_NO_SPACE_CER:.3f}",
                               met=rapid["cer_no_space"] <= GOAL_NO_SPACE_CER))
    report.ratios.append(Ratio("rapidocr / tesseract chi_sim pages/s, direct",
                               median(data_out["direct"]["tesseract"]["wall"])
                               / median(rapid["wall"]), note="higher is faster"))
    one, many = (rates[configs[1][0]], rates[configs[2][0]])
    report.ratios.append(Ratio("rapidocr / tesseract chi_sim pages/s, queue c2",
                               one / rates[configs[0][0]], note="1 ONNX thread per child"))
    report.ratios.append(Ratio(f"rapidocr c2 pages/s, 1 thread / {cores} threads per child",
                               one / many, note="> 1: the setting avoids oversubscription"))
    return report
