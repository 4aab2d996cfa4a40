"""A job that names an engine reaches a worker that has it.

One real worker, the Procfile's default (tesseract on `ocr`, the default OCR_LANG_ENGINES
that routes `chi_sim` to rapidocr): it consumes `ocr-tesseract` and `ocr-rapidocr`, so
`engine=rapidocr` is read here, as `lang=chi_sim` is, and `submit.py --engine rapidocr`
on the same machine ends 0 instead of `no_worker` (exit 5). A routed PDF's pages go to
the queue of the engine that reads them. This module's Redis database has no other
worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pymupdf
import pytest

from tasks.client import OcrClient
from tasks.queue.routing import DEFAULT_QUEUE, job_queue, route_task
from tests.harness import ROOT, Worker, corpus

pytestmark = pytest.mark.slow

CHINESE = "lang_chi_sim_page.jpg"


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_ENGINE="tesseract", OCR_CONCURRENCY="1", OCR_QUEUES="ocr")


def engine_of(result: dict[str, object]) -> str:
    engine = result.get("engine")
    assert isinstance(engine, dict), result
    return str(engine["name"])


def test_the_queue_rule_is_one(client: OcrClient) -> None:
    assert job_queue(None) == DEFAULT_QUEUE and job_queue("rapidocr") == "ocr-rapidocr"
    assert route_task("ocr.document", (), {"engine": "rapidocr"}, {}) == {
        "queue": job_queue("rapidocr")}
    assert route_task("ocr.document", (), {}, {}) is None  # Celery's default: `ocr`


def test_the_worker_consumes_its_routed_engines_queue(worker: Worker,
                                                      client: OcrClient) -> None:
    assert "serves engine queue ocr-tesseract and ocr-rapidocr" in worker.log()
    live = client.live_queues()
    node = next(n for n in live if n.startswith(f"{worker.name}@"))
    assert {"ocr", "ocr-tesseract", "ocr-rapidocr"} <= live[node]


def test_a_job_naming_a_routed_engine_is_read_by_it(worker: Worker,
                                                    client: OcrClient) -> None:
    job = client.submit(corpus(CHINESE), engine="rapidocr")
    assert client.queue_of(job) == "ocr-rapidocr"
    result = client.wait([job], timeout=240)[job]
    assert result["status"] == "SUCCESS", result
    assert engine_of(result) == "rapidocr"


def test_submit_py_engine_rapidocr_is_served(worker: Worker, redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "submit.py", "--json", "--engine", "rapidocr", "--timeout", "240",
         str(corpus(CHINESE))], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "REDIS_URL": redis_url})
    assert done.returncode == 0, done.stderr  # was 5: no worker consumed ocr-rapidocr
    assert engine_of(json.loads(done.stdout)) == "rapidocr"


def test_a_routed_pdf_sends_its_pages_to_its_engines_queue(worker: Worker,
                                                          client: OcrClient,
                                                          tmp_path: Path) -> None:
    pdf = tmp_path / "chinese.pdf"
    with pymupdf.open() as doc, pymupdf.open(corpus(CHINESE)) as image:
        rect = image[0].rect
        page = doc.new_page(width=rect.width * 72 / 300, height=rect.height * 72 / 300)
        page.insert_image(page.rect, filename=str(corpus(CHINESE)))
        doc.save(pdf)
    job = client.submit(pdf, lang="chi_sim")  # no engine: routed by its language
    result = client.wait([job], timeout=240)[job]
    assert result["status"] == "SUCCESS", result
    assert engine_of(result) == "rapidocr"  # its page ran from `ocr-rapidocr`
