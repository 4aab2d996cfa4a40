"""A job's formats: the inputs it reads, and the outputs it may ask for.

Pure data on the ground floor. An input's format is told by its leading bytes, never
by its name (`sniff_format`): the worker reads a document by it, the HTTP API refuses
an upload that is none (`unsupported_format`, 415), and `submit.py batch` skips a
folder's other files. The output formats, in one table (file suffix, media type,
stored), are read by the HTTP API (a result's media type and file name), the command
line (`--out DIR`'s file names) and results written to a bucket
(`tasks/lifecycle/url_inputs.py`: the object's suffix and Content-Type).

`stored`: the job produces a file of its own, kept under an output key beside the
result (`ocr:output:<id>`: the searchable PDF, the hOCR or the ALTO document); the
others are the result's text itself (plain, Markdown) or the result as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.errors import EmptyInput, UnsupportedFormat

# --- inputs ----------------------------------------------------------------------------

# The leading bytes of each image format a job reads; a PDF's `%PDF-` may come anywhere
# in its first SNIFF_BYTES.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
)
SNIFF_BYTES = 1024  # the leading bytes `sniff_format` needs
UNSUPPORTED = "not a PDF, PNG, JPEG, TIFF, WebP, BMP or GIF file"


def input_format(data: bytes) -> str | None:
    """`pdf` or an image format name, from the leading bytes; None: neither.

    The first SNIFF_BYTES of a file suffice.
    """
    if b"%PDF-" in data[:SNIFF_BYTES]:
        return "pdf"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def sniff_format(data: bytes) -> str:
    """The input's format; `empty_input` for no bytes, `unsupported_format` for others."""
    if not data:
        raise EmptyInput()
    found = input_format(data)
    if found is None:
        raise UnsupportedFormat(f"the input is {UNSUPPORTED}")
    return found


# --- outputs ---------------------------------------------------------------------------

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
