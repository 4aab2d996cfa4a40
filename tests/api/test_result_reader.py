"""Features together: one correction, every input, output and reader, the cache on and off.

A real tesseract worker (results cached), a real Redis and the HTTP API. For each input
(an image, a born-digital PDF, a scanned PDF, a mixed PDF, an encrypted PDF) client
`matrix` reads it once through the API and corrects its longest line there. Then each
cell of a pairwise cover of inputs x outputs (text, markdown, json, hocr, alto, pdf) x
readers (the API, `submit.py`, `OcrClient`, a local batch) x the cache (on: a cache
hit of the first read; off: `no_cache`) sends the same document again under the same
client, through that reader, and finds the page's text and the correction in what the
reader gives for that output (tasks/lifecycle/result_reader.py: one reader for all).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymupdf
import pytest
import requests
from PIL import Image

from tasks.records.formats import FORMATS
from tests.api_server import ApiServer, create_token, session, wait_end
from tests.harness import ROOT, Worker, corpus, make_client
from tests.pdf_fixtures import encrypted_pdf, image_pdf

CLIENT = "matrix"
PASSWORD = "open-sesame"
SCAN = "scan_tess_phototest.tif"
OUTPUTS = ("text", "markdown", "json", "hocr", "alto", "pdf")
INPUTS = ("image", "born-digital", "scanned", "mixed", "encrypted")
READERS = ("api", "submit.py", "OcrClient", "batch")
BORN_LINES = ["The quick brown fox jumps over the lazy dog near the river bank",
              "Pack my box with five dozen liquor jugs before the long winter",
              "Sphinx of black quartz judge my vow and weigh the seven stones"]


def cells() -> list[tuple[str, str, str, bool]]:
    """A pairwise cover: every pair of two factors' values is in some cell (30 cells)."""
    return [(output, source, READERS[(o + i) % len(READERS)], (o + i // 2) % 2 == 0)
            for o, output in enumerate(OUTPUTS) for i, source in enumerate(INPUTS)]


def test_the_cells_cover_every_pair() -> None:
    factors = (OUTPUTS, INPUTS, READERS, (True, False))
    for a, b in itertools.combinations(range(len(factors)), 2):
        assert {(c[a], c[b]) for c in cells()} == set(
            itertools.product(factors[a], factors[b])), (a, b)


def scan_image() -> Image.Image:
    return Image.open(corpus(SCAN)).convert("L")


def born_digital() -> bytes:
    doc = pymupdf.open()
    page = doc.new_page(width=612, height=300)
    for i, line in enumerate(BORN_LINES):
        page.insert_text((40, 60 + 40 * i), line, fontsize=12)
    return bytes(doc.tobytes())


def mixed() -> bytes:
    """A text-layer page, then a scanned one."""
    doc = pymupdf.open(stream=born_digital(), filetype="pdf")
    doc.insert_pdf(pymupdf.open(stream=image_pdf([scan_image()]), filetype="pdf"))
    return bytes(doc.tobytes())


@pytest.fixture(scope="module")
def documents() -> dict[str, tuple[str, bytes]]:
    image = io.BytesIO()
    scan_image().save(image, "PNG")
    scanned = image_pdf([scan_image()])
    return {"image": ("page.png", image.getvalue()),
            "born-digital": ("born.pdf", born_digital()),
            "scanned": ("scanned.pdf", scanned),
            "mixed": ("mixed.pdf", mixed()),
            "encrypted": ("locked.pdf", encrypted_pdf(scanned, PASSWORD))}


@pytest.fixture(scope="module")
def api(start_worker: Callable[..., Worker], start_api: Callable[..., ApiServer]
        ) -> ApiServer:
    start_worker(OCR_ENGINE="tesseract", OCR_CONCURRENCY="2", OCR_DESKEW="0")
    return start_api()


@pytest.fixture(scope="module")
def http(api: ApiServer, redis_url: str) -> requests.Session:
    return session(create_token(redis_url, CLIENT))


def send(http: requests.Session, api: ApiServer, name: str, data: bytes,
         **fields: str) -> str:
    extra = {"password": PASSWORD} if name == "locked.pdf" else {}
    answer = http.post(f"{api.url}/v1/jobs", files={"file": (name, data)},
                       data={**fields, **extra}, timeout=60)
    assert answer.status_code == 202, answer.text
    job_id = str(answer.json()["id"])
    assert wait_end(http, api, job_id, 300)["status"] == "SUCCESS"
    return job_id


@pytest.fixture(scope="module")
def corrections(api: ApiServer, http: requests.Session,
                documents: dict[str, tuple[str, bytes]]) -> dict[str, tuple[str, str]]:
    """Each input read once and its longest line corrected: (new text, line as read)."""
    made = {}
    for number, source in enumerate(INPUTS):
        name, data = documents[source]
        job_id = send(http, api, name, data, output="json")
        page = len(json.loads(http.get(f"{api.url}/v1/jobs/{job_id}/result",
                                       params={"format": "json"}, timeout=60).text)["pages"])
        lines = http.get(f"{api.url}/v1/jobs/{job_id}/pages/{page}", timeout=60).json()["lines"]
        target = max(lines, key=lambda line: len(line["text"]))
        new = f"Zebras juggle kumquats number {number} quietly"
        put = http.put(f"{api.url}/v1/jobs/{job_id}/pages/{page}/lines/{target['id']}",
                       json={"text": new}, timeout=60)
        assert put.status_code == 200, put.text
        made[source] = (new, target["text"])
    return made


def words(document: str, output: str) -> str:
    """The words an output gives, in order, one space apart."""
    if output == "hocr":
        found = re.findall(r"class=['\"]ocrx_word['\"][^>]*>([^<]*)<", document)
        return " ".join(found)
    if output == "alto":
        return " ".join(re.findall(r'CONTENT="([^"]*)"', document))
    if output == "json":
        result = json.loads(document)
        return " ".join(" ".join(str(p.get("text", "")).split())
                        for p in result["pages"])
    return " ".join(document.split())


def pdf_text(data: bytes) -> str:
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        return "\n".join(page.get_text() for page in doc)


def through_api(api: ApiServer, http: requests.Session, name: str, data: bytes,
                output: str, cached: bool) -> str:
    job_id = send(http, api, name, data, output=output,
                  **({} if cached else {"no_cache": "true"}))
    answer = http.get(f"{api.url}/v1/jobs/{job_id}/result", params={"format": output},
                      timeout=120)
    assert answer.status_code == 200, answer.text
    return pdf_text(answer.content) if output == "pdf" else answer.text


def through_cli(redis_url: str, tmp: Path, name: str, data: bytes, output: str,
                cached: bool, batch: bool) -> str:
    folder, out = tmp / "in", tmp / "out"
    folder.mkdir()
    (folder / name).write_bytes(data)
    options = ["--output", output, *([] if cached else ["--no-cache"]),
               *(["--password", PASSWORD] if name == "locked.pdf" else [])]
    command = (["batch", str(folder), "--result-url", str(out), *options] if batch else
               [*options, "--out", str(out), str(folder / name)])
    done = subprocess.run([sys.executable, "submit.py", *command], cwd=ROOT, env={
        **os.environ, "REDIS_URL": redis_url, "OCR_CLIENT": CLIENT},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    if batch:
        written = out / f"{name}{FORMATS[output].suffix}"
    else:
        written = out / f"{Path(name).stem}{FORMATS[output].suffix}"
    assert written.exists(), sorted(p.name for p in out.iterdir())
    return pdf_text(written.read_bytes()) if output == "pdf" else written.read_text()


def through_client(redis_url: str, name: str, data: bytes, output: str,
                   cached: bool) -> str:
    client = make_client(redis_url, OCR_CLIENT=CLIENT)
    options: dict[str, Any] = {"output": output}
    if not cached:
        options["no_cache"] = True
    if name == "locked.pdf":
        options["password"] = PASSWORD
    job_id = client.submit(data, filename=name, **options)
    result = client.wait([job_id], timeout=300)[job_id]
    assert result["status"] == "SUCCESS", result
    if output in ("text", "markdown"):
        return str(result["text"])
    if output == "json":
        return json.dumps(result)
    stored = client.fetch_output(result)
    assert stored is not None
    return pdf_text(stored) if output == "pdf" else stored.decode()


# Beyond the cover: an encrypted PDF read as Markdown by a batch, whose text went missing.
REPORTED = [("markdown", "encrypted", "batch", cached) for cached in (True, False)]
# A born-digital page's searchable PDF keeps the page's own text layer: a correction
# would have to take the line's text out of the page's content, which is not done.
KNOWN_GAPS = {("pdf", "born-digital"): "a text-layer page's PDF keeps its own text"}


@pytest.mark.parametrize(("output", "source", "reader", "cached"), [
    pytest.param(*cell, marks=pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[cell[:2]]))
    if cell[:2] in KNOWN_GAPS else cell for cell in [*cells(), *REPORTED]],
    ids=lambda value: str(value))
def test_a_correction_is_in_every_output_of_every_reader(
        api: ApiServer, http: requests.Session, redis_url: str, tmp_path: Path,
        documents: dict[str, tuple[str, bytes]],
        corrections: dict[str, tuple[str, str]],
        output: str, source: str, reader: str, cached: bool) -> None:
    name, data = documents[source]
    if reader == "api":
        got = through_api(api, http, name, data, output, cached)
    elif reader == "OcrClient":
        got = through_client(redis_url, name, data, output, cached)
    else:
        got = through_cli(redis_url, tmp_path, name, data, output, cached,
                          batch=reader == "batch")
    shown = words(got, output)
    new, original = corrections[source]
    assert new in shown, (shown[:600], new)
    assert " ".join(original.split()) not in shown
    assert len(shown.split()) > len(new.split()) + 10  # the page's other text is there
