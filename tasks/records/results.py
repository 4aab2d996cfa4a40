"""Page and document results: what a page task hands to the merge, and what a job returns.

A `PageRecord` crosses Redis from the page task that read it to the child that merges
the document (the fan-out join), and back out of the result cache; a `DocumentResult`
is a job's result until it is stored. Their `to_json()` is the public result other
services read (docs/tasks.md), so its keys and shapes are a contract: a field left
unset is left out. Pure: built and read in worker pool children; clients read the JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from tasks.records.status import JobStatus

PAGE_SEPARATOR = "\f"
# The outputs stored as files beside the result (`{"key", "bytes"}` in the JSON).
STORED_OUTPUTS = ("pdf", "hocr", "alto")


@dataclass(frozen=True)
class WordBox:
    """One word of a page with its box in the page image's pixels (x0, y0, x1, y1)."""

    text: str
    box: tuple[int, int, int, int]
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "box": list(self.box), "confidence": self.confidence}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WordBox:
        x0, y0, x1, y1 = (int(v) for v in data["box"])
        return cls(str(data["text"]), (x0, y0, x1, y1), float(data["confidence"]))


@dataclass(frozen=True)
class PageError:
    """Why a page failed: the public `error` object (code, safe message, retryable)."""

    code: str
    message: str
    retryable: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PageError:
        return cls(str(data["code"]), str(data.get("message", "")),
                   bool(data.get("retryable")))


@dataclass(frozen=True)
class VlmRead:
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

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.profile, "image_size": list(self.image_size),
                "prompt_tokens": self.prompt_tokens,
                "generation_tokens": self.generation_tokens,
                "finish_reason": self.finish_reason, "tries": self.tries}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VlmRead:
        width, height = (int(v) for v in data["image_size"])
        return cls(str(data["profile"]), (width, height), int(data["prompt_tokens"]),
                   int(data["generation_tokens"]), str(data["finish_reason"]),
                   int(data["tries"]))


@dataclass(frozen=True)
class Fallback:
    """The engine that read a page whose model read did not finish, and why."""

    engine: str
    reason: str


@dataclass(frozen=True)
class TextLayer:
    """Whose word boxes a model's words were placed on for the searchable PDF."""

    boxes: str
    words: int


# The kinds of structure blocks: DocLayNet's classes, which PyMuPDF's layout model
# predicts and docling-core's `DocItemLabel` names the same (one to one; docs/outputs.md).
BLOCK_KINDS = ("title", "section_header", "text", "list_item", "table", "picture",
               "caption", "footnote", "formula", "page_header", "page_footer")


@dataclass(frozen=True)
class Block:
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
    text: str
    level: int | None = None
    cells: tuple[tuple[str | None, ...], ...] | None = None
    spans: tuple[tuple[int, int, int, int], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "bbox": list(self.bbox), "text": self.text}
        if self.level is not None:
            out["level"] = self.level
        if self.cells is not None:
            out["cells"] = [list(row) for row in self.cells]
        if self.spans is not None:
            out["spans"] = [{"row": r, "col": c, "row_span": rs, "col_span": cs}
                            for r, c, rs, cs in self.spans]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Block:
        x0, y0, x1, y1 = (float(v) for v in data["bbox"])
        cells = data.get("cells")
        spans = data.get("spans")
        return cls(str(data["kind"]), (x0, y0, x1, y1), str(data.get("text", "")),
                   data.get("level"),
                   tuple(tuple(row) for row in cells) if cells is not None else None,
                   tuple((int(s["row"]), int(s["col"]), int(s["row_span"]),
                          int(s["col_span"])) for s in spans) if spans is not None
                   else None)


@dataclass(frozen=True)
class PageStructure:
    """A page's layout as PyMuPDF's layout analysis found it: its blocks in reading order.

    `unit` is `pt` (PDF points of a text-layer page, as displayed) or `px` (pixels of
    the image OCR read, the space of the page's `words`); `width`, `height` the page's.
    """

    width: float
    height: float
    unit: str
    blocks: tuple[Block, ...]

    def to_json(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "unit": self.unit,
                "blocks": [b.to_json() for b in self.blocks]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PageStructure:
        return cls(float(data["width"]), float(data["height"]), str(data["unit"]),
                   tuple(Block.from_json(b) for b in data.get("blocks", ())))


@dataclass(frozen=True)
class PageWorker:
    """The pool child that read a fanned-out page."""

    pid: int | None
    tasks_in_process: int | None
    load_seconds: float | None


@dataclass(frozen=True)
class ScriptFound:
    """What `lang=auto` found on a page: its script and how its languages were chosen.

    `outcome`: `found` (read in the script's languages), `uncertain` (script confidence
    too low, or `name` None: too little text to tell), `missing` (the script's language,
    `missing`, is not on this worker) or `unmapped` (no languages configured for it);
    all but `found` read the page with the worker's default set and warn.
    """

    name: str | None
    confidence: float | None
    outcome: str
    missing: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "confidence": self.confidence,
                               "outcome": self.outcome}
        if self.missing:
            out["missing"] = list(self.missing)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScriptFound:
        return cls(data.get("name"), data.get("confidence"), str(data["outcome"]),
                   tuple(data.get("missing", ())))


