"""The tests' import path of the generated images: devkit/image_fixtures.py, re-exported.

The code lives in devkit/, which the benchmarks import too; tests import either.
"""

from __future__ import annotations

from devkit.image_fixtures import (
    EUROPEAN_PARAGRAPHS,
    MAGAZINE_COLUMNS,
    MAGAZINE_DECK,
    MAGAZINE_TITLE,
    NOTICE_PARAGRAPHS,
    big_rgba_png,
    bomb_frame_tiff,
    european_page,
    european_text,
    filtered_png,
    magazine_page,
    notice_page,
    png,
)

__all__ = [
    "EUROPEAN_PARAGRAPHS",
    "MAGAZINE_COLUMNS",
    "MAGAZINE_DECK",
    "MAGAZINE_TITLE",
    "NOTICE_PARAGRAPHS",
    "big_rgba_png",
    "bomb_frame_tiff",
    "european_page",
    "european_text",
    "filtered_png",
    "magazine_page",
    "notice_page",
    "png",
]
