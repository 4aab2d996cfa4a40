"""`submit.py eval --report FILE.html`: the reads aligned with their ground truth.

Runs in submit.py (a user's machine). One self-contained HTML file (its style inline,
no script, no external asset): per document and engine, its scores, then the ground
truth's lines worst first, each with what the engine read there: a character it missed
inside `<del>`, one it added inside `<ins>`, a wrong one as both. Every text is
escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass

from tasks.evaluation.scoring import Line, Score, align_lines

__all__ = ["ReportEntry", "render", "rendered_line"]

STYLE = """
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; margin-bottom: 2em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; vertical-align: top; }
td.text { font-family: monospace; white-space: pre-wrap; }
del { background: #fbb; text-decoration: line-through; }
ins { background: #bfb; text-decoration: none; }
"""


@dataclass(frozen=True)
class ReportEntry:
    """One document read by one engine: its pages' truth and hypothesis, its score."""

    document: str
    engine: str
    truth: list[str]
    hypothesis: list[str]
    score: Score
    error: str = ""


def rendered_line(line: Line) -> str:
    """A line's alignment as HTML: misses in `<del>`, additions in `<ins>`."""
    out = []
    for kind, truth, read in line.pieces:
        if kind in ("delete", "replace"):
            out.append(f"<del>{html.escape(truth)}</del>")
        if kind in ("insert", "replace"):
            out.append(f"<ins>{html.escape(read)}</ins>")
        if kind == "equal":
            out.append(html.escape(truth))
    return "".join(out)


def _percent(rate: float) -> str:
    return "n/a" if rate == float("inf") else f"{rate:.2%}"


def _lines(entry: ReportEntry) -> list[tuple[int, int, Line]]:
    """(page, line, alignment) of every ground-truth line, worst first."""
    if len(entry.truth) == len(entry.hypothesis):
        pairs = list(zip(entry.truth, entry.hypothesis, strict=True))
    else:
        pairs = [("\n".join(entry.truth), "\n".join(entry.hypothesis))]
    found = [(page, number, line)
             for page, (truth, read) in enumerate(pairs, start=1)
             for number, line in enumerate(align_lines(truth, read), start=1)]
    found.sort(key=lambda f: (-f[2].cer if f[2].chars else -f[2].edits, -f[2].edits))
    return found


def _section(entry: ReportEntry) -> str:
    title = f"{html.escape(entry.document)} · {html.escape(entry.engine)}"
    summary = (f"CER {_percent(entry.score.cer)}, WER {_percent(entry.score.wer)} "
               f"({entry.score.chars} characters, {entry.score.words} words)")
    parts = [f"<h2>{title}</h2>", f"<p>{summary}</p>"]
    if entry.error:
        parts.append(f"<p>the job failed: {html.escape(entry.error)}</p>")
    rows = [f"<tr><td>{page}</td><td>{number}</td><td>{line.edits}</td>"
            f"<td>{_percent(line.cer)}</td><td class=\"text\">{rendered_line(line)}</td></tr>"
            for page, number, line in _lines(entry)]
    parts.append("<table><tr><th>page</th><th>line</th><th>edits</th><th>CER</th>"
                 "<th>read (missed: <del>struck</del>, added: <ins>marked</ins>)</th>"
                 "</tr>" + "".join(rows) + "</table>")
    return "\n".join(parts)


def render(entries: Iterable[ReportEntry], summary: dict[str, Score]) -> str:
    """The whole report: a summary per engine, then each document and engine."""
    head = "".join(f"<tr><td>{html.escape(engine)}</td><td>{_percent(s.cer)}</td>"
                   f"<td>{_percent(s.wer)}</td><td>{s.chars}</td><td>{s.words}</td></tr>"
                   for engine, s in summary.items())
    body = "\n".join(_section(entry) for entry in entries)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>OCR accuracy</title><style>{STYLE}</style></head><body>\n"
            "<h1>OCR accuracy</h1><table><tr><th>engine</th><th>CER</th><th>WER</th>"
            f"<th>characters</th><th>words</th></tr>{head}</table>\n{body}\n"
            "</body></html>\n")
