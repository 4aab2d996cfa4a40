"""Page and document results: what a page task hands to the merge, and what a job returns.

A `PageRecord` crosses Redis from the page task that read it to the child that merges
the document (the fan-out join), and back out of the result cache; a `DocumentResult`
is a job's result until it is stored. Their `to_json()` is the public result other
services read (docs/tasks.md), so its keys and shapes are a contract: a field left
unset is left out. The codecs are generated from the fields (tasks/records/_codec.py),
with their few special cases declared on the fields; tests/units/test_result_json.py holds the
JSON in golden files. The warnings' wording: tasks/records/page_warnings.py. Pure: built
and read in worker pool children; clients read the JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tasks.records._codec import JsonRecord, json_spec
from tasks.records.formats import STORED_FORMATS
from tasks.records.page_warnings import page_warnings
from tasks.records.status import JobStatus

PAGE_SEPARATOR = "\f"
# output=markdown: a blank line, a page marker and a blank line before each page after
# the first (a form feed alone ends no CommonMark line).
MARKDOWN_PAGE_BREAK = "\n\n<!-- page {number} -->\n\n"
_FENCE = re.compile(r"^ {0,3}(?:```|~~~)", re.MULTILINE)
# The outputs stored as files beside the result (`{"key", "bytes"}` in the JSON).
STORED_OUTPUTS = STORED_FORMATS  # the formats kept as files of their own (records/formats.py)


@dataclass(frozen=True)
class WordBox(JsonRecord):
    """One word of a page with its box in the page image's pixels (x0, y0, x1, y1)."""

    text: str
    box: tuple[int, int, int, int]
    confidence: float


@dataclass(frozen=True)
class PageError(JsonRecord):
    """Why a page failed: the public `error` object (code, safe message, retryable)."""

    code: str
    message: str = field(metadata=json_spec(absent=""))
    retryable: bool = False


@dataclass(frozen=True)
class VlmRead(JsonRecord):
    """How a vision-language model read one page (the page result's `vlm` field).

    `finish_reason` is that of the last try: `stop` (the model ended the page),
    `length` (cut at the token budget), `repetition` (stopped in a loop) or `error`.
    Only `stop` is a complete read.
    """

    profile: str
    image_size: tuple[int, int]  # (width, height) as given to the model
    prompt_tokens: int
    generation_tokens: int
    finish_reason: str
    tries: int

    @property
    def complete(self) -> bool:
        return self.finish_reason == "stop"


@dataclass(frozen=True)
class Fallback(JsonRecord):
    """The engine that read a page whose model read did not finish, and why."""

    engine: str
    reason: str


# Why a page was read again by the job's escalation engine (`Escalation.reason`).
LOW_CONFIDENCE = "low_confidence"  # its mean word confidence below `escalate_below`
NO_TEXT = "no_text"  # no text on a page that is not blank


@dataclass(frozen=True)
class Escalation(JsonRecord):
    """A page read again by the job's escalation engine (the page result's `escalation`).

    `source` (the JSON's `from`) is the engine of the first reading, `to` the escalation
    engine, `reason` why (`LOW_CONFIDENCE`, `NO_TEXT`), `confidence` the first reading's
    mean word confidence from 0 to 1 (None: its engine gives none). `error`: the second
    reading did not come (no live worker, its server down past the bound, a failed
    read): the page keeps its first reading. `first_text`: the first reading's text,
    on a page that keeps the escalation engine's (the console's compare shows both).
    """

    source: str
    to: str
    reason: str
    confidence: float | None
    error: PageError | None = None
    first_text: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        return {"from": out.pop("source"), **out}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Escalation:
        rest = {key: value for key, value in data.items() if key != "from"}
        return super().from_json({"source": data["from"], **rest})


@dataclass(frozen=True)
class TextLayer(JsonRecord):
    """Whose word boxes a model's words were placed on (searchable PDF, hOCR, ALTO).

    `words` counts the placed words (boxes); `unplaced` the model's words the alignment
    found no box for: they stay in the page's text and ride on a neighbour's box.
    """

    boxes: str
    words: int
    unplaced: int = 0


# The kinds of structure blocks: DocLayNet's classes, which PyMuPDF's layout model
# predicts and docling-core's `DocItemLabel` names the same (one to one; docs/outputs.md).
BLOCK_KINDS = ("title", "section_header", "text", "list_item", "table", "picture",
               "caption", "footnote", "formula", "page_header", "page_footer")


def _spans_json(spans: tuple[tuple[int, int, int, int], ...]) -> list[dict[str, int]]:
    return [{"row": r, "col": c, "row_span": rs, "col_span": cs} for r, c, rs, cs in spans]


