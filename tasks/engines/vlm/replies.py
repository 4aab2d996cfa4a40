"""A VLM's normalised reply (`VlmOutput`), Markdown to plain text, the generic normaliser.

The per-format normalisers (olmOCR, DocTags, DeepSeek, ...) and the dispatch by
`VlmProfile.output_format` are in tasks/engines/vlm/reply_formats.py. Pure code, no mlx: runs
in the pool child that runs the VLM, and in tests.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Box", "VlmOutput", "markdown_output", "markdown_to_text", "normalise_generic",
           "strip_fence"]

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
# Inline spans (emphasis, links) stay on one line and under 300 characters: a bounded
# search keeps the cost linear on replies full of unmatched marks (repetition loops).
_IMAGE = re.compile(r"!\[([^\]\n]{0,300})\]\([^)\n]{0,300}\)")
_LINK = re.compile(r"\[([^\]\n]{1,300})\]\([^)\n]{0,300}\)")
_BOLD = re.compile(r"(\*\*|__)(?=\S)([^\n]{1,300}?)(?<=\S)\1")
_ITALIC_STAR = re.compile(r"(?<![\w*])\*(?=\S)([^\n]{1,300}?)(?<=\S)\*(?![\w*])")
_ITALIC_UNDER = re.compile(r"(?<!\w)_(?=\S)([^\n]{1,300}?)(?<=\S)_(?!\w)")
_STRIKE = re.compile(r"~~([^\n]{1,300}?)~~")
_INLINE_CODE = re.compile(r"`([^`]*)`")
_TABLE_SEPARATOR = re.compile(
    r"^[ \t]*\|?[ \t]*:?-{2,}:?[ \t]*(?:\|[ \t]*:?-{2,}:?[ \t]*)*\|?[ \t]*$")
_HTML_BREAK = re.compile(r"<br\s*/?>", re.I)
_HTML_CELL_END = re.compile(r"</t[dh]\s*>", re.I)
_HTML_ROW_END = re.compile(r"</tr\s*>", re.I)
_HTML_BLOCK_END = re.compile(r"</(?:p|div|li|h[1-6]|table|thead|tbody|caption|center)\s*>",
                             re.I)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9_-]{0,40}(?:\s[^<>]{0,2000})?/?>")
_HTML_COMMENT = re.compile(r"<!--.{0,2000}?-->", re.S)
_MD_ESCAPE = re.compile(r"\\([_*#|~`])")
_SPACES = re.compile(r"[ \t]+\n")
BLANK_RUNS = re.compile(r"\n{3,}")  # also used by reply_formats


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
    text = _MD_ESCAPE.sub(r"\1", text)
    text = html.unescape(text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = _SPACES.sub("\n", text)
    text = BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def markdown_output(markdown: str, **extra: Any) -> VlmOutput:
    markdown = markdown.strip()
    return VlmOutput(markdown=markdown, text=markdown_to_text(markdown), **extra)


# --------------------------------------------------------------------------- generic

def normalise_generic(raw: str) -> VlmOutput:
    """Chat VLMs asked for Markdown: the reply as is, trimmed, without a wrapping fence."""
    return markdown_output(strip_fence(raw))
