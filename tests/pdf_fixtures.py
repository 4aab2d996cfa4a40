"""The tests' import path of the generated PDFs: devkit/pdf_fixtures.py, re-exported.

The code lives in devkit/, which the benchmarks import too; tests import either.
"""

from __future__ import annotations

from devkit.pdf_fixtures import (
    broken_xref_pdf,
    encrypted_pdf,
    huge_page_pdf,
    image_pdf,
    inked_pages,
    millions_of_pages_pdf,
    plain_pages,
    repeated_image_pdf,
    truncated_pdf,
)

__all__ = [
    "broken_xref_pdf",
    "encrypted_pdf",
    "huge_page_pdf",
    "image_pdf",
    "inked_pages",
    "millions_of_pages_pdf",
    "plain_pages",
    "repeated_image_pdf",
    "truncated_pdf",
]
