"""`submit.py eval --report FILE.html`: the reads aligned with their ground truth.

Runs in submit.py (a user's machine). One self-contained HTML file (its style inline,
no script, no external asset). With escalation thresholds it opens with a plot: CER
against the share of pages escalated, one point per threshold, drawn as inline SVG (no
script: a page under a strict content security policy shows it). Then a summary per
run and a table of every document and run, worst first. Then a section per document
and run, in the same order: its scores, then the ground truth's lines it misread,
worst first, each with what the engine read there: a character it missed inside
`<del>`, one it added inside `<ins>`, a wrong one as both. The lines read right are
folded away (`<details>`). Every text is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass

from tasks.evaluation.scoring import Line, Score, align_lines

__all__ = ["CurvePoint", "ReportEntry", "curve_svg", "render", "rendered_line", "worst_first"]

STYLE = """
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; margin-bottom: 2em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; vertical-align: top; }
td.text { font-family: monospace; white-space: pre-wrap; }
svg text { font-size: 11px; }
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


@dataclass(frozen=True)
class CurvePoint:
    """One run with escalation: a point of the curve.

    Its series (engine+escalation engine), its threshold (None: the fleet's), the share
    of its pages escalated (0 to 1), its CER.
    """

    series: str
    below: float | None
    share: float
    cer: float


# The plot's size and margins, in pixels.
WIDTH, HEIGHT, LEFT, BOTTOM, TOP, RIGHT = 600, 320, 60, 40, 20, 50
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def curve_svg(points: list[CurvePoint]) -> str:
    """CER (y, from 0) against the share escalated (x, 0 to 100 %), one line per series.

    Each point is labelled with its threshold. Inline SVG: no script, no external file.
    """
    top = max([p.cer for p in points] + [0.01]) * 1.1
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(share: float) -> float:
        return LEFT + share * inner_w

    def y(cer: float) -> float:
        return TOP + inner_h - cer / top * inner_h

    parts = [f'<svg class="curve" width="{WIDTH}" height="{HEIGHT}" role="img" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}"><title>CER against the share of pages '
             "escalated</title>",
             f'<line x1="{LEFT}" y1="{y(0):.1f}" x2="{x(1):.1f}" y2="{y(0):.1f}" '
             'stroke="#333"/>',
             f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{y(0):.1f}" stroke="#333"/>']
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<text x="{x(tick):.1f}" y="{y(0) + 15:.1f}" '
                     f'text-anchor="middle">{tick:.0%}</text>')
    for tick in (0, top / 2, top):
        parts.append(f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" '
                     f'text-anchor="end">{tick:.1%}</text>')
    parts.append(f'<text x="{x(0.5):.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                 "pages escalated</text>")
    parts.append(f'<text x="12" y="{y(top / 2):.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {y(top / 2):.1f})">CER</text>')
    for n, series in enumerate(dict.fromkeys(p.series for p in points)):
        colour = COLOURS[n % len(COLOURS)]
        mine = sorted((p for p in points if p.series == series), key=lambda p: p.share)
        path = " ".join(f"{x(p.share):.1f},{y(p.cer):.1f}" for p in mine)
        parts.append(f'<polyline class="series" points="{path}" fill="none" '
                     f'stroke="{colour}"><title>{html.escape(series)}</title></polyline>'
                     f'<text x="{x(1):.1f}" y="{TOP + 14 * n:.1f}" text-anchor="end" '
                     f'fill="{colour}">{html.escape(series)}</text>')
        for p in mine:
            below = "default" if p.below is None else f"{p.below:g}"
            parts.append(
                f'<circle class="point" cx="{x(p.share):.1f}" cy="{y(p.cer):.1f}" r="4" '
                f'fill="{colour}"><title>{html.escape(series)} below {below}: '
                f"{p.share:.0%} escalated, CER {p.cer:.2%}</title></circle>"
                f'<text x="{x(p.share) + 6:.1f}" y="{y(p.cer) - 6:.1f}">{below}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _curve(points: list[CurvePoint]) -> str:
    """The plot, then its points as a table."""
    rows = "".join(f"<tr><td>{html.escape(p.series)}</td>"
                   f"<td>{'default' if p.below is None else f'{p.below:g}'}</td>"
                   f"<td>{p.share:.1%}</td><td>{_percent(p.cer)}</td></tr>"
                   for p in points)
    return ("<h2 id=\"curve\">CER against the pages escalated</h2>\n" + curve_svg(points)
            + "\n<table><tr><th>run</th><th>escalate below</th><th>pages escalated</th>"
            f"<th>CER</th></tr>{rows}</table>\n")


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


def render(entries: Iterable[ReportEntry], summary: dict[str, Score],
           curve: list[CurvePoint] | None = None) -> str:
    """The whole report: the curve, a summary per run, the documents, then each one.

    A run is an engine, or an engine with its escalation and threshold.
    """
    ordered = worst_first(entries)
    head = "".join(f"<tr><td>{html.escape(engine)}</td><td>{_percent(s.cer)}</td>"
                   f"<td>{_percent(s.wer)}</td><td>{s.chars}</td><td>{s.words}</td></tr>"
                   for engine, s in summary.items())
    body = "\n".join(_section(entry) for entry in ordered)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>OCR accuracy</title><style>{STYLE}</style></head><body>\n"
            "<h1>OCR accuracy</h1><table><tr><th>engine</th><th>CER</th><th>WER</th>"
            f"<th>characters</th><th>words</th></tr>{head}</table>\n"
            f"{_curve(curve) if curve else ''}{_documents(ordered)}\n{body}\n"
            "</body></html>\n")