def _spans(data: list[Mapping[str, Any]]) -> tuple[tuple[int, int, int, int], ...]:
    return tuple((int(s["row"]), int(s["col"]), int(s["row_span"]), int(s["col_span"]))
                 for s in data)


@dataclass(frozen=True)
class Block(JsonRecord):
    """One block of a page's structure, in reading order.

    `bbox` (x0, y0, x1, y1, top-left origin) is in the page structure's `unit`; `text`
    is the block's plain text (a table's: its Markdown or HTML); `level` is set for
    titles and section headers (1 = largest type on the document's pages), `cells` for
    tables (rows of cell texts; None for a cell a spanning one covers), `spans` for
    tables whose cells span: (row, col, row_span, col_span) of each cell that covers
    more than its own grid cell (docling-core's `TableCell` offsets).
    """

    kind: str
    bbox: tuple[float, float, float, float]
    text: str = field(metadata=json_spec(absent=""))
    level: int | None = None
    cells: tuple[tuple[str | None, ...], ...] | None = None
    spans: tuple[tuple[int, int, int, int], ...] | None = field(
        default=None, metadata=json_spec(encode=_spans_json, decode=_spans))


@dataclass(frozen=True)
class PageStructure(JsonRecord):
    """A page's layout as PyMuPDF's layout analysis found it: its blocks in reading order.

    `unit` is `pt` (PDF points of a text-layer page, as displayed) or `px` (pixels of
    the image OCR read, the space of the page's `words`); `width`, `height` the page's.
    """

    width: float
    height: float
    unit: str
    blocks: tuple[Block, ...] = field(metadata=json_spec(absent=()))


@dataclass(frozen=True)
class PageWorker(JsonRecord):
    """The pool child that read a fanned-out page."""

    pid: int | None
    tasks_in_process: int | None
    load_seconds: float | None


@dataclass(frozen=True)
class ScriptFound(JsonRecord):
    """What `lang=auto` found on a page: its script and how its languages were chosen.

    `outcome`: `found` (read in the script's languages, or a Latin page in the language
    its words are in), `uncertain` (script confidence too low, or `name` None: too
    little text to tell), `missing` (the script's language, `missing`, is not on this
    worker), `unmapped` (no languages configured for it), `language_uncertain` (a Latin
    page whose words tell no language) or `language_missing` (a Latin page whose words'
    language, `missing`, is not on this worker: read with the script's set); all but
    `found` read the page with the worker's default set (or the script's) and warn.
    """

    name: str | None = field(metadata=json_spec(absent=None))
    confidence: float | None = field(metadata=json_spec(absent=None))
    outcome: str
    missing: tuple[str, ...] = field(
        default=(), metadata=json_spec(omit=lambda _, missing: not missing))


@dataclass(frozen=True)
class PagePreview:
    """A page's preview: the image the engine read, as small WebP bytes.

    Stored beside the result by the task that read the page (tasks/state/previews.py),
    never in the result's JSON.
    """

    data: bytes


@dataclass(frozen=True)
class PageRecord(JsonRecord):
    """One page of a result: read by OCR, taken from the PDF's text layer, blank, or failed.

    `image_size`, `rotation` and `skew` place `words` and `hocr` (in the read image's
    pixels) on the input page; `hocr` is dropped from the stored result once the job's
    hOCR/ALTO document is made. The fields are in the order of the page's JSON object.
    """

    number: int
    text: str = ""
    source: str = "ocr"  # ocr | text-layer | blank
    # A failed page has its `error` and no `confidence` key; any other page the reverse.
    confidence: float | None = field(
        default=None, metadata=json_spec(omit=lambda page, _: page.error is not None))
    error: PageError | None = None
    layer: str | None = None  # text-layer pages: `visible` or `invisible`
    rotation: int | None = None
    skew: float | None = None
    seconds: float | None = None
    hocr: str | None = None
    # output=markdown/json: the page's blocks (json keeps them); why there are none
    structure: PageStructure | None = None
    structure_error: PageError | None = None
    # A text-layer page analysed in a chunk task: its headings' type sizes (0 for a
    # title), until the merge levels them across the job's chunks (never in a delivered
    # result).
    heading_sizes: tuple[int, ...] | None = None
    # OCR'd pages: the language set and the engine that read the page; `script`: what
    # `lang=auto` found on it (None when the job named its language).
    lang: str | None = None
    engine: str | None = None
    script: ScriptFound | None = None
    vlm: VlmRead | None = None
    fallback: Fallback | None = None
    escalation: Escalation | None = None
    text_layer: TextLayer | None = None
    worker: PageWorker | None = None
    image_size: tuple[int, int] | None = None
    words: tuple[WordBox, ...] | None = None
    preview: PagePreview | None = field(default=None, repr=False, compare=False,
                                        metadata=json_spec(omit=lambda *_: True))

    @property
    def failed(self) -> bool:
        return self.error is not None


