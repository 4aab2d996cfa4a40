"""A finished job's pages as lines, with its client's corrections applied, and corrections made.

Runs in the `api` process (`GET /v1/jobs/{id}/pages/{n}`, `PUT`/`DELETE .../lines/{line}`,
every result format), and wherever a page is shown server-side. Given a job's stored
result (its JSON) and its client's corrections (tasks/state/corrections.py), keyed by
the document's sha256: a correction applies to the line of the same page whose box
matches its own (`box_matches`), in this job or any later job of the same document by
the same client, so a re-run carries a person's work. `corrected_result` is the result
every output format is made from; `original=true` reads the result as stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias

from tasks.errors import BadRequest
from tasks.records.results import PAGE_SEPARATOR, PageRecord, markdown_text
from tasks.state.corrections import (
    MAX_TEXT,
    CorrectedPage,
    Corrections,
    LineCorrection,
    box_matches,
)

if TYPE_CHECKING:
    from tasks.pipeline.page_lines import PageLine

# The corrected lines of a result, by page: line id -> (the line as read, its new text).
PageChanges: TypeAlias = "dict[int, dict[str, tuple[PageLine, str]]]"


class Missing(LookupError):
    """No such page or line in the job's result (the HTTP API answers 404 `not_found`)."""


def result_page(result: Mapping[str, Any], number: int) -> Mapping[str, Any]:
    """Page `number` of the result; `Missing` when the job has no such page."""
    for page in result.get("pages") or []:
        if int(page.get("number", 0)) == number:
            return dict(page)
    raise Missing(f"the job has no page {number}")


def _page_lines() -> ModuleType:
    """The pipeline's line functions, imported on first use: the API starts without them."""
    from tasks.pipeline import page_lines

    return page_lines


def line_box(line: PageLine, index: int) -> tuple[int, int, int, int]:
    """The box a line's correction is kept under.

    Its own, or (-1, i, -1, i) for the i-th line of a page without word boxes.
    """
    return line.box if line.box is not None else (-1, index, -1, index)


def _matches(stored: LineCorrection, line: PageLine, index: int) -> bool:
    """Whether `stored` is the correction of `line`, the `index`-th of its page.

    By its box; where one side has none (a text-layer page read for text, JSON or
    Markdown has no word boxes, read for hOCR, ALTO or a PDF it has), by the text
    the engine read.
    """
    box = line_box(line, index)
    if stored.box == box or (line.box is not None and box_matches(stored.box, box)):
        return True
    unboxed = stored.box[0] == -1 or line.box is None
    return unboxed and stored.original.split() == line.text.split()


def matched(lines: Sequence[PageLine],
            found: Sequence[LineCorrection]) -> dict[str, LineCorrection]:
    """The active corrections by the id of the line each belongs to (at most one a line)."""
    out: dict[str, LineCorrection] = {}
    for index, line in enumerate(lines, start=1):
        for correction in found:
            if correction.active and _matches(correction, line, index):
                out[line.id] = correction
                break
    return out


def line_json(line: PageLine, correction: LineCorrection | None) -> dict[str, Any]:
    """A line as the page API shows it; a corrected one with `original` and `corrected`."""
    words: list[Any] = list(line.words)
    body: dict[str, Any] = {"id": line.id, "text": line.text,
                            "box": list(line.box) if line.box is not None else None,
                            "confidence": line.confidence, "words": words}
    if correction is not None and correction.active:
        current = correction.current
        body.update(text=current.text, original=line.text,
                    words=_page_lines().corrected_words(str(current.text), line),
                    corrected={"by": current.by, "at": current.at,
                               "version": current.version})
    return body


def page_view(result: Mapping[str, Any], number: int, corrections: Corrections | None,
              image_size: Sequence[int] | None = None) -> dict[str, Any]:
    """`GET /v1/jobs/{id}/pages/{n}`: the page's size, engine, language and lines.

    `image_size`: the size of the page image the engine read, when its preview says so.
    """
    page = result_page(result, number)
    lines = _page_lines().page_lines(page)
    found = _corrections_of(result, number, corrections)
    by_line = matched(lines, found)
    size = list(image_size) if image_size else list(_page_lines().read_size(page) or (0, 0))
    return {"number": number, "image_size": size, "engine": page.get("engine"),
            "lang": page.get("lang"), "source": page.get("source", "ocr"),
            "lines": [line_json(line, by_line.get(line.id)) for line in lines]}


def _corrections_of(result: Mapping[str, Any], number: int,
                    corrections: Corrections | None) -> list[LineCorrection]:
    digest = result.get("sha256")
    if corrections is None or not digest:
        return []
    return corrections.for_page(str(digest), number)


