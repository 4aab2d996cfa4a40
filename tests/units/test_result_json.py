"""Golden files of the public result JSON (docs/tasks.md): its keys, order and shapes.

The records of tasks/records/results.py are built here with every field that can show,
and each JSON they give is compared with a file under tests/fixtures/results/, byte
for byte (key order included); rewrite them with `python -m tests.units.test_result_json
--write` only when the public JSON changes on purpose.

Six of the eight files are held to fixed bytes as well (`OLD_CODEC_SHA256`), the
shapes clients have read longest: page_failed, page_text_layer, document_cancelled,
document_unassembled, document_success_pdf_no_removed and lenient.json. The other two,
page_full and document_partial, hold what those lack: an OCR page's `text_layer`
record with `"unplaced"` (the model's words the alignment found no box for, counted in
the page record), and a Markdown result whose `text` joins its pages with a blank line,
`<!-- page N -->` and a blank line (not a form feed), so that the whole Markdown is
valid CommonMark.

Each case also reads its JSON back (`from_json`) and must give the same record and the
same JSON again: a page record crosses Redis that way, a result the cache. The lenient
cases read JSON with keys left out (older or hand-made records) and hold what they
decode to. Pure: no Redis, no worker.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks.records.results import (
    Block,
    DocumentResult,
    Fallback,
    PageError,
    PageRecord,
    PageStructure,
    PageWorker,
    ScriptFound,
    StoredOutput,
    TextLayer,
    VlmRead,
    WordBox,
)
from tasks.records.status import JobStatus

GOLDEN = Path(__file__).parents[1] / "fixtures" / "results"


def _structure() -> PageStructure:
    return PageStructure(width=612.0, height=792.0, unit="pt", blocks=(
        Block(kind="title", bbox=(72.0, 60.5, 540.0, 90.25), text="Annual report", level=1),
        Block(kind="text", bbox=(72.0, 100.0, 540.0, 300.0), text="First paragraph."),
        Block(kind="table", bbox=(72.0, 320.0, 540.0, 500.0),
              text="<table><tr><td colspan=\"2\">a</td></tr><tr><td>b</td><td>c</td></tr>"
                   "</table>",
              cells=(("a", None), ("b", "c")), spans=((0, 0, 1, 2),)),
        Block(kind="picture", bbox=(0.0, 0.0, 10.0, 10.0), text=""),
    ))


def _ocr_page() -> PageRecord:
    """A page a VLM read, fell back on tesseract for, with every optional field set."""
    return PageRecord(
        number=1, text="Annual report\nFirst paragraph.", source="ocr", confidence=91.5,
        rotation=90, skew=-0.42, seconds=1.234,
        vlm=VlmRead(profile="olmocr", image_size=(1288, 966), prompt_tokens=812,
                    generation_tokens=8000, finish_reason="length", tries=2),
        fallback=Fallback(engine="tesseract", reason="length"),
        text_layer=TextLayer(boxes="tesseract", words=2),
        image_size=(2480, 3508),
        words=(WordBox(text="Annual", box=(10, 20, 110, 60), confidence=96.0),
               WordBox(text="report", box=(120, 20, 230, 60), confidence=88.25)),
        hocr="<div class='ocr_page'></div>",
        worker=PageWorker(pid=4242, tasks_in_process=3, load_seconds=0.75),
        structure=_structure(),
        heading_sizes=(24, 18),
        lang="eng+vie", engine="mlx-vlm",
        script=ScriptFound(name="Latin", confidence=2.5, outcome="missing",
                           missing=("vie",)))


def _pages() -> list[PageRecord]:
    return [
        _ocr_page(),
        PageRecord(number=2, text="Plain text of a text layer", source="text-layer",
                   layer="invisible"),
        PageRecord(number=3, text="", source="blank", seconds=0.012),
        PageRecord(number=4, source="ocr",
                   error=PageError(code="timeout", message="page 4 took too long",
                                   retryable=True),
                   worker=PageWorker(pid=None, tasks_in_process=None, load_seconds=None)),
        PageRecord(number=5, text="text without layout", confidence=80.0,
                   structure_error=PageError(code="layout_failed",
                                             message="page 5: layout analysis failed"),
                   lang="eng", engine="tesseract",
                   script=ScriptFound(name=None, confidence=None, outcome="uncertain")),
        PageRecord(number=6, text="Ελληνικά", confidence=70.0, lang="ell+eng",
                   engine="tesseract",
                   script=ScriptFound(name="Greek", confidence=0.4, outcome="uncertain")),
        PageRecord(number=7, text="x", confidence=None, lang="eng", engine="tesseract",
                   script=ScriptFound(name="Thai", confidence=9.0, outcome="unmapped")),
        PageRecord(number=8, text="Хорошо", confidence=85.0, lang="rus+eng",
                   engine="tesseract",
                   script=ScriptFound(name="Cyrillic", confidence=12.0, outcome="found")),
    ]


def _cases() -> dict[str, Any]:
    """Each golden file's record (a page, or a document result)."""
    return {
        "page_full": _ocr_page(),
        "page_failed": _pages()[3],
        "page_text_layer": _pages()[1],
        "document_partial": DocumentResult(
            status=JobStatus.PARTIAL, pages=_pages(), id="job-1", filename="report.pdf",
            format="pdf", sha256="ab" * 32, output="markdown", mode="auto", lang="auto",
            page_count=8, engine={"name": "mlx-vlm", "model": "org/name", "pids": [1, 2]},
            timings={"total": 12.5, "ocr": 10.25}, cached=False, input_blob="blob:1",
            retry_of="job-0",
            outputs={"pdf": StoredOutput(key="out:job-1.pdf", bytes=123456,
                                         removed={"javascript": 2}),
                     "hocr": StoredOutput(key="out:job-1.hocr", bytes=789)},
            input_url={"url": "s3://bucket/report.pdf", "size": 99, "etag": "e",
                       "version": None},
            result_object={"url": "s3://bucket/report.json", "bytes": 1000, "etag": "f"}),
        "document_cancelled": DocumentResult(
            status=JobStatus.CANCELLED, pages=_pages()[1:4], filename="scan.png",
            format="png", lang=None, page_count=3),
        "document_unassembled": DocumentResult(status=None, filename=""),
        "document_success_pdf_no_removed": DocumentResult(
            status=JobStatus.SUCCESS, pages=[_pages()[1]], filename="a.pdf", format="pdf",
            lang="eng", page_count=1, cached=True,
            outputs={"pdf": StoredOutput(key="out:a.pdf", bytes=10)}),
    }


