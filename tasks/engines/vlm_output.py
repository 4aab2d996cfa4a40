"""Normalisers: a VLM's raw reply -> `VlmOutput` (normalised Markdown, plain text, flags).

One function per output format, chosen by `VlmProfile.output_format`
(`tasks.engines.vlm_profiles`). The only module that imports `docling_core` (lazily, for
DocTags). Pure code, no mlx: runs in the pool child that runs the VLM, and in tests.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NORMALISERS", "VlmOutput", "markdown_to_text", "normalise"]

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class VlmOutput:
    """A normalised VLM reply for one page.

    `markdown`: the page as Markdown (HTML tables kept where the model wrote them);
    `text`: plain text (Markdown and HTML syntax removed, table cells tab separated);
    `rotation`: counter-clockwise degrees (0, 90, 180, 270) that put the page upright,
    when the model reports it; `language`: the page's language as the model reports it;
    `flags`: format-specific facts (olmOCR: is_table, is_diagram, is_rotation_valid);
    `boxes`: (label, (x0, y0, x1, y1)) normalised to 0..1 of the image sent to the model,
    where the format gives them.
    """

    markdown: str
    text: str
    rotation: int | None = None
    language: str | None = None
    flags: Mapping[str, Any] = field(default_factory=dict)
    boxes: tuple[tuple[str, Box], ...] = ()


# --------------------------------------------------------------------------- Markdown -> text

_FENCE = re.compile(r"\A\s*```[ \t]*(?:markdown|md)?[ \t]*\n(.*?)\n?```\s*\Z", re.S | re.I)
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.M)
_SETEXT_RULE = re.compile(r"^[ \t]{0,3}(?:=+|-+)[ \t]*$", re.M)
_HRULE = re.compile(r"^[ \t]{0,3}(?:(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$", re.M)
_BLOCKQUOTE = re.compile(r"^[ \t]{0,3}>[ \t]?", re.M)
_CODE_FENCE_LINE = re.compile(r"^[ \t]*```.*$", re.M)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", re.S)
_ITALIC_STAR = re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])", re.S)
_ITALIC_UNDER = re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)", re.S)
_STRIKE = re.compile(r"~~(.+?)~~", re.S)
_INLINE_CODE = re.compile(r"`([^`]*)`")
_TABLE_SEPARATOR = re.compile(
    r"^[ \t]*\|?[ \t]*:?-{2,}:?[ \t]*(?:\|[ \t]*:?-{2,}:?[ \t]*)*\|?[ \t]*$")
_HTML_BREAK = re.compile(r"<br\s*/?>", re.I)
_HTML_CELL_END = re.compile(r"</t[dh]\s*>", re.I)
_HTML_ROW_END = re.compile(r"</tr\s*>", re.I)
_HTML_BLOCK_END = re.compile(r"</(?:p|div|li|h[1-6]|table|thead|tbody|caption|center)\s*>",
                             re.I)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9_-]*(?:\s[^<>]*)?/?>")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_SPACES = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


def strip_fence(raw: str) -> str:
    """The reply without a fence wrapping all of it (```markdown ... ```), trimmed."""
    match = _FENCE.match(raw)
    return (match.group(1) if match else raw).strip()


def markdown_to_text(markdown: str) -> str:
    """Plain text of Markdown (with inline HTML): syntax removed, words and lines kept.

    Heading marks, emphasis, links (their text kept), images (dropped: the alt text is
    the model's description, not page text), inline code marks, block quotes and rules
    go; pipe tables become tab-separated lines; HTML tags are stripped (cells end in a
    tab, rows and blocks in a newline) and entities decoded. List markers stay: the
    printed page usually carries the bullet or number.
    """
    text = _HTML_COMMENT.sub("", markdown)
    text = _CODE_FENCE_LINE.sub("", text)
    lines = []
    for line in text.split("\n"):
        if _TABLE_SEPARATOR.match(line) and "-" in line and ("|" in line or ":" in line):
            continue
        stripped = line.strip()
        if stripped.startswith("|") or (stripped.endswith("|") and stripped.count("|") > 1):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            line = "\t".join(cells)
        lines.append(line)
    text = "\n".join(lines)
    text = _HEADING.sub(r"\1", text)
    text = _SETEXT_RULE.sub("", text)
    text = _HRULE.sub("", text)
    text = _BLOCKQUOTE.sub("", text)
    text = _IMAGE.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _INLINE_CODE.sub(r"\1", text)
    for pattern in (_BOLD, _STRIKE):
        text = pattern.sub(lambda m: m.group(m.lastindex or 1), text)
    text = _ITALIC_STAR.sub(r"\1", text)
    text = _ITALIC_UNDER.sub(r"\1", text)
    text = _HTML_BREAK.sub("\n", text)
    text = _HTML_CELL_END.sub("\t", text)
    text = _HTML_ROW_END.sub("\n", text)
    text = _HTML_BLOCK_END.sub("\n", text)
    text = _HTML_TAG.sub("", text)
    text = html.unescape(text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = _SPACES.sub("\n", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def _markdown_output(markdown: str, **extra: Any) -> VlmOutput:
    markdown = markdown.strip()
    return VlmOutput(markdown=markdown, text=markdown_to_text(markdown), **extra)


# --------------------------------------------------------------------------- generic

def normalise_generic(raw: str) -> VlmOutput:
    """Chat VLMs asked for Markdown: the reply as is, trimmed, without a wrapping fence."""
    return _markdown_output(strip_fence(raw))


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
    return _markdown_output(body, rotation=rotation, flags=flags,
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


# --------------------------------------------------------------------------- table

NORMALISERS: Mapping[str, Callable[[str], VlmOutput]] = {
    "markdown": normalise_generic,
    "olmocr_yaml": normalise_olmocr,
    "doctags": normalise_generic,
    "deepseek_grounding": normalise_generic,
    "nanonets": normalise_generic,
    "paddleocr_vl": normalise_generic,
    "dots_layout_json": normalise_generic,
}


def normalise(output_format: str, raw: str) -> VlmOutput:
    """Normalise `raw` as `output_format`; KeyError for a format nobody registered."""
    return NORMALISERS[output_format](raw)