@dataclass(frozen=True)
class PageRecord:
    """One page of a result: read by OCR, taken from the PDF's text layer, blank, or failed.

    `image_size`, `rotation` and `skew` place `words` and `hocr` (in the read image's
    pixels) on the input page; `hocr` is dropped from the stored result once the job's
    hOCR/ALTO document is made.
    """

    number: int
    text: str = ""
    source: str = "ocr"  # ocr | text-layer | blank
    confidence: float | None = None
    layer: str | None = None  # text-layer pages: `visible` or `invisible`
    rotation: int | None = None
    skew: float | None = None
    seconds: float | None = None
    vlm: VlmRead | None = None
    fallback: Fallback | None = None
    text_layer: TextLayer | None = None
    image_size: tuple[int, int] | None = None
    words: tuple[WordBox, ...] | None = None
    hocr: str | None = None
    error: PageError | None = None
    worker: PageWorker | None = None
    # output=markdown/json: the page's blocks (json keeps them); why there are none
    structure: PageStructure | None = None
    structure_error: PageError | None = None
    # A text-layer page analysed in a chunk task: its headings' type sizes, until the
    # merge ranks them across the job's chunks (never in a delivered result).
    heading_sizes: tuple[int, ...] | None = None
    # OCR'd pages: the language set and the engine that read the page; `script`: what
    # `lang=auto` found on it (None when the job named its language).
    lang: str | None = None
    engine: str | None = None
    script: ScriptFound | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"number": self.number, "text": self.text,
                               "source": self.source}
        if self.error is not None:
            out["error"] = self.error.to_json()
        else:
            out["confidence"] = self.confidence
        for name in ("layer", "rotation", "skew", "seconds", "hocr"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name in ("structure", "structure_error"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_json()
        if self.heading_sizes is not None:
            out["heading_sizes"] = list(self.heading_sizes)
        for name in ("lang", "engine"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.script is not None:
            out["script"] = self.script.to_json()
        for name in ("vlm", "fallback", "text_layer", "worker"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_json() if isinstance(value, VlmRead) else \
                    {f.name: getattr(value, f.name) for f in fields(value)}
        if self.image_size is not None:
            out["image_size"] = list(self.image_size)
        if self.words is not None:
            out["words"] = [w.to_json() for w in self.words]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PageRecord:
        size = data.get("image_size")
        words = data.get("words")
        return cls(
            number=int(data["number"]), text=str(data.get("text", "")),
            source=str(data.get("source", "ocr")), confidence=data.get("confidence"),
            layer=data.get("layer"), rotation=data.get("rotation"), skew=data.get("skew"),
            seconds=data.get("seconds"),
            vlm=VlmRead.from_json(data["vlm"]) if data.get("vlm") else None,
            fallback=Fallback(**data["fallback"]) if data.get("fallback") else None,
            text_layer=TextLayer(**data["text_layer"]) if data.get("text_layer") else None,
            image_size=(int(size[0]), int(size[1])) if size else None,
            words=tuple(WordBox.from_json(w) for w in words) if words is not None else None,
            hocr=data.get("hocr"),
            error=PageError.from_json(data["error"]) if data.get("error") else None,
            worker=PageWorker(**data["worker"]) if data.get("worker") else None,
            structure=PageStructure.from_json(data["structure"])
            if data.get("structure") else None,
            structure_error=PageError.from_json(data["structure_error"])
            if data.get("structure_error") else None,
            heading_sizes=tuple(int(s) for s in data["heading_sizes"])
            if data.get("heading_sizes") is not None else None,
            lang=data.get("lang"), engine=data.get("engine"),
            script=ScriptFound.from_json(data["script"]) if data.get("script") else None)


@dataclass(frozen=True)
class StoredOutput:
    """A file made for the job (searchable PDF, hOCR, ALTO), kept in the output store."""

    key: str
    bytes: int
    # Searchable PDFs: the active content taken out of the input (kind -> how many;
    # tasks/pipeline/pdf.py `strip_active_content`); empty when there was none.
    removed: dict[str, int] = field(default_factory=dict)


@dataclass
class DocumentResult:
    """A job's result: its pages and what was read about the input.

    `text`, `failed_pages` and `warnings` are drawn from the pages; `engine` is the
    provenance of the read (engine, model, the pool child or children), `timings` its
    seconds; `outputs` the stored files (one JSON key each: `pdf`, `hocr`, `alto`).
    """

    status: JobStatus | None  # None until its pages are assembled (a document's base)
    pages: list[PageRecord] = field(default_factory=list)
    id: str | None = None
    filename: str = ""
    format: str | None = None
    sha256: str | None = None
    output: str | None = None
    mode: str | None = None
    lang: str | None = None
    page_count: int | None = None
    engine: dict[str, Any] | None = None
    timings: dict[str, float] | None = None
    cached: bool | None = None
    input_blob: str | None = None
    retry_of: str | None = None
    outputs: dict[str, StoredOutput] = field(default_factory=dict)
    # Issue 32: the object a `url` input was read from ({url, size, etag, version}), and
    # the object the result was written to ({url, bytes, etag}, or {url, error}).
    input_url: dict[str, Any] | None = None
    result_object: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return PAGE_SEPARATOR.join(p.text for p in self.pages)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("filename", "format", "sha256", "output", "mode", "lang", "page_count"):
            value = getattr(self, name)
            if value is not None or (name == "lang" and self.format is not None):
                out[name] = value
        out["status"] = self.status.value if self.status is not None else ""
        out["text"] = self.text
        out["pages"] = [p.to_json() for p in self.pages]
        if self.status is not JobStatus.CANCELLED:
            out["failed_pages"] = [{"number": p.number, **p.error.to_json()}
                                   for p in self.pages if p.error is not None]
            out["warnings"] = page_warnings(self.pages)
        languages = page_languages(self.pages)
        if languages:
            out["languages"] = languages
        for name in ("timings", "engine", "id", "cached", "input_blob", "retry_of",
                     "input_url", "result_object"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for kind, stored in self.outputs.items():
            out[kind] = {"key": stored.key, "bytes": stored.bytes}
            if kind == "pdf":
                out[kind]["removed"] = dict(stored.removed)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DocumentResult:
        return cls(
            status=JobStatus(data["status"]) if data.get("status") else None,
            pages=[PageRecord.from_json(p) for p in data.get("pages", [])],
            id=data.get("id"), filename=str(data.get("filename") or ""),
            format=data.get("format"), sha256=data.get("sha256"), output=data.get("output"),
            mode=data.get("mode"), lang=data.get("lang"), page_count=data.get("page_count"),
            engine=data.get("engine"), timings=data.get("timings"), cached=data.get("cached"),
            input_blob=data.get("input_blob"), retry_of=data.get("retry_of"),
            input_url=data.get("input_url"), result_object=data.get("result_object"),
            outputs={kind: StoredOutput(str(data[kind]["key"]), int(data[kind]["bytes"]),
                                        dict(data[kind].get("removed") or {}))
                     for kind in STORED_OUTPUTS if isinstance(data.get(kind), Mapping)})


def page_languages(pages: Iterable[PageRecord]) -> list[str]:
    """The language sets the document's OCR'd pages were read in, in page order, once."""
    return list(dict.fromkeys(p.lang for p in pages if p.lang and p.error is None))


def _script_warning(page: PageRecord, script: ScriptFound) -> dict[str, Any]:
    """The page warning of an `auto` page not read in its script's languages."""
    name, lang = script.name, page.lang or "the default languages"
    if script.outcome == "missing":
        return {"page": page.number, "code": "lang_missing",
                "message": f"page {page.number}: its script is {name}, whose language "
                           f"{'+'.join(script.missing)} this worker lacks; read with {lang}"}
    if script.outcome == "unmapped":
        return {"page": page.number, "code": "lang_missing",
                "message": f"page {page.number}: its script is {name}, for which this "
                           f"worker has no languages (OCR_AUTO_LANGS); read with {lang}"}
    seen = "too little text to tell its script" if name is None else \
        f"its script is uncertain ({name}, confidence {script.confidence})"
    return {"page": page.number, "code": "lang_uncertain",
            "message": f"page {page.number}: {seen}; read with the worker's default "
                       f"languages {lang}"}


def page_warnings(pages: Iterable[PageRecord]) -> list[dict[str, Any]]:
    """Pages whose text is not what was asked for, as the result's `warnings`.

    A fallback engine's text (`vlm_fallback`), and plain text where the page's layout
    analysis failed (`layout_failed`).
    """
    warnings = []
    for page in pages:
        if page.script is not None and page.script.outcome != "found" and page.error is None:
            warnings.append(_script_warning(page, page.script))
        if page.structure_error is not None and page.error is None:
            warnings.append({"page": page.number, "code": page.structure_error.code,
                             "message": page.structure_error.message})
        if page.fallback is not None and page.error is None:
            tries = page.vlm.tries if page.vlm is not None else 0
            warnings.append({
                "page": page.number, "code": "vlm_fallback",
                "message": f"page {page.number}: the model's read ended with "
                           f"`{page.fallback.reason}` after {tries} tries; "
                           f"the text is {page.fallback.engine}'s"})
    return warnings
