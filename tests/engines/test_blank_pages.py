"""Blank pages: recognised without OCR, reported as `source: blank`, never a real page.

The detector on synthetic blank scans (noise, specks, grey paper, scanner borders,
JPEG) and on near-blank pages (one word, a page number, faint or inverted print); every
page of the corpus checked as not blank; PDFs planned without rendering; a 500-page
blank PDF through a real worker. The speed figure is in bench/blank.py, not here.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pymupdf
import pytest
from PIL import Image, ImageDraw, ImageFont

from tasks.client import OcrClient
from tasks.pipeline.blank import MAX_INK_PIXELS, ink_report, is_blank
from tasks.pipeline.documents import ocr_page
from tasks.pipeline.images import iter_image_pages
from tasks.pipeline.pdf import page_is_blank, plan_pdf, render_page, render_small
from tasks.records.formats import sniff_format
from tasks.settings import Settings
from tests.fake_engines import FakeEngine
from tests.harness import Worker, corpus_folder
from tests.pdf_fixtures import image_pdf

A4_300 = (2480, 3508)
RNG_SEED = 20261122


def ocr_page_json(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`ocr_page` as the JSON other services read."""
    return ocr_page(*args, **kwargs).to_json()


def paper(shade: int = 250, size: tuple[int, int] = A4_300, noise: float = 0.0,
          seed: int = RNG_SEED) -> Image.Image:
    """A page of paper of `shade` with Gaussian grain of `noise` grey levels."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size[1], size[0]), float(shade))
    if noise:
        pixels += rng.normal(0, noise, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def write(image: Image.Image, text: str, at: tuple[int, int], size: int = 42,
          fill: int = 0) -> Image.Image:
    """Print `text` on the page (size in px: 42 px is 10 pt at 300 dpi)."""
    ImageDraw.Draw(image).text(at, text, fill=fill, font=ImageFont.load_default(size=size))
    return image


def specks(image: Image.Image, count: int, seed: int = RNG_SEED) -> Image.Image:
    """Scatter 1-2 px dark specks (dust, scanner noise) over the page."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image).copy()
    ys = rng.integers(0, pixels.shape[0] - 2, count)
    xs = rng.integers(0, pixels.shape[1] - 2, count)
    sizes = rng.integers(1, 3, count)
    for y, x, s in zip(ys, xs, sizes, strict=True):
        pixels[y:y + s, x:x + s] = 0
    return Image.fromarray(pixels, "L")


def jpeg(image: Image.Image, quality: int = 60) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


# ----------------------------------------------------------------------------- detector

@pytest.mark.parametrize("name", ["white", "grey paper", "grain", "specks", "border",
                                  "jpeg grain", "small", "black"])
def test_blank_scans_are_blank(name: str) -> None:
    page = {
        "white": lambda: paper(255),
        "grey paper": lambda: paper(200),
        "grain": lambda: paper(235, noise=12),
        "specks": lambda: specks(paper(245, noise=4), 400),
        "border": lambda: _with_border(paper(248, noise=5)),
        "jpeg grain": lambda: jpeg(paper(240, noise=10)),
        "small": lambda: paper(255, size=(30, 20)),
        "black": lambda: paper(5),
    }[name]()
    report = ink_report(page)
    assert report.blank, report
    assert is_blank(page)


def _with_border(image: Image.Image) -> Image.Image:
    """Dark scanner edges along two sides, inside the ignored margin."""
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width, 60), fill=30)
    draw.rectangle((0, 0, 50, image.height), fill=40)
    return image


@pytest.mark.parametrize("name", ["one word", "page number", "faint", "inverted",
                                  "small print", "grainy word"])
def test_near_blank_pages_are_not_blank(name: str) -> None:
    page = {
        "one word": lambda: write(paper(250), "Index", (1100, 1500)),
        "page number": lambda: write(paper(255), "17", (1220, 3300)),
        "faint": lambda: write(paper(255), "draft copy", (400, 900), fill=175),
        "inverted": lambda: write(paper(10), "NOTES", (600, 600), fill=250),
        "small print": lambda: write(paper(255), "p. 4", (300, 300), size=25),
        "grainy word": lambda: write(specks(paper(235, noise=12), 300), "Yes", (900, 2000)),
    }[name]()
    report = ink_report(page)
    assert not report.blank, report
    assert report.ink_pixels > 2 * MAX_INK_PIXELS  # with room to spare


def test_every_corpus_page_is_not_blank() -> None:
    """No real page of the corpus (images, every frame, every PDF page) is blank."""
    settings = Settings.from_env({})
    checked = 0
    for path in sorted(corpus_folder().iterdir()):
        if path.suffix in (".txt", ".tsv") or path.name.startswith(("bad_", "edge_zero",
                                                                    "edge_decompression")):
            continue
        data = path.read_bytes()
        fmt = sniff_format(data)
        if fmt == "pdf":
            doc = pymupdf.open(stream=data, filetype="pdf")
            if doc.needs_pass:
                doc.authenticate("openpassword")
            for page in doc:
                assert not page_is_blank(page), (path.name, page.number)
                report = ink_report(render_small(page))
                assert report.ink_pixels > 4 * MAX_INK_PIXELS, (path.name, page.number, report)
                checked += 1
            doc.close()
        else:
            for number, _total, _selected, image in iter_image_pages(data, fmt, None,
                                                                     settings):
                report = ink_report(image)
                assert report.ink_pixels > 4 * MAX_INK_PIXELS, (path.name, number, report)
                checked += 1
    assert checked >= 164  # 11 images and frames, 153 PDF pages


