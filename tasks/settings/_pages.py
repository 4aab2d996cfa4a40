"""Settings of reading pages: rendering, text layers, page tasks, outputs.

Part of `tasks.settings.Settings` (read and validated there); runs in every process.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._field import setting as _s


@dataclass(frozen=True)
class PageSettings:
    """How pages are rendered, cleaned up and read, their tasks' limits, the largest output."""

    pdf_dpi: int = _s("OCR_PDF_DPI", "300", "Resolution PDF pages are rendered at for OCR.")
    max_render_pixels: int = _s("OCR_MAX_RENDER_PIXELS", "40000000",
                                "Most pixels a PDF page is rendered at, and an image page "
                                "is reduced to; larger pages are rendered (images reduced) "
                                "at a lower resolution, so memory stays bounded.")
    structure_chunk_pages: int = _s("OCR_STRUCTURE_CHUNK_PAGES", "8",
                                    "output=markdown/json: a PDF with more text-layer "
                                    "pages than this has them analysed in page tasks of "
                                    "this many pages each, spread over the workers' "
                                    "children; fewer are analysed in the job's own task.")
    pdf_min_text_chars: int = _s("OCR_PDF_MIN_TEXT_CHARS", "8",
                                 "A PDF page with at least this many characters of text "
                                 "(visible, or an invisible OCR layer) keeps its text in "
                                 "mode auto.")
    auto_rotate: bool = _s("OCR_AUTO_ROTATE", "1",
                           "Turn pages scanned sideways or upside down (engines that can "
                           "tell: tesseract's orientation detection).")
    deskew: bool = _s("OCR_DESKEW", "1", "Straighten skewed scans before recognition.")
    skip_blank_pages: bool = _s("OCR_SKIP_BLANK_PAGES", "1",
                                "Report blank pages (no ink on a reduced copy; PDF pages "
                                "that draw nothing) as `source: blank` without OCR.")
    page_previews: bool = _s("OCR_PAGE_PREVIEWS", "1",
                             "Keep a small WebP of each OCR'd page as the engine read it, "
                             "for `GET /v1/jobs/{id}/pages/{n}/image`. 1,600 px on its "
                             "long side and 150 KB at most, kept beside the result as long "
                             "as the result. A cached answer shows the first job's.")
    page_soft_time_limit: int = _s("OCR_PAGE_SOFT_TIME_LIMIT", "120",
                                   "Seconds one PDF page task may take; it then ends "
                                   "as a failed page with code `timeout`.")
    page_hard_time_limit: int = _s("OCR_PAGE_HARD_TIME_LIMIT", "150",
                                   "Seconds after which the child running a PDF page is "
                                   "killed (native code stuck); the page fails, the "
                                   "document goes on.")
    max_output_mb: float = _s("OCR_MAX_OUTPUT_MB", "256",
                              "Largest searchable PDF the service stores for download.")

    @property
    def max_output_bytes(self) -> int:
        return int(self.max_output_mb * 1024 * 1024)
