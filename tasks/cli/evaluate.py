"""`submit.py eval DIR|FILE`: score engines on documents with ground truth.

Runs in submit.py (a user's machine). Each document of DIR (or an s3:// prefix), or
one FILE, with `NAME.gt.txt` or `NAME.gt.xml` beside it (tasks/lifecycle/eval_sets.py)
is sent through the queue like any job, once per engine named by `--engine a,b` (none:
the service's default path, shown as `default`), always read afresh (never from the
result cache), one job at a time so that its seconds are its own. Each read is scored
with the service's metric (tasks/evaluation/scoring.py): per document and engine the
CER, WER, characters, words and seconds; then per engine the total edits over the total
ground-truth characters (and words). A job that fails scores what it read (nothing,
or its pages that succeeded) and names its error. `--report FILE.html` writes the
reads aligned with their ground truth (tasks/cli/eval_report.py). `--corrected CLIENT`
scores the pages that client corrected instead (tasks/cli/eval_corrected.py).
`--escalate ENGINE` sends each job with escalation (docs/escalation.md) and counts the
pages escalated; `--escalate-below 0.6,0.9` reads the folder once per threshold, each
a run of its own, which gives a curve: CER against the share of pages escalated.
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
from tasks.cli.eval_report import CurvePoint, ReportEntry, render
from tasks.cli.job_options import fraction
from tasks.cli.output import PROG
from tasks.client import OcrClient
from tasks.errors import OcrError
from tasks.evaluation.scoring import Score, score_pages, total
from tasks.lifecycle.eval_sets import EvalDocument, eval_documents
from tasks.records.engines import ENGINES, VLM_ENGINES
from tasks.records.status import JobStatus

__all__ = ["Read", "curve_json", "eval_arguments", "read_document", "run_eval",
           "summary_json"]

DEFAULT = "default"


def eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("location", metavar="DIR|FILE", nargs="?",
                        help="a folder (or s3://bucket/prefix/) of documents, or one "
                             "document, each with "
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
    parser.add_argument("--escalate", metavar="ENGINE", choices=VLM_ENGINES,
                        help=f"{' or '.join(VLM_ENGINES)}: send each job with escalation "
                             "and count the pages escalated")
    parser.add_argument("--escalate-below", type=_thresholds, metavar="X[,Y...]",
                        help="escalation thresholds (0 to 1), comma-separated: the "
                             "folder is read once per threshold, a point of the curve of "
                             "CER against the share of pages escalated (default: "
                             "the fleet's OCR_ESCALATE_BELOW, one run)")
    parser.add_argument("--ignore-case", action="store_true", help="score case-folded")
    parser.add_argument("--ignore-punctuation", action="store_true",
                        help="score without punctuation")


def _thresholds(raw: str) -> list[float]:
    """`--escalate-below`'s value: thresholds from 0 to 1, comma-separated, ascending."""
    return sorted({fraction(part.strip()) for part in raw.split(",") if part.strip()})


@dataclass(frozen=True)
class Escalated:
    """A run's escalation: the engine, its threshold (None: the fleet's), the pages."""

    to: str
    below: float | None
    pages: int = 0
    escalated: int = 0
    kept_first: int = 0

    def counted(self, result: dict[str, Any]) -> Escalated:
        """The run's escalation, with `result`'s pages counted.

        A page escalated is one read again; one whose second reading failed
        (`escalation.error`) keeps its first and is counted in `kept_first`.
        """
        marked = [p["escalation"] for p in result.get("pages") or [] if p.get("escalation")]
        failed = sum(1 for e in marked if e.get("error"))
        return Escalated(self.to, self.below, len(result.get("pages") or []),
                         len(marked) - failed, failed)

    def label(self, engine: str) -> str:
        """The run's name in the summary: `tesseract+vlm-api<0.8`."""
        return f"{engine}+{self.to}" + ("" if self.below is None else f"<{self.below:g}")

    def to_json(self) -> dict[str, Any]:
        record = {"escalate": self.to, "escalate_below": self.below, "pages": self.pages,
                  "escalated": self.escalated}
        return record | ({"kept_first": self.kept_first} if self.kept_first else {})


@dataclass(frozen=True)
class Read:
    """One document read by one engine (and its escalation), scored."""

    document: EvalDocument
    engine: str
    pages: list[str]
    score: Score
    seconds: float
    status: str
    error: str = ""
    escalation: Escalated | None = None

    @property
    def run(self) -> str:
        """The engine, or its run with escalation: what the summary adds up."""
        return self.engine if self.escalation is None else self.escalation.label(self.engine)

    def to_json(self) -> dict[str, Any]:
        shown = self.score.to_json()
        record = {"document": self.document.name, "engine": self.engine,
                  "cer": shown["cer"], "wer": shown["wer"], "chars": self.score.chars,
                  "words": self.score.words, "seconds": round(self.seconds, 3)}
        if self.escalation is not None:
            record |= self.escalation.to_json()
        if self.error:
            record["error"] = self.error
        return record


def read_document(client: OcrClient, document: EvalDocument, engine: str | None,
                  options: dict[str, Any], timeout: float | None,
                  data: bytes | None = None, escalation: Escalated | None = None,
                  **scoring: bool) -> Read:
    """Send one document (`data`, when given, in place of its source), score what it read.

    With `escalation`, the job escalates as it says and the read counts its pages.
    """
    if escalation is not None:
        options = {**options, "escalate": escalation.to, "escalate_below": escalation.below}
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
                str(result.get("status")), failed,
                None if escalation is None else escalation.counted(result))