def line_history(result: Mapping[str, Any], number: int, ident: str,
                 corrections: Corrections) -> dict[str, Any]:
    """The line with the kept versions of its correction (`versions`, oldest first)."""
    page = result_page(result, number)
    lines = _page_lines().page_lines(page)
    index, line = _line(lines, ident)
    history = [c for c in _corrections_of(result, number, corrections)
               if _matches(c, line, index)]
    body = line_json(line, matched(lines, history).get(line.id))
    body["versions"] = [v.to_json() for c in history for v in c.versions]
    return body


def _line(lines: Sequence[PageLine], ident: str) -> tuple[int, PageLine]:
    for index, line in enumerate(lines, start=1):
        if line.id == ident:
            return index, line
    raise Missing(f"the page has no line {ident!r}")


def correct_line(result: Mapping[str, Any], job_id: str, number: int, ident: str,
                 text: str | None, by: str, corrections: Corrections, *, versions: int,
                 limit: int) -> dict[str, Any]:
    """Correct line `ident` of page `number` (`text` None: revert it); the line's JSON.

    The answer is the line with its record's versions: the last `versions` kept. The
    page's corrected text is kept as ground truth (`corrected_pages`), written with
    the line's record. A correction that would take the client's stored bytes past
    `limit` (0: none) is refused, `QuotaExceeded`, and nothing is written.
    """
    if text is not None and (len(text) > MAX_TEXT or "\n" in text or "\f" in text):
        raise BadRequest(f"a line's text is one line of at most {MAX_TEXT} characters")
    digest = result.get("sha256")
    if not digest:
        raise BadRequest("the job's result names no document content to correct")
    page = result_page(result, number)
    if page.get("error") is not None:
        raise BadRequest(f"page {number} failed; it has no lines to correct")
    lines = _page_lines().page_lines(page)
    index, line = _line(lines, ident)

    def corrected(found: Sequence[LineCorrection]) -> CorrectedPage:
        by_line = matched(lines, found)
        changes = {k: str(c.current.text) for k, c in by_line.items()}
        return CorrectedPage(
            str(digest), number,
            _page_lines().corrected_text(str(page.get("text", "")), lines, changes),
            page.get("engine"), page.get("lang"), job_id, len(changes),
            max((c.current.at for c in by_line.values()), default=0.0))

    record, found = corrections.correct(str(digest), number, line_box(line, index),
                                        line.text, text, by, versions=versions,
                                        limit=limit, page_of=corrected)
    body = line_json(line, matched(lines, found).get(line.id))
    body["versions"] = [v.to_json() for v in record.versions]
    return body


def corrected_result(result: Mapping[str, Any], corrections: Corrections | None
                     ) -> tuple[dict[str, Any], PageChanges]:
    """The result with its client's corrections applied, and the changes by page.

    Each corrected page's `text` and `words` carry the corrected lines and it counts
    them (`corrected_lines`); the result's `text` is made again from its pages. The
    changes (line id -> (line as read, new text)) are what the hOCR, ALTO and PDF
    outputs apply.
    """
    digest = result.get("sha256")
    out = dict(result)
    if corrections is None or not digest:
        return out, {}
    found = corrections.of_document(str(digest))
    if not any(c.active for c in found):
        return out, {}
    pages: list[Any] = []
    changed: PageChanges = {}
    for page in result.get("pages") or []:
        number = int(page.get("number", 0))
        mine = [c for c in found if c.page == number]
        if not mine or page.get("error") is not None:
            pages.append(page)
            continue
        lines = _page_lines().page_lines(page)
        by_line = matched(lines, mine)
        if not by_line:
            pages.append(page)
            continue
        changes = {k: str(c.current.text) for k, c in by_line.items()}
        changed[number] = {line.id: (line, changes[line.id]) for line in lines
                           if line.id in changes}
        text = _page_lines().corrected_text(str(page.get("text", "")), lines, changes)
        new = dict(page, text=text, corrected_lines=len(changes))
        if isinstance(page.get("structure"), Mapping):
            new["structure"] = _corrected_structure(page["structure"], changed[number])
        if page.get("words"):
            new["words"] = [w for line in lines for w in
                            (_page_lines().corrected_words(changes[line.id], line)
                             if line.id in changes else line.words)]
        pages.append(new)
    out["pages"] = pages
    if changed:
        out["text"] = _document_text(out)
    return out, changed


def _corrected_structure(structure: Mapping[str, Any],
                         changes: Mapping[str, tuple[PageLine, str]]) -> dict[str, Any]:
    """The page's structure blocks with the changed lines' text in place, where found."""
    blocks = []
    for block in structure.get("blocks") or []:
        text = str(block.get("text", ""))
        for line, new in changes.values():
            text = _page_lines().replaced_in(text, line.text, new)
        blocks.append(dict(block, text=text) if "text" in block else block)
    return dict(structure, blocks=blocks)


def _document_text(result: Mapping[str, Any]) -> str:
    pages = result.get("pages") or []
    if result.get("output") == "markdown":
        return markdown_text(PageRecord(int(p["number"]), str(p.get("text", "")))
                             for p in pages)
    return PAGE_SEPARATOR.join(str(p.get("text", "")) for p in pages)