# JSON with keys left out, as `from_json` accepts it: each case's expected re-encoding
# is in lenient.json (key -> the JSON that reading the input and writing it again gives).
_LENIENT: dict[str, tuple[Any, dict[str, Any]]] = {
    "page_number_only": (PageRecord, {"number": 9}),
    "page_empty_records": (PageRecord, {"number": 9, "vlm": None, "fallback": {},
                                        "worker": None, "structure": None,
                                        "script": None, "words": [], "image_size": None,
                                        "heading_sizes": []}),
    "page_error_without_message": (PageRecord, {"number": 2, "error": {"code": "x"}}),
    "block_without_text": (Block, {"kind": "text", "bbox": [1, 2, 3, 4]}),
    "structure_without_blocks": (PageStructure, {"width": 1, "height": 2, "unit": "px"}),
    "script_minimal": (ScriptFound, {"outcome": "uncertain"}),
    "document_minimal": (DocumentResult, {"status": "SUCCESS"}),
    "document_no_status": (DocumentResult, {"filename": None, "pages": []}),
    "document_outputs": (DocumentResult, {"status": "FAILURE", "format": "pdf",
                                          "alto": {"key": "k", "bytes": "5"},
                                          "pdf": {"key": "p", "bytes": 7, "removed": None},
                                          "hocr": "not an object"}),
}


# The golden files held to fixed bytes (the shapes clients have read longest), by sha256.
OLD_CODEC_SHA256 = {
    "page_failed": "09d2d221cdae633af420f70c9633c35ffc4241abf5de6a9549386079d19d7ff7",
    "page_text_layer": "3b1da373ba613244d869f604cfb890dd5355558476d16e31d364badeca4f6848",
    "document_cancelled": "4716e1f5579cbbe74c3c683fdb103f14c6b9a44834e554adb0e1dca5d88bf2b7",
    "document_unassembled": "1d5ef12083e59a44073463e3c89da624cf6c22d331d5fe37921af885bfabbed4",
    "document_success_pdf_no_removed":
        "8bd54472ca378bef8db1cfb2be737d2ea4d0b410071ce4a329ae562a9251c6df",
    "lenient": "7289d960fe89f630f41771c73c1bbef1ae601f8bd26e0ab1ffcfeb6e219db00d",
}


def _dump(data: Any) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def _lenient_json() -> dict[str, Any]:
    return {name: kind.from_json(data).to_json() for name, (kind, data) in _LENIENT.items()}


@pytest.mark.parametrize("name", sorted(_cases()))
def test_result_json_matches_its_golden_file(name: str) -> None:
    record = _cases()[name]
    text = _dump(record.to_json())
    assert text == (GOLDEN / f"{name}.json").read_text(encoding="utf-8")
    again = type(record).from_json(json.loads(text))
    assert again == record
    assert _dump(again.to_json()) == text


def test_lenient_json_decodes_as_before() -> None:
    expected = json.loads((GOLDEN / "lenient.json").read_text(encoding="utf-8"))
    assert _lenient_json() == expected
    assert list(_lenient_json()) == list(expected)
    for name, out in _lenient_json().items():
        assert list(out) == list(expected[name]), name


@pytest.mark.parametrize("name", sorted(OLD_CODEC_SHA256))
def test_old_codec_golden_files_are_unchanged(name: str) -> None:
    """The six files the old codecs wrote stay those bytes, even after a `--write`."""
    digest = hashlib.sha256((GOLDEN / f"{name}.json").read_bytes()).hexdigest()
    assert digest == OLD_CODEC_SHA256[name], f"{name}.json no longer what the old codecs gave"


def test_every_golden_file_is_old_or_changed_on_purpose() -> None:
    """Each golden file is one of the six above or one of the two the docstring names."""
    files = {path.stem for path in GOLDEN.glob("*.json")}
    assert files == set(OLD_CODEC_SHA256) | {"page_full", "document_partial"}


def _write() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name, record in _cases().items():
        (GOLDEN / f"{name}.json").write_text(_dump(record.to_json()), encoding="utf-8")
    (GOLDEN / "lenient.json").write_text(_dump(_lenient_json()), encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("python -m tests.units.test_result_json --write: rewrite the golden files "
                 "(only when the public result JSON changes on purpose)")
    _write()


def test_a_page_that_gave_no_text_is_warned_of() -> None:
    """A page neither blank nor failed that gave no text is `text_missing`, never silent."""
    pages = [PageRecord(1, "", source="text-layer"), PageRecord(2, "", source="blank"),
             PageRecord(3, "words"), PageRecord(4, "  \n", source="ocr")]
    result = DocumentResult(status=JobStatus.SUCCESS, pages=pages, output="markdown")
    warned = result.to_json()["warnings"]
    assert [(w["page"], w["code"]) for w in warned] == [(1, "text_missing"),
                                                        (4, "text_missing")]
