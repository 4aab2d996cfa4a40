"""`submit.py eval --report FILE.html`: the reads aligned with their ground truth.

Runs in submit.py (a user's machine). One self-contained HTML file (its style inline,
no script, no external asset). It opens with a summary per engine and a table of every
document and engine, worst first. Then a section per document and engine, in the same
order: its scores, then the ground truth's lines it misread, worst first, each with what
the engine read there: a character it missed inside `<del>`, one it added inside
`<ins>`, a wrong one as both. The lines read right are folded away (`<details>`).
Every text is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass

from tasks.evaluation.scoring import Line, Score, align_lines

__all__ = ["ReportEntry", "render", "rendered_line", "worst_first"]

STYLE = """
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; margin-bottom: 2em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; vertical-align: top; }
td.text { font-family: monospace; white-space: pre-wrap; }
del { background: #fbb; text-decoration: line-through; }
ins { background: #bfb; text-decoration: none; }
summary { cursor: pointer; margin-bottom: 1em; }
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


_HEAD = ("<table><tr><th>page</th><th>line</th><th>edits</th><th>CER</th>"
         "<th>read (missed: <del>struck</del>, added: <ins>marked</ins>)</th></tr>")


def _rows(lines: list[tuple[int, int, Line]]) -> str:
    return "".join(f"<tr><td>{page}</td><td>{number}</td><td>{line.edits}</td>"
                   f"<td>{_percent(line.cer)}</td><td class=\"text\">{rendered_line(line)}"
                   "</td></tr>" for page, number, line in lines)


def _section(entry: ReportEntry) -> str:
    title = f"{html.escape(entry.document)} · {html.escape(entry.engine)}"
    summary = (f"CER {_percent(entry.score.cer)}, WER {_percent(entry.score.wer)} "
               f"({entry.score.chars} characters, {entry.score.words} words)")
    parts = [f"<h2>{title}</h2>", f"<p>{summary}</p>"]
    if entry.error:
        parts.append(f"<p>the job failed: {html.escape(entry.error)}</p>")
    lines = _lines(entry)
    wrong = [found for found in lines if found[2].edits]
    right = [found for found in lines if not found[2].edits]
    if wrong:
        parts.append(_HEAD + _rows(wrong) + "</table>")
    if right:
        parts.append(f"<details><summary>{len(right)} lines read right</summary>"
                     + _HEAD + _rows(right) + "</table></details>")
    return "\n".join(parts)


def worst_first(entries: Iterable[ReportEntry]) -> list[ReportEntry]:
    """The entries by CER, highest first: failed jobs, then misreads, then perfect reads.

    Ties (same CER) keep their order, the document's name then the engine's.
    """
    return sorted(entries, key=lambda e: (not e.error, -e.score.cer, -e.score.char_edits))


def _documents(entries: list[ReportEntry]) -> str:
    """The table of every document and engine, in the report's order."""
    rows = "".join(
        f"<tr><td>{html.escape(e.document)}</td><td>{html.escape(e.engine)}</td>"
        f"<td>{_percent(e.score.cer)}</td><td>{_percent(e.score.wer)}</td>"
        f"<td>{e.score.chars}</td><td>{html.escape(e.error) or 'read'}</td></tr>"
        for e in entries)
    return ("<h2>Documents, worst first</h2><table><tr><th>document</th><th>engine</th>"
            "<th>CER</th><th>WER</th><th>characters</th><th>job</th></tr>"
            f"{rows}</table>")


def render(entries: Iterable[ReportEntry], summary: dict[str, Score]) -> str:
    """The whole report: a summary per engine and one of the documents, then each one."""
    ordered = worst_first(entries)
    head = "".join(f"<tr><td>{html.escape(engine)}</td><td>{_percent(s.cer)}</td>"
                   f"<td>{_percent(s.wer)}</td><td>{s.chars}</td><td>{s.words}</td></tr>"
                   for engine, s in summary.items())
    body = "\n".join(_section(entry) for entry in ordered)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>OCR accuracy</title><style>{STYLE}</style></head><body>\n"
            "<h1>OCR accuracy</h1><table><tr><th>engine</th><th>CER</th><th>WER</th>"
            f"<th>characters</th><th>words</th></tr>{head}</table>\n"
            f"{_documents(ordered)}\n{body}\n</body></html>\n")
