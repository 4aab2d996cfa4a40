"""The output formats a job may ask for, in one table: file suffix, media type, stored.

Pure data on the ground floor, read by the HTTP API (a result's media type and file
name), the command line (`--out DIR`'s file names) and results written to a bucket
(`tasks/lifecycle/url_inputs.py`: the object's suffix and Content-Type).

`stored`: the job produces a file of its own, kept under an output key beside the
result (`ocr:output:<id>`: the searchable PDF, the hOCR or the ALTO document); the
others are the result's text itself (plain, Markdown) or the result as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OutputFormat:
    name: str
    suffix: str       # of a file holding this format: NAME.ocr.pdf, NAME.alto.xml
    media_type: str   # HTTP Content-Type, S3 ContentType
    stored: bool      # a file of its own beside the result (under an output key)


FORMATS: dict[str, OutputFormat] = {f.name: f for f in (
    OutputFormat("text", ".txt", "text/plain; charset=utf-8", stored=False),
    OutputFormat("markdown", ".md", "text/markdown; charset=utf-8", stored=False),
    OutputFormat("json", ".json", "application/json", stored=False),
    # .ocr.pdf: the searchable copy of an input that is often a .pdf itself
    OutputFormat("pdf", ".ocr.pdf", "application/pdf", stored=True),
    OutputFormat("hocr", ".hocr", "text/html; charset=utf-8", stored=True),
    OutputFormat("alto", ".alto.xml", "application/xml", stored=True),
)}
OUTPUT_NAMES = tuple(FORMATS)
# A page's preview (tasks/pipeline/previews.py): WebP, at most this many pixels on its
# long side; a smaller copy (`?width=`) at least MIN_PREVIEW_WIDTH wide.
PREVIEW_MEDIA_TYPE = "image/webp"
PREVIEW_LONG_SIDE = 1600
MIN_PREVIEW_WIDTH = 16
STORED_FORMATS = tuple(name for name, f in FORMATS.items() if f.stored)


def text_suffix(output: str) -> str:
    """The suffix of the file holding a result's text (`--out`): a stored format's is .txt."""
    fmt = FORMATS.get(output, FORMATS["text"])
    return FORMATS["text"].suffix if fmt.stored else fmt.suffix