def summary_json(reads: list[Read]) -> dict[str, dict[str, Any]]:
    """Per run: total edits over total ground-truth characters (and words).

    A run is an engine, or an engine with its escalation and threshold; a run with
    escalation adds its pages, those escalated and their share.
    """
    out: dict[str, dict[str, Any]] = {}
    for run, scored in _totals(reads).items():
        shown = scored.to_json()
        mine = [r for r in reads if r.run == run]
        out[run] = {"cer": shown["cer"], "wer": shown["wer"], "documents": len(mine),
                    "chars": scored.chars}
        if mine[0].escalation is not None:
            out[run] |= _escalated(mine)
    return out


def _escalated(reads: list[Read]) -> dict[str, Any]:
    """The pages of `reads`, those escalated, their share, those that kept their first."""
    counts = [r.escalation for r in reads if r.escalation is not None]
    pages = sum(c.pages for c in counts)
    escalated = sum(c.escalated for c in counts)
    return {"pages": pages, "escalated": escalated,
            "share": round(escalated / pages, 6) if pages else None,
            "kept_first": sum(c.kept_first for c in counts)}


def curve_json(reads: list[Read]) -> list[dict[str, Any]]:
    """One point per run with escalation, by engine then threshold: CER against share."""
    points = []
    for run, scored in _totals(reads).items():
        mine = [r for r in reads if r.run == run]
        escalation = mine[0].escalation
        if escalation is None:
            continue
        points.append({"engine": mine[0].engine, "escalate": escalation.to,
                       "escalate_below": escalation.below, "cer": scored.to_json()["cer"],
                       "wer": scored.to_json()["wer"], **_escalated(mine)})
    return points


def _totals(reads: list[Read]) -> dict[str, Score]:
    runs = list(dict.fromkeys(r.run for r in reads))
    return {run: total(r.score for r in reads if r.run == run) for run in runs}


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.2%}"


def _line(read: Read) -> str:
    shown = read.score.to_json()
    line = (f"{read.document.name}\t{read.engine}\tCER {_percent(shown['cer'])}\t"
            f"WER {_percent(shown['wer'])}\t{read.score.chars} chars\t"
            f"{read.score.words} words\t{read.seconds:.1f} s")
    if read.escalation is not None:
        line += f"\t{read.escalation.escalated}/{read.escalation.pages} pages escalated"
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
    escalations: list[Escalated | None] = [None]
    if args.escalate is not None:
        escalations = [Escalated(args.escalate, below)
                       for below in args.escalate_below or [None]]
    elif args.escalate_below is not None:
        print(f"{PROG}: --escalate-below needs --escalate ENGINE", file=sys.stderr)
        return EXIT_USAGE
    if args.escalate is not None and args.corrected is not None:
        print(f"{PROG}: --escalate reads a DIR, not --corrected pages", file=sys.stderr)
        return EXIT_USAGE
    if (args.location is None) == (args.corrected is None):
        print(f"{PROG}: eval needs a DIR, a FILE or --corrected CLIENT (one of them)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        for engine in engines:
            for escalation in escalations:
                asked = {} if escalation is None else {
                    "escalate": escalation.to, "escalate_below": escalation.below}
                client.admit({k: v for k, v in {"engine": engine, **options,
                                                 **asked}.items() if v is not None})
        documents = [] if args.location is None \
            else eval_documents(args.location, session.settings)
    except OcrError as exc:
        return door_refusal(exc, PROG)
    scoring = {"ignore_case": args.ignore_case,
               "ignore_punctuation": args.ignore_punctuation}
    reads = []
    for read in _corrected(args, client, engines, options, scoring) if args.corrected \
            else (read_document(client, document, engine, options, args.timeout,
                                escalation=escalation, **scoring)
                  for engine in engines for escalation in escalations
                  for document in documents):
        reads.append(read)
        print(json.dumps(read.to_json()) if args.json else _line(read), flush=True)
    summary = summary_json(reads)
    curve = curve_json(reads)
    if args.json:
        print(json.dumps({"summary": summary} | ({"curve": curve} if curve else {})),
              flush=True)
    else:
        for run, scored in _totals(reads).items():
            shown = scored.to_json()
            sent = summary[run].get("share")
            print(f"{run}: CER {_percent(shown['cer'])}, WER {_percent(shown['wer'])} "
                  f"over {summary[run]['documents']} documents, {scored.chars} "
                  f"characters, {scored.words} words" + (
                      "" if "escalated" not in summary[run] else
                      f", {summary[run]['escalated']} of {summary[run]['pages']} pages "
                      f"escalated ({_percent(sent)})"), flush=True)
    if args.report is not None:
        entries = [ReportEntry(r.document.name, r.run, r.document.truth, r.pages,
                               r.score, r.error) for r in reads]
        points = [CurvePoint(f"{p['engine']}+{p['escalate']}", p["escalate_below"],
                             p["share"] or 0.0, p["cer"])
                  for p in curve if p["cer"] is not None]
        args.report.write_text(render(entries, _totals(reads), points), encoding="utf-8")
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
                                    data=page.preview, escalation=None, **scoring)