# ----------------------------------------------------------------------------- PDF planning

def blank_pdf(pages: int) -> bytes:
    doc = pymupdf.open()
    for _ in range(pages):
        doc.new_page()
    return bytes(doc.tobytes(garbage=3, deflate=True))


def test_plan_finds_blank_pdf_pages_without_ocr() -> None:
    settings = Settings.from_env({})
    doc = pymupdf.open()
    doc.new_page()                                              # 1: nothing at all
    doc.new_page().draw_rect(pymupdf.Rect(10, 10, 200, 200), color=None, fill=(1, 1, 1))
    doc.new_page().insert_text((72, 72), "Hello world")         # 3: text (a text page)
    doc.new_page().draw_line((72, 300), (500, 300))             # 4: a rule: ink
    doc.new_page()                                              # 5: an annotation
    doc[4].add_rect_annot(pymupdf.Rect(72, 72, 300, 120))
    scan = write(paper(250, size=(1240, 1754)), "Hello world", (300, 400))
    clean_blank = paper(245, size=(1240, 1754))     # compresses to a few KB: checked now
    noisy_blank = paper(245, size=(1240, 1754), noise=6)  # > 256 KB: checked in its task
    pdf = _append(doc.tobytes(), image_pdf([scan, clean_blank, noisy_blank], dpi=150))
    plan = plan_pdf(pdf, None, None, "auto", settings)
    try:
        assert plan.blank_pages == [1, 2, 7]
        assert sorted(plan.text_pages) == [3]
        assert plan.ocr_pages == [4, 5, 6, 8]
        assert is_blank(render_page(plan.doc, 8, settings))  # what its page task sees
    finally:
        plan.doc.close()
    forced = plan_pdf(pdf, None, None, "ocr", settings)
    assert forced.blank_pages == [1, 2, 7] and forced.ocr_pages == [3, 4, 5, 6, 8]
    forced.doc.close()
    off = plan_pdf(pdf, None, None, "auto", Settings.from_env({"OCR_SKIP_BLANK_PAGES": "0"}))
    assert off.blank_pages == [] and off.ocr_pages == [1, 2, 4, 5, 6, 7, 8]
    off.doc.close()


def _append(first: bytes, second: bytes) -> bytes:
    doc = pymupdf.open(stream=first, filetype="pdf")
    doc.insert_pdf(pymupdf.open(stream=second, filetype="pdf"))
    return bytes(doc.tobytes())


def test_ocr_page_reports_a_blank_image_without_the_engine() -> None:
    class CountingEngine(FakeEngine):
        calls = 0

        def recognize(self, image, options):  # type: ignore[no-untyped-def]
            CountingEngine.calls += 1
            return super().recognize(image, options)

    from tasks.engines import RecognizeOptions

    engine = CountingEngine(0)
    settings = Settings.from_env({})
    page = ocr_page_json(3, paper(240, noise=8), engine, RecognizeOptions(), settings)
    assert page["source"] == "blank" and page["text"] == "" and "error" not in page
    assert page["number"] == 3 and CountingEngine.calls == 0
    word = ocr_page_json(4, write(paper(250), "Index", (900, 900)), engine, RecognizeOptions(),
                    settings)
    assert word["source"] == "ocr" and CountingEngine.calls == 1


# ----------------------------------------------------------------------------- real worker

@pytest.mark.slow
def test_500_blank_pages_through_a_real_worker(start_worker: Callable[..., Worker],
                                                client: OcrClient) -> None:
    start_worker(OCR_CONCURRENCY="2", OCR_CACHE_RESULTS="0")
    job = client.submit(blank_pdf(500), filename="blank.pdf")
    result = client.wait([job], timeout=120)[job]
    assert result["status"] == "SUCCESS" and result["failed_pages"] == []
    assert len(result["pages"]) == 500
    assert {p["source"] for p in result["pages"]} == {"blank"}
    assert all(p["text"] == "" for p in result["pages"])
    assert result["text"] == "\f" * 499

    scan = write(paper(250, size=(1240, 1754)), "Hello world", (300, 400), size=60)
    mixed = client.submit(image_pdf([paper(250, size=(1240, 1754)), scan], dpi=150),
                          filename="mixed.pdf")
    pages = client.wait([mixed], timeout=120)[mixed]["pages"]
    assert [p["source"] for p in pages] == ["blank", "ocr"]
    assert "Hello" in pages[1]["text"]
    image = io.BytesIO()
    paper(240, noise=8).save(image, "PNG")
    single = client.submit(image.getvalue(), filename="blank.png")
    page = client.wait([single], timeout=60)[single]["pages"][0]
    assert page["source"] == "blank" and page["text"] == ""
