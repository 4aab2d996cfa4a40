"""Per-format normalisers of a VLM's raw reply, and the dispatch by output format.

One function per output format, chosen by `VlmProfile.output_format`
(`tasks.engines.vlm.profiles`): olmOCR's YAML front matter, DocTags, DeepSeek's
grounding, Nanonets, PaddleOCR-VL, dots.ocr's layout JSON, and plain Markdown. The only
module that imports `docling_core` (lazily, for DocTags). Pure code, no mlx: runs in the
pool child that runs the VLM, and in tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from tasks.engines.vlm.replies import (
    BLANK_RUNS,
    VlmOutput,
    markdown_output,
    markdown_to_text,
    normalise_generic,
    strip_fence,
)
from tasks.errors import EngineUnavailable

__all__ = ["NEEDS_IMAGE_SIZE", "NORMALISERS", "normalise"]

# --------------------------------------------------------------------------- olmOCR

_FRONT_MATTER = re.compile(r"\A\s*---[ \t]*\n(.*?)\n---[ \t]*(?:\n|\Z)(.*)\Z", re.S)
_OLMOCR_KEYS = ("primary_language", "is_rotation_valid", "rotation_correction", "is_table",
                "is_diagram")


def normalise_olmocr(raw: str) -> VlmOutput:
    """olmOCR: YAML front matter (language, rotation, table/diagram flags), then the text.

    The shape is olmocr's `PageResponse` (olmocr/train/front_matter.py): `---`, the five
    keys one per line, `---`, then `natural_text`. Booleans come as True/False or
    true/false; no body means a blank page; a reply whose front matter cannot be read is
    taken whole as text (no flags). `rotation_correction` is the turn olmOCR's pipeline
    applies before asking again when `is_rotation_valid` is false (olmocr/pipeline.py
    @ f7cfe4c, build_page_query: `image.transpose(Image.Transpose.ROTATE_<n>)`, which PIL
    turns counter-clockwise), so it is already counter-clockwise degrees: `rotation` is
    that value. When `is_rotation_valid` is false the text was read from a sideways page:
    the engine should turn the page by `rotation` and ask again.
    """
    text = strip_fence(raw)
    match = _FRONT_MATTER.match(text)
    meta = _parse_front_matter(match.group(1)) if match else None
    if match is None or meta is None:
        return normalise_generic(text)
    body = match.group(2)
    flags = {k: meta[k] for k in ("is_rotation_valid", "is_table", "is_diagram") if k in meta}
    rotation = None
    correction = meta.get("rotation_correction")
    if isinstance(correction, int) and correction in (0, 90, 180, 270):
        rotation = correction
    language = meta.get("primary_language")
    return markdown_output(body, rotation=rotation, flags=flags,
                            language=language if isinstance(language, str) else None)


def _parse_front_matter(block: str) -> dict[str, Any] | None:
    """The olmOCR keys of a front-matter block; None when it is not that front matter."""
    meta: dict[str, Any] = {}
    for line in block.split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip().strip("'\"")
        if not sep or key not in _OLMOCR_KEYS:
            return None
        if key == "primary_language":
            meta[key] = None if value.lower() in ("", "null", "none", "~") else value
        elif key == "rotation_correction":
            try:
                meta[key] = int(value)
            except ValueError:
                return None
        elif value.lower() in ("true", "false"):
            meta[key] = value.lower() == "true"
        else:
            return None
    return meta if meta else None


# --------------------------------------------------------------------------- DocTags

_DOCTAGS_NOISE = re.compile(r"\A\s*(?:Assistant:\s*)?|(?:<end_of_utterance>|<\|end_of_text\|>|"
                            r"<\|im_end\|>)\s*\Z")
_DOCTAG_ELEMENT = re.compile(r"</?[a-z_0-9]+>")
_DOCTAG_LOC = re.compile(r"<loc_\d+>")


def doctags_document(doctags: str) -> Any:
    """docling-core's `DoclingDocument` of one page of DocTags (docling's own calls).

    The same two calls docling's `VlmPipeline` makes: `DocTagsDocument.
    from_doctags_and_image_pairs` then `DoclingDocument.load_from_doctags`. No page image
    is given, so boxes come out normalised to 0..1 of the page.
    """
    try:
        from docling_core.types.doc import DoclingDocument
        from docling_core.types.doc.document import DocTagsDocument
    except ImportError as exc:
        raise EngineUnavailable("the docling profile needs docling-core (requirements.txt)"
                                ) from exc
    pairs = DocTagsDocument.from_doctags_and_image_pairs([doctags], None)
    return DoclingDocument.load_from_doctags(pairs, document_name="page")


def clean_doctags(raw: str) -> str:
    """The reply as one `<doctag>...</doctag>` block: chat prefix and end tokens removed.

    Generation stopped on the `</doctag>` stop string leaves it out; a reply without
    the `<doctag>` wrapper (some chat templates eat it) is wrapped.
    """
    text = _DOCTAGS_NOISE.sub("", raw).strip()
    if "<doctag>" not in text:
        text = "<doctag>" + text
    if "</doctag>" not in text:
        text += "</doctag>"
    return text


def normalise_doctags(raw: str) -> VlmOutput:
    """SmolDocling / granite-docling: DocTags -> Markdown with docling-core.

    The Markdown is docling-core's export with page headers and footers kept (docling
    leaves them out by default; here they are text of the page, as tesseract reads
    them) and without the picture-class line docling prints under each picture (a
    classifier's label, not page text). `boxes`: each item's label and box (0..1).
    A reply docling-core finds no element in (free text inside `<doctag>`) is taken
    as text with its tags removed.
    """
    doc = doctags_document(clean_doctags(raw))
    from docling_core.types.doc.document import ContentLayer

    layers = {ContentLayer.BODY, ContentLayer.FURNITURE}
    markdown = doc.export_to_markdown(included_content_layers=layers,
                                      include_picture_classification=False)
    boxes = []
    for item, _level in doc.iterate_items(included_content_layers=layers):
        for prov in getattr(item, "prov", ()):
            box = prov.bbox
            boxes.append((str(item.label), (float(box.l), float(box.t), float(box.r),
                                            float(box.b))))
    if not markdown.strip():
        markdown = _DOCTAG_LOC.sub("", _DOCTAG_ELEMENT.sub(" ", clean_doctags(raw)))
        markdown = " ".join(markdown.split())
    return markdown_output(markdown, boxes=tuple(boxes))


# --------------------------------------------------------------------------- DeepSeek-OCR

# '<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>' on a 0-999 grid
# (deepseek-ai/DeepSeek-OCR run_dpsk_ocr_image.py: x / 999 * width).
_GROUNDING = re.compile(r"<\|ref\|>([^<]{0,200}?)<\|/ref\|>\s*<\|det\|>([^<]{0,4000}?)"
                        r"<\|/det\|>[ \t]*\n?")
_GROUNDING_BOX = re.compile(r"\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,"
                            r"\s*(-?[\d.]+)\s*\]")
_DEEPSEEK_END = re.compile(r"<｜end▁of▁sentence｜>|<\|end▁of▁sentence\|>")
_DEEPSEEK_PAGE_SPLIT = re.compile(r"\n?<--- Page Split --->\n?")
_CENTER = re.compile(r"</?center>", re.I)
_HARD_BREAK = re.compile(r"[ \t]+$", re.M)
DEEPSEEK_GRID = 999.0


def normalise_deepseek(raw: str) -> VlmOutput:
    r"""DeepSeek-OCR: grounding tags removed, their boxes kept (0..1) with their labels.

    Each block of a grounding reply is `<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]
    <|/det|>` then Markdown (tables in HTML, maths in \( \)). The end-of-sentence token
    and page-split markers go, `<center>` wrappers (image captions) are unwrapped and the
    two trailing spaces the model ends every block with are trimmed.
    """
    text = _DEEPSEEK_END.sub("", strip_fence(raw))
    text = _DEEPSEEK_PAGE_SPLIT.sub("\n\n", text)
    boxes = []
    for match in _GROUNDING.finditer(text):
        label = match.group(1).strip()
        for box in _GROUNDING_BOX.findall(match.group(2)):
            x0, y0, x1, y1 = (min(max(float(v) / DEEPSEEK_GRID, 0.0), 1.0) for v in box)
            boxes.append((label, (x0, y0, x1, y1)))
    markdown = _GROUNDING.sub("", text)
    markdown = _CENTER.sub("", markdown)
    markdown = _HARD_BREAK.sub("", markdown)
    markdown = BLANK_RUNS.sub("\n\n", markdown)
    return markdown_output(markdown, boxes=tuple(boxes))


# --------------------------------------------------------------------------- Nanonets-OCR

_NANONETS_IMG = re.compile(r"<img>(.{0,2000}?)</img>", re.S | re.I)
_NANONETS_TAG = {
    "page_number": re.compile(r"<page_number>(.{0,200}?)</page_number>", re.S | re.I),
    "watermark": re.compile(r"<watermark>(.{0,200}?)</watermark>", re.S | re.I),
}


def normalise_nanonets(raw: str) -> VlmOutput:
    """Nanonets-OCR: Markdown with HTML tables and its own tags (model card, prompt).

    The Markdown is the reply as written (`<img>`, `<watermark>`, `<page_number>`,
    `<signature>` are HTML-like tags that Markdown renders as their content). The text
    drops `<img>...</img>` (the model's description of a picture, not page text) and
    keeps the content of the other tags; page numbers and watermarks are also listed in
    `flags` (`page_number`, `watermarks`).
    """
    markdown = strip_fence(raw)
    flags: dict[str, Any] = {}
    numbers = [m.strip() for m in _NANONETS_TAG["page_number"].findall(markdown)]
    if numbers:
        flags["page_number"] = numbers[-1]
    marks = [m.strip() for m in _NANONETS_TAG["watermark"].findall(markdown)]
    if marks:
        flags["watermarks"] = marks
    images = _NANONETS_IMG.findall(markdown)
    if images:
        flags["images"] = len(images)
    text = markdown_to_text(_NANONETS_IMG.sub("", markdown))
    return VlmOutput(markdown=markdown.strip(), text=text, flags=flags)


# --------------------------------------------------------------------------- PaddleOCR-VL

_OTSL_TOKEN = re.compile(r"(<fcel>|<ecel>|<lcel>|<ucel>|<xcel>|<nl>)")


def normalise_paddleocr_vl(raw: str) -> VlmOutput:
    """PaddleOCR-VL: plain text for `OCR:`; OTSL cell tokens (its table task) -> a table.

    The model is an element recogniser; with the `OCR:` prompt it replies with the
    text as read, which is both the Markdown and the text. A reply holding OTSL tokens
    (`<fcel>` cell, `<ecel>` empty, `<lcel>`/`<ucel>`/`<xcel>` merged left/up/both,
    `<nl>` row end, as in docling's OTSL) becomes a Markdown pipe table, merged cells
    left empty.
    """
    text = strip_fence(raw)
    if "<nl>" not in text or not _OTSL_TOKEN.search(text.replace("<nl>", "")):
        plain = _HARD_BREAK.sub("", text).strip()
        return VlmOutput(markdown=plain, text=plain)
    rows = _otsl_rows(text)
    return markdown_output(_pipe_table(rows))


def _otsl_rows(text: str) -> list[list[str]]:
    rows: list[list[str]] = [[]]
    cell: list[str] | None = None
    for part in _OTSL_TOKEN.split(text):
        if part == "<nl>":
            rows.append([])
            cell = None
        elif part in ("<fcel>", "<ecel>", "<lcel>", "<ucel>", "<xcel>"):
            rows[-1].append("")
            cell = [] if part == "<fcel>" else None
        elif cell is not None and rows[-1]:
            rows[-1][-1] += part
    return [[c.strip() for c in row] for row in rows if row]


def _pipe_table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join(["---"] * width) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- dots.ocr

def normalise_dots(raw: str, image_size: tuple[int, int] | None = None) -> VlmOutput:
    """dots.ocr (prompt_layout_all_en): a JSON array of {bbox, category, text}.

    Text items in reading order, as dots.ocr's own layoutjson2md joins them: Title and
    Section-header already carry their `#`, Formula is wrapped in `$$`, Table is HTML,
    Picture has no text. `bbox` is in pixels of the image the model saw, so boxes are
    given (0..1) only when `image_size` is known. A reply cut short keeps its complete
    items (`layout_complete: False`); one that is not such an array (another prompt
    mode) is taken as Markdown, flagged `layout_json: False`.
    """
    text = strip_fence(raw)
    items, complete = _json_objects(text)
    if items is None:
        out = normalise_generic(text)
        return VlmOutput(markdown=out.markdown, text=out.text, flags={"layout_json": False})
    blocks = []
    boxes = []
    for item in items:
        category = str(item.get("category", ""))
        content = item.get("text")
        if isinstance(content, str) and content.strip():
            content = content.strip()
            blocks.append(f"$$\n{content}\n$$" if category == "Formula"
                          and not content.startswith("$") else content)
        bbox = item.get("bbox")
        if image_size and isinstance(bbox, list) and len(bbox) == 4 \
                and all(isinstance(v, int | float) for v in bbox):
            w, h = image_size
            x0, y0, x1, y1 = (min(max(float(v) / d, 0.0), 1.0)
                              for v, d in zip(bbox, (w, h, w, h), strict=True))
            boxes.append((category, (x0, y0, x1, y1)))
    return markdown_output("\n\n".join(blocks), boxes=tuple(boxes),
                            flags={"layout_json": True, "layout_complete": complete})


def _json_objects(text: str) -> tuple[list[dict[str, Any]] | None, bool]:
    """The objects of a JSON array read one by one, and whether the array was closed.

    Real dots.ocr replies are often cut before the closing `]` (token limit, stop
    string): the complete objects are kept, a cut last object is dropped. None when the
    text does not start as an array (or object) of objects.
    """
    decoder = json.JSONDecoder()
    body = text.lstrip()
    if body.startswith("{"):
        body = "[" + body
    if not body.startswith("["):
        return None, False
    items: list[dict[str, Any]] = []
    pos = 1
    while True:
        while pos < len(body) and body[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(body):
            return (items or None), False
        if body[pos] == "]":
            return items, True
        try:
            item, pos = decoder.raw_decode(body, pos)
        except json.JSONDecodeError:
            return (items or None), False
        if not isinstance(item, dict):
            return None, False
        items.append(item)


# --------------------------------------------------------------------------- table

NORMALISERS: Mapping[str, Callable[..., VlmOutput]] = {
    "markdown": normalise_generic,
    "olmocr_yaml": normalise_olmocr,
    "doctags": normalise_doctags,
    "deepseek_grounding": normalise_deepseek,
    "nanonets": normalise_nanonets,
    "paddleocr_vl": normalise_paddleocr_vl,
    "dots_layout_json": normalise_dots,
}
# Formats whose boxes are in pixels of the image the model saw: they need its size.
NEEDS_IMAGE_SIZE = frozenset({"dots_layout_json"})


def normalise(output_format: str, raw: str,
              image_size: tuple[int, int] | None = None) -> VlmOutput:
    """Normalise `raw` as `output_format`; KeyError for a format nobody registered.

    `image_size` (width, height of the image sent to the model) lets formats that give
    boxes in pixels normalise them; the others ignore it.
    """
    normaliser = NORMALISERS[output_format]
    if output_format in NEEDS_IMAGE_SIZE:
        return normaliser(raw, image_size)
    return normaliser(raw)
