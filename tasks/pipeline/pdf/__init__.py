"""PDF inputs and outputs through PyMuPDF: the only package that imports `pymupdf`.

Runs in worker children. Three concerns, a module each, and this module's names are
the package's public surface:

- `_read`: opens a PDF from bytes (encryption, damage and page limits checked), reads
  each page's text layer in one pass and decides per page between its text layer, OCR
  and blank (`plan_pdf`);
- `_render`: renders pages for OCR (`render_page`) and small for checks;
- `_write`: writes searchable PDFs (the original pages with an invisible text layer)
  with their active content taken out, and builds an OCR'd page's own one-page PDF for
  PyMuPDF's layout analysis (`ocr_layer_pdf`; the analysis itself is
  tasks/pipeline/structure.py's, through pymupdf4llm);
- `_layout_model`: the threads of PyMuPDF's layout model in this process.
"""

from tasks.pipeline.pdf._layout_model import session_threads, use_layout_threads
from tasks.pipeline.pdf._read import (
    PLAN_CHECK_MAX_IMAGE_BYTES,
    PdfPlan,
    TextLayer,
    check_password,
    decrypted_bytes,
    empty_store,
    name_glyphs,
    open_pdf,
    page_is_blank,
    plan_pdf,
    read_text_layer,
    text_chars,
    text_layer_page,
    text_layer_words,
)
from tasks.pipeline.pdf._render import render_page, render_small, render_zoom
from tasks.pipeline.pdf._write import (
    INVISIBLE,
    ocr_layer_pdf,
    relayered_pdf,
    searchable_pdf,
    strip_active_content,
    word_rects,
)

__all__ = [
    "INVISIBLE", "PLAN_CHECK_MAX_IMAGE_BYTES", "PdfPlan", "TextLayer", "check_password",
    "decrypted_bytes", "empty_store", "name_glyphs", "ocr_layer_pdf", "open_pdf",
    "page_is_blank", "plan_pdf", "read_text_layer", "relayered_pdf", "render_page",
    "render_small", "render_zoom", "searchable_pdf", "session_threads",
    "strip_active_content", "text_chars", "text_layer_page", "text_layer_words",
    "use_layout_threads", "word_rects",
]