def markdown_text(pages: Iterable[PageRecord]) -> str:
    """The pages' Markdown as one CommonMark document (`MARKDOWN_PAGE_BREAK` between).

    Each page starts a block of its own, whatever the one before ends with; a page
    (a model's Markdown) that leaves a code fence open has it closed at its end.
    """
    parts: list[str] = []
    for page in pages:
        text = page.text.strip("\n")
        if len(_FENCE.findall(text)) % 2:
            text += "\n```"
        if parts:
            parts.append(MARKDOWN_PAGE_BREAK.format(number=page.number))
        parts.append(text)
    return "".join(parts)


@dataclass(frozen=True)
class StoredOutput:
    """A file made for the job (searchable PDF, hOCR, ALTO), kept in the output store."""

    key: str
    bytes: int
    # Searchable PDFs: the active content taken out of the input (kind -> how many;
    # tasks/pipeline/pdf `strip_active_content`); empty when there was none.
    removed: dict[str, int] = field(default_factory=dict)


def _outputs_json(outputs: dict[str, StoredOutput]) -> dict[str, Any]:
    """The stored files as keys of the result: `{"key", "bytes"}`, a PDF's `removed`."""
    out: dict[str, Any] = {}
    for kind, stored in outputs.items():
        out[kind] = {"key": stored.key, "bytes": stored.bytes}
        if kind == "pdf":
            out[kind]["removed"] = dict(stored.removed)
    return out


def _outputs(data: Mapping[str, Any]) -> dict[str, StoredOutput]:
    return {kind: StoredOutput(str(data[kind]["key"]), int(data[kind]["bytes"]),
                               dict(data[kind].get("removed") or {}))
            for kind in STORED_OUTPUTS if isinstance(data.get(kind), Mapping)}


def _pages_summary(result: DocumentResult) -> dict[str, Any]:
    """The keys drawn from the pages: failed pages, warnings (not when cancelled), languages."""
    out: dict[str, Any] = {}
    if result.status is not JobStatus.CANCELLED:
        out["failed_pages"] = [{"number": p.number, **p.error.to_json()}
                               for p in result.pages if p.error is not None]
        out["warnings"] = page_warnings(result.pages)
    languages = page_languages(result.pages)
    if languages:
        out["languages"] = languages
    return out


@dataclass(kw_only=True)
class DocumentResult(JsonRecord):
    """A job's result: its pages and what was read about the input.

    `text`, `failed_pages` and `warnings` are drawn from the pages; `engine` is the
    provenance of the read (engine, model, the pool child or children), `timings` its
    seconds; `outputs` the stored files (one JSON key each: `pdf`, `hocr`, `alto`). The
    fields are in the order of the result's JSON object (keyword-only, so any order).
    """

    filename: str = field(default="", metadata=json_spec(decode=lambda raw: str(raw or "")))
    format: str | None = None
    sha256: str | None = None
    output: str | None = None
    mode: str | None = None
    # `lang: null` stays in the result of a job whose format was told
    lang: str | None = field(default=None, metadata=json_spec(
        omit=lambda result, lang: lang is None and result.format is None))
    page_count: int | None = None
    # None until its pages are assembled (a document's base); "" in its JSON
    status: JobStatus | None = field(metadata=json_spec(
        absent=None, encode=lambda status: status.value if status is not None else "",
        decode=lambda raw: JobStatus(raw) if raw else None,
        then=lambda result: {"text": result.text}))
    pages: list[PageRecord] = field(default_factory=list, metadata=json_spec(then=_pages_summary))
    timings: dict[str, float] | None = None
    engine: dict[str, Any] | None = None
    # A job that carried `ground_truth`: CER, WER, characters and words of the document
    # and (where its pages and the truth's agree in number) of each page.
    scores: dict[str, Any] | None = None
    id: str | None = None
    cached: bool | None = None
    input_blob: str | None = None
    retry_of: str | None = None
    # The object a `url` input was read from ({url, size, etag, version}), and
    # the object the result was written to ({url, bytes, etag}, or {url, error}).
    input_url: dict[str, Any] | None = None
    result_object: dict[str, Any] | None = None
    outputs: dict[str, StoredOutput] = field(default_factory=dict, metadata=json_spec(
        inline=True, encode=_outputs_json, decode=_outputs))

    @property
    def text(self) -> str:
        if self.output == "markdown":
            return markdown_text(self.pages)
        return PAGE_SEPARATOR.join(p.text for p in self.pages)


def page_languages(pages: Iterable[PageRecord]) -> list[str]:
    """The language sets the document's OCR'd pages were read in, in page order, once."""
    return list(dict.fromkeys(p.lang for p in pages if p.lang and p.error is None))
