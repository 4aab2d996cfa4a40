"""End to end, the rapidocr engine: real workers, the wheel's PP-OCR models, the corpus.

A rapidocr worker (OCR_ENGINE=rapidocr, its own queue only) reads the Chinese page for
`engine=rapidocr`; a tesseract worker on the shared queue `ocr` routes a `chi_sim` job
without `engine` to rapidocr by the default OCR_LANG_ENGINES, keeps Greek and
Vietnamese on tesseract. A routed engine that cannot load leaves the job to the
worker's own engine (tests/units/test_rapidocr_units.py). Speed is compared in
bench/languages.py, not here.
"""

from __future__ import annotations

import base64
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from tasks.client import OcrClient
from tasks.errors import LanguageUnavailable
from tasks.pipeline import layouts
from tests.cer import cer
from tests.harness import Worker, corpus, eventually, ground_truth

pytestmark = pytest.mark.slow

CHINESE = "lang_chi_sim_page.jpg"
# Measured: 0.0 % (every character of the ground truth right). RapidOCR writes no space
# between Chinese and Latin text ("需要10-20秒" for "需要 10-20 秒"): whitespace-normalised
# CER 7.5 %, so the bound is on the text without whitespace, as the goal.
NO_SPACE_BOUND = 0.005


def no_space_cer(reference: str, text: str) -> float:
    return cer(re.sub(r"\s+", "", reference), re.sub(r"\s+", "", text))


@pytest.fixture(scope="module")
def rapid_worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_ENGINE="rapidocr", OCR_CONCURRENCY="1",
                        OCR_QUEUES="rapidocr-only")  # serves ocr-rapidocr, not `ocr`


@pytest.fixture(scope="module")
def tess_worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_CONCURRENCY="1")  # tesseract on `ocr`, default routing


def _run(client: OcrClient, source: Path | bytes, **options: str) -> dict[str, object]:
    job = client.submit(source, **options)
    return client.wait([job], timeout=240)[job]


def _engine(result: dict[str, object]) -> str:
    engine = result["engine"]
    assert isinstance(engine, dict), result
    return str(engine["name"])


def test_rapidocr_reads_the_chinese_page(rapid_worker: Worker, client: OcrClient) -> None:
    result = _run(client, corpus(CHINESE), engine="rapidocr", lang="chi_sim")
    assert result["status"] == "SUCCESS", result
    assert _engine(result) == "rapidocr"
    error = no_space_cer(ground_truth(CHINESE), str(result["text"]))
    assert error <= NO_SPACE_BOUND, f"no-space CER {error:.4f}\n{result['text']}"


def test_rapidocr_worker_advertises_what_it_reads(rapid_worker: Worker,
                                                  client: OcrClient) -> None:
    reply = rapid_worker.languages(client)
    # `job_default`: what a job without `lang` asks for (OCR_LANG, auto unless set).
    # `auto`: the languages lang=auto may choose for each script.
    assert reply == {"engine": "rapidocr", "default": "chi_sim+eng", "job_default": "auto",
                     "languages": ["chi_sim", "eng"],
                     "auto": {"Han": ["chi_sim"], "Latin": ["eng"]},
                     "fast": []}  # rapidocr's models are its own: none is tesseract's fast one


def _by_name(client: OcrClient, source: Path, **options: str) -> dict[str, object]:
    """Sent by task name, past the door: what a stock Celery sender gets from a worker."""
    job = client.app.send_task("ocr.document", kwargs={
        "data_b64": base64.b64encode(source.read_bytes()).decode(),
        "filename": source.name, **options}).id
    return client.wait([job], timeout=240)[job]


