"""End to end, `lang=auto`: each page read in its own language by a real worker.

A tesseract worker with the default settings (OCR_LANG=auto, the default OCR_AUTO_LANGS
and OCR_LANG_ENGINES) reads the corpus' Vietnamese, Greek and Chinese pages without
`lang` about as well as with their right `lang`; the mixed PDF's pages get a language
each; an English scan is unaffected; a Cyrillic page (no `rus` on this worker) and a
nearly textless page come back with a warning, never a failure.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from PIL import Image, ImageDraw, ImageFont

from tasks.client import OcrClient
from tasks.engines import rapidocr
from tasks.pipeline import layouts
from tests.cer import cer
from tests.harness import ROOT, Worker, corpus, eventually, ground_truth

pytestmark = pytest.mark.slow

HAN_ENGINE = "rapidocr" if rapidocr.installed() else "tesseract"
# page: (its right `lang`, the set and engine `auto` reads it with, the script found)
PAGES = {
    "lang_vie_page.png": ("vie", "vie", "tesseract", "Latin"),  # the probe saw Vietnamese
    "lang_ell_page.png": ("ell+eng", "ell+eng", "tesseract", "Greek"),
    "lang_chi_sim_page.jpg": ("chi_sim", "chi_sim", HAN_ENGINE, "Han"),
}
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_CONCURRENCY="2")


def test_each_child_starts_with_what_an_auto_page_needs(worker: Worker,
                                                        client: OcrClient) -> None:
    """No first-job cost: the language identifier is loaded before a child takes a task.

    Each pool child's start-up line names what it loaded; the identifier loads once per
    process, so a child that named it never loads it inside a job's time limit.
    """
    result = _run(client, corpus("lang_fra_pangram.pdf"))
    assert result["status"] == "SUCCESS" and result["languages"] == ["fra"], result

    def started() -> dict[str, str]:
        return dict(re.findall(r"process (\d+) ready in [\d.]+ s, loaded: (.*)$",
                               worker.log(), re.M))

    # The two children, at least: one may still be loading while the other reads the
    # job (a loaded machine), within the worker's start-up bound.
    ready = eventually(lambda: started() if len(started()) >= 2 else None, 180,
                       lambda: worker.log()[-3000:])
    for loaded in ready.values():
        assert re.match(r"tesseract \(eng, [\d.]+ s\), language identifier \([\d.]+ s\)$",
                        loaded), loaded
    assert str(result["engine"]["pid"]) in ready


def _run(client: OcrClient, source: Path | bytes, **options: str) -> dict[str, Any]:
    job = client.submit(source, **options)
    return client.wait([job], timeout=300)[job]


@pytest.mark.parametrize("name", list(PAGES))
def test_a_page_without_lang_reads_as_with_its_right_lang(worker: Worker, client: OcrClient,
                                                          name: str) -> None:
    right, lang, engine, script = PAGES[name]
    named = _run(client, corpus(name), lang=right)
    auto = _run(client, corpus(name))
    assert named["status"] == auto["status"] == "SUCCESS", (named, auto)
    truth = ground_truth(name)
    named_cer, auto_cer = cer(truth, named["text"]), cer(truth, auto["text"])
    assert auto_cer <= named_cer + 0.01, f"{name}: auto {auto_cer:.4f}, {right} {named_cer:.4f}"
    assert auto["lang"] == "auto" and auto["languages"] == [lang] and auto["warnings"] == []
    page = auto["pages"][0]
    assert (page["lang"], page["engine"]) == (lang, engine)
    assert page["script"]["name"] == script and page["script"]["outcome"] == "found"
    # A job's own lang wins: no script check, the page says what read it.
    assert named["lang"] == right and "script" not in named["pages"][0]
    assert named["pages"][0]["lang"] == right


def test_lang_auto_may_be_named_and_a_mixed_pdf_gets_a_language_per_page(
        worker: Worker, client: OcrClient) -> None:
    name = "lang_mixed_2p.pdf"
    result = _run(client, corpus(name), lang="auto", output="hocr")
    assert result["status"] == "SUCCESS", result
    assert [(p["lang"], p["script"]["name"]) for p in result["pages"]] == [
        ("ell+eng", "Greek"), ("vie", "Latin")]
    assert result["languages"] == ["ell+eng", "vie"]
    truths = ground_truth(name).split("\f")
    for page, truth in zip(result["pages"], truths, strict=True):
        # Measured 0.5-1.5 %: the bound of the single Greek and Vietnamese pages.
        assert cer(truth, page["text"]) <= 0.04, page["number"]
    hocr = ET.fromstring(client.fetch_output(result) or b"")
    divs = [el for el in hocr.iter(f"{{{layouts.XHTML}}}div")
            if el.get("class") == "ocr_page"]
    assert [d.get("lang") for d in divs] == ["el", "vi"]


def test_the_searchable_pdf_and_alto_carry_the_language(worker: Worker,
                                                        client: OcrClient) -> None:
    name = "lang_ell_page.png"
    pdf = _run(client, corpus(name), output="pdf")
    assert pdf["status"] == "SUCCESS", pdf
    with pymupdf.open(stream=client.fetch_output(pdf)) as doc:
        assert doc.language == "el"
    alto = _run(client, corpus(name), output="alto")
    root = ET.fromstring(client.fetch_output(alto) or b"")
    langs = {b.get("LANG") for b in root.iter(f"{{{layouts.ALTO}}}TextBlock")}
    assert langs and langs <= {"el", "en"}


@pytest.mark.parametrize("name", [
    pytest.param("scan_meditations.jpg", marks=pytest.mark.long),
    "scan_tess_phototest.tif", "scan_dh_lorem_ipsum.pdf"])
def test_an_english_page_is_unaffected(worker: Worker, client: OcrClient, name: str) -> None:
    """Read as with `lang=eng`, and no warning.

    Lorem ipsum too: its words are `lat`, printed in no letter `eng` lacks, so it is read
    with the script's set and not warned (`lang_id.PLAIN_LETTERS`). A second English
    scan (meditations, whose first line leaves the probe unsure) is the long form.
    """
    named = _run(client, corpus(name), lang="eng")
    auto = _run(client, corpus(name))
    assert auto["status"] == named["status"] == "SUCCESS", (auto, named)
    assert auto["text"] == named["text"]
    page = auto["pages"][0]
    assert page["script"]["name"] == "Latin" and page["script"]["outcome"] == "found"
    assert page["lang"] == "eng" and auto["warnings"] == []


def _drawn_page(lines: list[str]) -> bytes:
    """A 300-dpi A4 grey page with `lines` in DejaVu Sans, 46 px (the corpus' size)."""
    if not DEJAVU.exists():
        pytest.skip(f"no {DEJAVU} (Debian's fonts-dejavu-core)")
    font = ImageFont.truetype(str(DEJAVU), 46)
    image = Image.new("L", (2480, 3508), 255)
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((200, 250 + index * 90), line, font=font, fill=0)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


RUSSIAN = ["Съешь же ещё этих мягких французских булок, да выпей чаю.",
           "Широкая электрификация южных губерний даст мощный толчок",
           "подъёму сельского хозяйства. В чащах юга жил бы цитрус?",
           "Да, но фальшивый экземпляр! Эх, чужак, общий съём цен",
           "шляп (юфть) вдрызг! Любя, съешь щипцы, — вздохнёт мэр,",
           "— кайф жгуч. Друзья, мы пишем эту страницу для проверки."] * 2


def test_a_script_this_worker_has_no_language_for_gets_a_warning(worker: Worker,
                                                                 client: OcrClient) -> None:
    result = _run(client, _drawn_page(RUSSIAN), filename="cyrillic.png")
    assert result["status"] == "SUCCESS", result
    page = result["pages"][0]
    assert page["script"]["name"] == "Cyrillic" and page["script"]["missing"] == ["rus"]
    assert page["lang"] == "eng"  # the worker's default set
    [warning] = result["warnings"]
    assert warning["code"] == "lang_missing" and "rus" in warning["message"]
    # What to do: add it, as Debian's fast model (PyPI has no wheel of `rus`).
    assert 'OCR_LANGS="eng rus" make run' in warning["message"]
    assert "fast model" in warning["message"]


def test_blank_and_nearly_textless_pages_do_not_fail(worker: Worker,
                                                     client: OcrClient) -> None:
    blank = _run(client, _drawn_page([]), filename="blank.png")
    assert blank["status"] == "SUCCESS" and blank["pages"][0]["source"] == "blank"
    few = _run(client, _drawn_page(["Hi 42"]), filename="few.png")
    assert few["status"] == "SUCCESS", few
    page = few["pages"][0]
    assert page["lang"] == "eng" and page["script"]["outcome"] == "uncertain"
    assert [w["code"] for w in few["warnings"]] == ["lang_uncertain"]


def test_submit_prints_a_line_for_each_page_warning(worker: Worker, redis_url: str,
                                                   tmp_path: Path) -> None:
    """Without --json, a page's warning is a line on stderr: file, code, page, what to do."""
    few = tmp_path / "few.png"
    few.write_bytes(_drawn_page(["Hi 42"]))
    done = subprocess.run([sys.executable, "submit.py", str(few)], cwd=ROOT,
                          env={**os.environ, "REDIS_URL": redis_url}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stderr.splitlines() if ": warning: " in line]
    assert line.startswith("few.png: warning: lang_uncertain: page 1: "), line
    assert "name its languages (`--lang`" in line, line


def test_an_upside_down_page_is_turned_by_the_same_check(worker: Worker,
                                                         client: OcrClient) -> None:
    """No line probe reads it; OSD's rotation turns it: read once, in its own language."""
    name = "lang_ell_page.png"
    out = io.BytesIO()
    Image.open(corpus(name)).rotate(180).save(out, "PNG")
    result = _run(client, out.getvalue(), filename="upside-down.png")
    assert result["status"] == "SUCCESS", result
    page = result["pages"][0]
    assert (page["rotation"], page["lang"]) == (180, "ell+eng")
    assert cer(ground_truth(name), result["text"]) <= 0.04


@pytest.mark.parametrize("name,lang", [("lang_fra_pangram.pdf", "fra"),
                                       ("lang_deu_wikipedia_scan.pdf", "deu")])
def test_a_european_page_is_read_in_its_own_language_without_being_told(
        worker: Worker, client: OcrClient, name: str, lang: str) -> None:
    """The probe's words tell the language (deu and fra installed by make test)."""
    auto = _run(client, corpus(name))
    assert auto["status"] == "SUCCESS", auto
    page = auto["pages"][0]
    assert (page["lang"], page["script"]["outcome"]) == (lang, "found")
    assert auto["languages"] == [lang] and auto["warnings"] == []
    named = _run(client, corpus(name), lang=lang)
    assert auto["text"] == named["text"]  # read as with its right lang


def test_a_page_in_several_latin_languages_is_read_with_them(worker: Worker,
                                                            client: OcrClient) -> None:
    """A page in five languages is read with those its lines name, not English.

    The page of tests/image_fixtures.py: its probe lines name German and French surely,
    its read's lines those and the others this worker has (spa, por, ita where installed),
    so it is read with them all, not as English alone; the result's `lang` lists them,
    with no `lang_uncertain`.
    """
    from tests.image_fixtures import european_page, european_text

    auto = _run(client, european_page(), filename="european.png")
    assert auto["status"] == "SUCCESS", auto
    page = auto["pages"][0]
    codes = page["lang"].split("+")
    assert {"deu", "fra"} <= set(codes) <= {"eng", "deu", "spa", "por", "fra", "ita"}, page
    assert page["script"]["outcome"] == "found" and auto["warnings"] == []
    assert auto["languages"] == [page["lang"]]
    # words each language's model reads alike (an accent such as alcôve's is read
    # differently as more models join the set; the CER below bounds the whole)
    for word in ("über", "großen", "während", "île", "côté"):
        assert word in auto["text"], (word, auto["text"])
    english = _run(client, european_page(), filename="european.png", lang="eng")
    assert "über" not in english["text"]  # what `auto` read before: English alone
    truth = european_text()
    assert cer(truth, auto["text"]) <= 0.03  # measured 2.2 % (eng alone: 5.0 %)
    assert cer(truth, auto["text"]) < cer(truth, english["text"])
