"""`submit.py eval DIR`: score engines on documents with ground truth.

Runs in submit.py (a user's machine). Each document of DIR (or an s3:// prefix) with
`NAME.gt.txt` or `NAME.gt.xml` beside it (tasks/lifecycle/eval_sets.py) is sent through
the queue like any job, once per engine named by `--engine a,b` (none: the service's
default path, shown as `default`), always read afresh (never from the result cache),
one job at a time so that its seconds are its own. Each read is scored with the
service's metric (tasks/evaluation/scoring.py): per document and engine the CER, WER,
characters, words and seconds; then per engine the total edits over the total
ground-truth characters (and words). A job that fails scores what it read (nothing,
or its pages that succeeded) and names its error. `--report FILE.html` writes the
reads aligned with their ground truth (tasks/cli/eval_report.py). `--corrected CLIENT`
scores the pages that client corrected instead (tasks/cli/eval_corrected.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.cli.commands import command
from tasks.cli.core import EXIT_USAGE, Session, door_refusal, exit_status
from tasks.cli.eval_corrected import corrected_reads
from tasks.cli.eval_report import ReportEntry, render
from tasks.cli.output import PROG
from tasks.client import OcrClient
from tasks.errors import OcrError
from tasks.evaluation.scoring import Score, score_pages, total
from tasks.lifecycle.eval_sets import EvalDocument, eval_documents
from tasks.records.engines import ENGINES
from tasks.records.status import JobStatus

__all__ = ["Read", "eval_arguments", "read_document", "run_eval", "summary_json"]

DEFAULT = "default"


def eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("location", metavar="DIR", nargs="?",
                        help="a folder (or s3://bucket/prefix/) of documents, each with "
                             "NAME.gt.txt (pages split by form feeds) or NAME.gt.xml "
                             "(PAGE XML or ALTO) beside it")
    parser.add_argument("--engine", help=f"engines to score, comma-separated: "
                        f"{', '.join(ENGINES)} (default: the service's default path)")
    parser.add_argument("--lang", help="the documents' language(s), as submit's --lang")
    parser.add_argument("--password", help="password of the encrypted PDFs among them")
    parser.add_argument("--report", type=Path, metavar="FILE.html",
                        help="write each read aligned with its ground truth, edits "
                             "marked, worst lines first")
    parser.add_argument("--corrected", metavar="CLIENT",
                        help="score the pages CLIENT corrected (the console's corrections) "
                             "instead of DIR: the engine that read each page on its own "
                             "reading, and each --engine on the page read again")
    parser.add_argument("--ignore-case", action="store_true", help="score case-folded")
    parser.add_argument("--ignore-punctuation", action="store_true",
                        help="score without punctuation")


@dataclass(frozen=True)
class Read:
    """One document read by one engine, scored."""

    document: EvalDocument
    engine: str
    pages: list[str]
    score: Score
    seconds: float
    status: str
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        shown = self.score.to_json()
        record = {"document": self.document.name, "engine": self.engine,
                  "cer": shown["cer"], "wer": shown["wer"], "chars": self.score.chars,
                  "words": self.score.words, "seconds": round(self.seconds, 3)}
        if self.error:
            record["error"] = self.error
        return record


def read_document(client: OcrClient, document: EvalDocument, engine: str | None,
                  options: dict[str, Any], timeout: float | None,
                  data: bytes | None = None, **scoring: bool) -> Read:
    """Send one document (`data`, when given, in place of its source), score what it read."""
    started = time.monotonic()
    try:
        job_id = client.submit(document.source if data is None else data,
                               filename=document.name, engine=engine,
                               no_cache=True, **options)
        result = client.wait([job_id], timeout=timeout)[job_id]
    except OcrError as exc:
        result = {"status": JobStatus.FAILURE.value, "error": exc.to_dict()}
    seconds = time.monotonic() - started
    pages = [str(p.get("text") or "") for p in result.get("pages") or []]
    error = result.get("error") or {}
    failed = f"{error.get('code')}: {error.get('message')}" if error else ""
    scored = total(score_pages(document.truth, pages, **scoring))
    return Read(document, engine or DEFAULT, pages, scored, seconds,
                str(result.get("status")), failed)


def summary_json(reads: list[Read]) -> dict[str, dict[str, Any]]:
    """Per engine: total edits over total ground-truth characters (and words)."""
    out: dict[str, dict[str, Any]] = {}
    for engine, scored in _totals(reads).items():
        shown = scored.to_json()
        out[engine] = {"cer": shown["cer"], "wer": shown["wer"],
                       "documents": sum(1 for r in reads if r.engine == engine),
                       "chars": scored.chars}
    return out


def _totals(reads: list[Read]) -> dict[str, Score]:
    engines = list(dict.fromkeys(r.engine for r in reads))
    return {e: total(r.score for r in reads if r.engine == e) for e in engines}


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.2%}"


def _line(read: Read) -> str:
    shown = read.score.to_json()
    line = (f"{read.document.name}\t{read.engine}\tCER {_percent(shown['cer'])}\t"
            f"WER {_percent(shown['wer'])}\t{read.score.chars} chars\t"
            f"{read.score.words} words\t{read.seconds:.1f} s")
    return line + (f"\t{read.error}" if read.error else "")


@command("eval", "score engines on documents with ground truth (NAME.gt.txt, "
         "NAME.gt.xml): CER, WER, seconds", f"{PROG} eval scans/ --engine tesseract,"
         "rapidocr --report scores.html", shared=("json", "timeout", "client"),
         arguments=eval_arguments)
def run_eval(args: argparse.Namespace, session: Session) -> int:
    client = session.client
    engines: list[str | None] = [e.strip() for e in (args.engine or "").split(",")
                                 if e.strip()] or [None]
    options = {k: v for k, v in {"lang": args.lang, "password": args.password}.items()
               if v is not None}
    if (args.location is None) == (args.corrected is None):
        print(f"{PROG}: eval needs a DIR or --corrected CLIENT (one of them)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        for engine in engines:
            client.admit({k: v for k, v in {"engine": engine, **options}.items()
                          if v is not None})
        documents = [] if args.location is None \
            else eval_documents(args.location, session.settings)
    except OcrError as exc:
        return door_refusal(exc, PROG)
    scoring = {"ignore_case": args.ignore_case,
               "ignore_punctuation": args.ignore_punctuation}
    reads = []
    for read in _corrected(args, client, engines, options, scoring) if args.corrected \
            else (read_document(client, document, engine, options, args.timeout, **scoring)
                  for engine in engines for document in documents):
        reads.append(read)
        print(json.dumps(read.to_json()) if args.json else _line(read), flush=True)
    summary = summary_json(reads)
    if args.json:
        print(json.dumps({"summary": summary}), flush=True)
    else:
        for engine, scored in _totals(reads).items():
            shown = scored.to_json()
            print(f"{engine}: CER {_percent(shown['cer'])}, WER {_percent(shown['wer'])} "
                  f"over {summary[engine]['documents']} documents, {scored.chars} "
                  f"characters, {scored.words} words", flush=True)
    if args.report is not None:
        entries = [ReportEntry(r.document.name, r.engine, r.document.truth, r.pages,
                               r.score, r.error) for r in reads]
        args.report.write_text(render(entries, _totals(reads)), encoding="utf-8")
    return exit_status([r.status for r in reads])


def _corrected(args: argparse.Namespace, client: OcrClient, engines: list[str | None],
               options: dict[str, Any], scoring: dict[str, bool]) -> Iterator[Read]:
    """The reads of the pages `args.corrected` corrected: the engine's own, then each --engine's.

    The own reading was made when the job ran: its `seconds` are 0 (nothing read now).
    """
    for page in corrected_reads(client, args.corrected):
        truth = page.document.truth
        yield Read(page.document, page.engine, [page.engine_text],
                   total(score_pages(truth, [page.engine_text], **scoring)), 0.0,
                   JobStatus.SUCCESS.value)
        if page.preview is None:
            continue  # its preview expired with its result: no second reading
        for engine in engines:
            if engine is not None:
                yield read_document(client, page.document, engine, options, args.timeout,
                                    data=page.preview, **scoring)