def test_rapidocr_refuses_other_languages_at_job_start(rapid_worker: Worker,
                                                       client: OcrClient) -> None:
    """Refused at the door (its presence names what it reads), and at job start."""
    for source, lang in ((corpus("lang_vie_page.png"), "vie"),
                         (corpus("lang_mixed_2p.pdf"), "ell+eng")):  # no page task either
        with pytest.raises(LanguageUnavailable):
            client.submit(source, engine="rapidocr", lang=lang)
        result = _by_name(client, source, engine="rapidocr", lang=lang)
        assert result["status"] == "FAILURE", result
        error = result["error"]
        assert isinstance(error, dict) and error["code"] == "language_unavailable"
        assert lang.split("+")[0] in error["message"] and "chi_sim" in error["message"]
        assert not result.get("pages")


def test_hocr_of_rapidocr_has_word_boxes_on_the_page(rapid_worker: Worker,
                                                     client: OcrClient) -> None:
    result = _run(client, corpus(CHINESE), engine="rapidocr", lang="chi_sim",
                  output="hocr")
    assert result["status"] == "SUCCESS", result
    document = client.fetch_output(result)
    assert document is not None
    root = ET.parse(io.BytesIO(document)).getroot()
    ns = f"{{{layouts.XHTML}}}"
    spans = [el for el in root.iter(f"{ns}span") if el.get("class") == "ocrx_word"]
    words = ["".join(el.itertext()) for el in spans]
    assert no_space_cer(str(result["text"]), "".join(words)) == 0
    with Image.open(corpus(CHINESE)) as image:
        width, height = image.size
    for span in spans:
        box = re.search(r"bbox (\d+) (\d+) (\d+) (\d+)", span.get("title", ""))
        assert box is not None, span.get("title")
        x0, y0, x1, y1 = map(int, box.groups())
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert len([el for el in root.iter(f"{ns}span") if el.get("class") == "ocr_line"]) >= 15


def test_searchable_pdf_of_rapidocr_reads_back(rapid_worker: Worker,
                                               client: OcrClient) -> None:
    result = _run(client, corpus(CHINESE), engine="rapidocr", lang="chi_sim", output="pdf")
    assert result["status"] == "SUCCESS", result
    pdf = client.fetch_output(result)
    assert pdf is not None
    with pymupdf.open(stream=pdf) as doc:
        extracted = doc[0].get_text()
    assert no_space_cer(str(result["text"]), extracted) <= 0.01, extracted
    assert no_space_cer(ground_truth(CHINESE), extracted) <= 0.01


def test_rapidocr_pages_go_the_common_page_path(rapid_worker: Worker,
                                                client: OcrClient) -> None:
    """A page upside down is turned by tesseract's orientation check; a blank one skipped."""
    with Image.open(corpus(CHINESE)) as image:
        turned, blank = io.BytesIO(), io.BytesIO()
        image.rotate(180).save(turned, "PNG")
        Image.new("L", image.size, 255).save(blank, "PNG")
    result = _run(client, turned.getvalue(), filename="turned.png", engine="rapidocr",
                  lang="chi_sim")
    assert result["status"] == "SUCCESS", result
    page = result["pages"][0]  # type: ignore[index]
    assert page["rotation"] == 180, page
    assert no_space_cer(ground_truth(CHINESE), str(result["text"])) <= NO_SPACE_BOUND
    empty = _run(client, blank.getvalue(), filename="blank.png", engine="rapidocr")
    assert empty["status"] == "SUCCESS", empty
    assert empty["pages"][0]["source"] == "blank" and empty["text"] == ""  # type: ignore[index]


def _as_pdf(path: Path) -> bytes:
    """The page as a one-page image PDF (no text layer): a fanned-out job."""
    with pymupdf.open() as doc, pymupdf.open(path) as image:
        rect = image[0].rect
        page = doc.new_page(width=rect.width * 72 / 300, height=rect.height * 72 / 300)
        page.insert_image(page.rect, filename=str(path))
        return bytes(doc.tobytes())


