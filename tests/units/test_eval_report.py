"""`submit.py eval --report`: the worst documents first, a table of them, right lines folded."""

from __future__ import annotations

import re

from tasks.cli.eval_report import ReportEntry, render
from tasks.evaluation.scoring import score, total

TRUTH = ["The first line.\nThe second line.\nThe third line."]


def _entry(document: str, read: str, error: str = "") -> ReportEntry:
    return ReportEntry(document, "default", TRUTH, [read], score(TRUTH[0], read), error)


ENTRIES = [
    _entry("a_perfect.png", TRUTH[0]),
    _entry("b_bad.png", "The frist lime.\nThe secnod line.\nThe third line."),
    _entry("c_failed.png", "", error="unsupported_format"),
    _entry("d_one_slip.png", "The first line.\nThe second lime.\nThe third line."),
]


def _report() -> str:
    return render(ENTRIES, {"default": total(e.score for e in ENTRIES)})


def test_documents_come_worst_first_in_a_table_and_in_sections() -> None:
    page = _report()
    worst_first = ["c_failed.png", "b_bad.png", "d_one_slip.png", "a_perfect.png"]
    table = page.split("<h2>")[1]
    assert table.startswith("Documents, worst first")
    assert re.findall(r"<tr><td>([a-z_]+\.png)</td>", table) == worst_first
    sections = [part.split(" · ")[0] for part in page.split("<h2>")[2:]]
    assert sections == worst_first


def test_lines_read_right_are_folded_away() -> None:
    page = _report()
    sections = {part.split(" · ")[0]: part for part in page.split("<h2>")[2:]}
    slip = sections["d_one_slip.png"]
    shown, folded = slip.split("<details>")
    assert "second" in shown and "first" not in shown and "third" not in shown
    assert folded.startswith("<summary>2 lines read right</summary>")
    assert "The first line." in folded and "The third line." in folded
    perfect = sections["a_perfect.png"]
    assert perfect.count("<table>") == 1 and "<summary>3 lines read right" in perfect
