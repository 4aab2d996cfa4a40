"""A page's lines from its words, and corrected lines put back into its text and layouts."""

from __future__ import annotations

from typing import Any

from tasks.pipeline.corrected_layouts import corrected_layout
from tasks.pipeline.layouts import merge_alto, merge_hocr, words_hocr
from tasks.pipeline.page_lines import corrected_text, corrected_words, page_lines, replaced_in
from tasks.records.results import PageRecord, WordBox
from tasks.state.corrections import box_matches, iou


def word(text: str, x0: int, y0: int, x1: int, y1: int, conf: float = 90.0) -> dict[str, Any]:
    return {"text": text, "box": [x0, y0, x1, y1], "confidence": conf}


# Two columns read as tesseract reads them: the left column's lines, then the right's.
WORDS = [word("Left", 10, 10, 60, 30), word("one", 70, 12, 110, 30, 50.0),
         word("Left", 10, 50, 60, 70), word("two", 70, 50, 110, 70),
         word("Right", 300, 10, 360, 30), word("one", 370, 10, 410, 30),
         word("Right", 300, 50, 360, 70, -1.0)]
PAGE = {"number": 3, "text": "Left one\nLeft two\n\nRight one\nRight", "words": WORDS,
        "image_size": [500, 100], "rotation": 0, "skew": 0.0, "source": "ocr"}


def test_words_group_into_lines_in_reading_order() -> None:
    lines = page_lines(PAGE)
    assert [(line.id, line.text, line.box) for line in lines] == [
        ("p3-l1", "Left one", (10, 10, 110, 30)), ("p3-l2", "Left two", (10, 50, 110, 70)),
        ("p3-l3", "Right one", (300, 10, 410, 30)), ("p3-l4", "Right", (300, 50, 360, 70))]
    assert [line.confidence for line in lines] == [0.7, 0.9, 0.9, 0.0]
    assert page_lines(PAGE) == lines
    # A model's page: its text's lines, no boxes, no confidence.
    model = page_lines({"number": 1, "text": "# Title\n\nBody", "vlm": {"profile": "x"}})
    assert [(line.text, line.box, line.confidence) for line in model] == [
        ("# Title", None, None), ("Body", None, None)]


def test_corrected_lines_go_into_the_text_in_place() -> None:
    lines = page_lines(PAGE)
    changed = corrected_text(PAGE["text"], lines, {"p3-l2": "Left 2", "p3-l4": "Right two"})
    assert changed == "Left one\nLeft 2\n\nRight one\nRight two"
    # A line found within a longer one (a Markdown heading) keeps the rest of it.
    assert corrected_text("## Left one\nLeft two", lines[:2], {"p3-l1": "Left 1"}) == \
        "## Left 1\nLeft two"
    # A text whose lines cannot be found is given as the page's lines.
    assert corrected_text("something else", lines, {"p3-l1": "L1"}) == \
        "L1\nLeft two\nRight one\nRight"
    assert replaced_in("a Left  one b\nc", "Left one", "X") == "a X b\nc"


def test_corrected_words_keep_boxes_or_share_the_line() -> None:
    line = page_lines(PAGE)[0]
    assert [w["box"] for w in corrected_words("Lift ore", line)] == [[10, 10, 60, 30],
                                                                     [70, 12, 110, 30]]
    shared = corrected_words("a bb ccc", line)
    assert [w["text"] for w in shared] == ["a", "bb", "ccc"]
    assert shared[0]["box"][0] == 10 and shared[-1]["box"][2] <= 110
    assert all(a["box"][2] <= b["box"][0] for a, b in zip(shared, shared[1:], strict=False))


def test_boxes_match_by_overlap() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_matches((10, 10, 110, 30), (11, 10, 112, 31))
    assert not box_matches((10, 10, 110, 30), (10, 50, 110, 70))
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_hocr_and_alto_take_the_corrected_words() -> None:
    boxes = tuple(WordBox(w["text"], tuple(w["box"]), w["confidence"]) for w in WORDS)
    record = PageRecord(3, PAGE["text"], image_size=(500, 100), rotation=0, skew=0.0,
                        words=boxes, hocr=words_hocr(3, boxes, (500, 100)))
    lines = page_lines(PAGE)
    changes = {3: {"p3-l3": (lines[2], "Rite won too")}}
    pages = {3: PAGE}
    hocr = corrected_layout("hocr", merge_hocr([record]).encode(), pages, changes).decode()
    assert "Rite" in hocr and "won" in hocr and "too" in hocr and "Right one" not in hocr
    assert hocr.count(">Left<") == 2 and hocr.startswith("<?xml")
    alto = corrected_layout("alto", merge_alto([record]).encode(), pages, changes).decode()
    assert 'CONTENT="Rite"' in alto and 'CONTENT="too"' in alto
    assert alto.count('CONTENT="Right"') == 1  # the fourth line's, not the corrected one's
