"""The console's comparison of two readings of a page (tasks/console/_compare.py)."""

from __future__ import annotations

from tasks.console._compare import Row, Segment, compare


def shown(row: Row) -> tuple[str, str]:
    def side(parts: list[Segment]) -> str:
        return " ".join(f"[{p.kind}:{p.text}]" if p.kind != "same" else p.text for p in parts)
    return side(row.left), side(row.right)


def test_equal_lines_stay_whole_and_changed_words_are_marked() -> None:
    rows = compare(["Invoice 4471", "for garden tools", "due in May"],
                   ["Invoice 4471", "for garclen tools", "due in May", "Total 12"])
    assert [row.same for row in rows] == [True, False, True, False]
    assert shown(rows[0]) == ("Invoice 4471", "Invoice 4471")
    assert shown(rows[1]) == ("for [del:garden] tools", "for [ins:garclen] tools")
    assert shown(rows[3]) == ("", "[ins:Total 12]")


def test_markup_is_kept_as_text_for_the_template_to_escape() -> None:
    rows = compare(["<script>x</script>"], ["<img src=x onerror=y>"])
    assert shown(rows[0]) == ("[del:<script>x</script>]", "[ins:<img src=x onerror=y>]")


def test_nothing_to_compare() -> None:
    assert compare([], []) == []
