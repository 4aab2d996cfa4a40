"""hOCR and ALTO of PDF pages read from their text layer, through a real worker.

Every word of a text-layer page is in the document with its box, in the coordinates of
OCR'd pages (pixels of the page rendered at OCR_PDF_DPI), so a page's size is the same
whether it was read from its text layer or by tesseract. One tesseract worker started
from the Procfile.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest

from tasks.client import OcrClient
from tests.harness import Worker, corpus

BBOX = re.compile(r"bbox (\d+) (\d+) (\d+) (\d+)")
ALTO = "{http://www.loc.gov/standards/alto/ns-v4#}"


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_CONCURRENCY="2", OCR_CACHE_RESULTS="0")


def run(client: OcrClient, name: str, **options: Any) -> tuple[dict[str, Any], bytes]:
    job = client.submit(corpus(name), **options)
    result = client.wait([job], timeout=300)[job]
    assert result["status"] == "SUCCESS", result
    output = client.fetch_output(result)
    assert output
    return result, output


Box = tuple[int, ...]


def hocr_pages(document: bytes) -> dict[int, tuple[Box, list[tuple[str, Box]]]]:
    """Each page's bbox and its words with their boxes."""
    root = ET.fromstring(document)
    pages = {}
    for page in root.iter():
        if page.get("class") != "ocr_page":
            continue
        match = BBOX.search(page.get("title", ""))
        assert match
        words = []
        for word in page.iter():
            if word.get("class") == "ocrx_word":
                box = BBOX.search(word.get("title", ""))
                assert box
                words.append(("".join(word.itertext()), tuple(map(int, box.groups()))))
        pages[int(page.get("id", "page_0")[5:])] = (tuple(map(int, match.groups())), words)
    return pages


def inside(box: tuple[int, ...], page: tuple[int, ...]) -> bool:
    return page[0] <= box[0] < box[2] <= page[2] and page[1] <= box[1] < box[3] <= page[3]


def test_born_digital_hocr_has_every_word_with_its_box(worker: Worker,
                                                       client: OcrClient) -> None:
    result, document = run(client, "dig_crazyones.pdf", output="hocr")
    assert [p["source"] for p in result["pages"]] == ["text-layer"]
    (bbox, words), = hocr_pages(document).values()
    assert bbox[2] > 1000 and bbox[3] > 1000  # pixels at 300 dpi, not PDF points
    text_words = result["pages"][0]["text"].split()
    assert [w for w, _ in words] == text_words  # every word, in reading order
    assert all(inside(box, bbox) for _, box in words)
    crazy = [box for w, box in words if w == "Crazy"]
    assert crazy and crazy[0][1] < bbox[3] / 4  # the title, at the top of the page
    # the same page read by tesseract has the same size, and its words near these boxes
    _, ocr_document = run(client, "dig_crazyones.pdf", output="hocr", mode="ocr")
    (ocr_bbox, ocr_words), = hocr_pages(ocr_document).values()
    assert ocr_bbox == bbox
    ocr_crazy = [box for w, box in ocr_words if w == "Crazy"]
    assert ocr_crazy and all(abs(a - b) < 30 for a, b in zip(ocr_crazy[0], crazy[0],
                                                               strict=True))


def test_mixed_pdf_alto_has_words_on_every_page(worker: Worker, client: OcrClient) -> None:
    result, document = run(client, "mixed_vicksburg_crazyones_7p.pdf", output="alto")
    root = ET.fromstring(document)
    pages = root.findall(f".//{ALTO}Page")
    assert len(pages) == len(result["pages"]) == 7
    sources = {p["number"]: p["source"] for p in result["pages"]}
    assert "text-layer" in sources.values()
    for page in pages:
        number = int(page.get("ID", "page_0")[5:])
        width, height = int(page.get("WIDTH", 0)), int(page.get("HEIGHT", 0))
        strings = page.findall(f".//{ALTO}String")
        assert width > 1000 and height > 1000, (number, sources[number])
        assert len(strings) > 20, (number, sources[number])
        for string in strings:
            x, y = int(string.get("HPOS", -1)), int(string.get("VPOS", -1))
            assert 0 <= x < width and 0 <= y < height
    text = " ".join(s.get("CONTENT", "") for s in root.iter(f"{ALTO}String"))
    assert "Vicksburg" in text and "troublemakers." in text


def test_text_layer_page_size_in_the_json_result(worker: Worker, client: OcrClient) -> None:
    result, _ = run(client, "dig_multicolumn_3p.pdf", output="pdf")
    ocr, _ = run(client, "dig_multicolumn_3p.pdf", output="pdf", mode="ocr", pages="1")
    assert result["pages"][0]["source"] == "text-layer"
    assert result["pages"][0]["image_size"] == ocr["pages"][0]["image_size"]