def test_chinese_jobs_without_engine_are_routed_to_rapidocr(tess_worker: Worker,
                                                            client: OcrClient) -> None:
    for source in (corpus(CHINESE), _as_pdf(corpus(CHINESE))):  # in-process, fanned out
        result = _run(client, source, filename="page", lang="chi_sim")
        assert result["status"] == "SUCCESS", result
        assert _engine(result) == "rapidocr"
        assert no_space_cer(ground_truth(CHINESE), str(result["text"])) <= NO_SPACE_BOUND
    # The job's own engine wins over the routing.
    own = _run(client, corpus(CHINESE), engine="tesseract", lang="chi_sim")
    assert own["status"] == "SUCCESS" and _engine(own) == "tesseract"


def test_a_chinese_page_sent_as_is_goes_to_rapidocr_with_its_ranges_right(
        tess_worker: Worker, client: OcrClient) -> None:
    """The corpus' Chinese page, sent as is, is read by rapidocr, its ranges right.

    `make run`'s settings (nothing set: lang=auto, OCR_LANG_ENGINES chi_sim=rapidocr;
    `make run` installs rapidocr): its numbers and ranges come back as printed
    (10-20, 15-30, 30-50, 2-3; tesseract's chi_sim turned such ranges into others, as
    "281-286" into "281-2856").
    """
    result = _run(client, corpus(CHINESE))
    assert result["status"] == "SUCCESS", result
    assert result["pages"][0]["engine"] == "rapidocr", result["pages"][0]  # the page's reader
    # the job names the engine that read its one page, in its result and its log line
    assert _engine(result) == "rapidocr" and "names" not in result["engine"], result["engine"]
    assert _job_line(tess_worker, str(result["id"]))["engine"] == "rapidocr"
    numbers = re.compile(r"\d+(?:-\d+)?")
    assert numbers.findall(str(result["text"])) == numbers.findall(ground_truth(CHINESE))
    assert no_space_cer(ground_truth(CHINESE), str(result["text"])) <= NO_SPACE_BOUND


def _job_line(worker: Worker, job_id: str) -> dict[str, object]:
    """The `ocr.job` line of a job (written just after its result is stored)."""
    def found() -> dict[str, object] | None:
        lines = [json.loads(x) for x in re.findall(r"ocr\.job (\{.*\})", worker.log())]
        return next((line for line in lines if line["id"] == job_id), None)
    return eventually(found, 60, f"the ocr.job line of {job_id}")


def test_a_job_whose_pages_two_engines_read_names_both(tess_worker: Worker,
                                                       client: OcrClient) -> None:
    """A Chinese page and a Vietnamese one in one PDF, lang=auto: rapidocr and tesseract."""
    with pymupdf.open() as doc:
        for name in (CHINESE, "lang_vie_page.png"):
            with pymupdf.open(corpus(name)) as image:
                rect = image[0].rect
            page = doc.new_page(width=rect.width * 72 / 300, height=rect.height * 72 / 300)
            page.insert_image(page.rect, filename=str(corpus(name)))
        data = bytes(doc.tobytes())
    result = _run(client, data, filename="two.pdf")
    assert result["status"] == "SUCCESS", result
    assert [p["engine"] for p in result["pages"]] == ["rapidocr", "tesseract"]
    assert result["engine"]["names"] == ["rapidocr", "tesseract"], result["engine"]
    line = _job_line(tess_worker, str(result["id"]))
    assert line["engines"] == ["rapidocr", "tesseract"]


@pytest.mark.parametrize("name,lang,bound", [
    # the bounds of tests/engines/test_e2e_languages.py; the Vietnamese page alone is the
    # long form (on tesseract in the test above, and in the mixed PDF here)
    pytest.param("lang_vie_page.png", "vie", 0.01, marks=pytest.mark.long),
    ("lang_ell_page.png", "ell+eng", 0.04),
    ("lang_mixed_2p.pdf", "ell+eng+vie", 0.05),
])
def test_greek_and_vietnamese_stay_on_tesseract(tess_worker: Worker, client: OcrClient,
                                                name: str, lang: str, bound: float) -> None:
    result = _run(client, corpus(name), lang=lang)
    assert result["status"] == "SUCCESS", result
    assert _engine(result) == "tesseract"
    assert cer(ground_truth(name), str(result["text"])) <= bound
