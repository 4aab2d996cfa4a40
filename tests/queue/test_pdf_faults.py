"""PDF fan-out under faults, with fake engines in real workers.

A page past its soft limit, a child killed at its hard limit, every page failing,
a 1,000-page PDF.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest
from PIL import Image

from tasks.client import JobProgress, OcrClient
from tests.harness import Worker, corpus
from tests.pdf_fixtures import image_pdf, plain_pages, repeated_image_pdf

pytestmark = pytest.mark.slow

ENGINES = ("slow-on-dark", "stuck-on-dark")


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    from tests.harness import FAKE_PLUGINS

    queues = ",".join(["ocr"] + [f"ocr-{name}" for name in ENGINES])
    return start_worker(OCR_ENGINE="fake", OCR_ENGINE_PLUGINS=FAKE_PLUGINS,
                        OCR_CONCURRENCY="2", OCR_QUEUES=queues, OCR_CACHE_RESULTS="0",
                        OCR_PAGE_SOFT_TIME_LIMIT="1", OCR_PAGE_HARD_TIME_LIMIT="3",
                        OCR_PDF_DPI="72", OCR_DESKEW="0")


def run(client: OcrClient, data: bytes, timeout: float = 120, **options: Any
        ) -> dict[str, Any]:
    job = client.submit(data, filename="generated.pdf", **options)
    return client.wait([job], timeout=timeout)[job]


def test_page_past_soft_limit_gives_partial(worker: Worker, client: OcrClient) -> None:
    result = run(client, image_pdf(plain_pages(4, dark=[2])), engine="slow-on-dark")
    assert result["status"] == "PARTIAL"
    assert [(p["number"], p["code"]) for p in result["failed_pages"]] == [(2, "timeout")]
    good = [p for p in result["pages"] if "error" not in p]
    assert [p["number"] for p in good] == [1, 3, 4]
    assert all(p["text"].startswith("fake ") for p in good)


def test_child_killed_at_hard_limit_gives_partial(worker: Worker,
                                                  client: OcrClient) -> None:
    result = run(client, image_pdf(plain_pages(3, dark=[3])), engine="stuck-on-dark")
    assert result["status"] == "PARTIAL", result
    assert [(p["number"], p["code"]) for p in result["failed_pages"]] == [(3, "timeout")]
    assert "Hard time limit" in worker.log() or "TimeLimitExceeded" in worker.log()
    # the pool replaced the killed child and serves the next job
    assert run(client, image_pdf(plain_pages(2)))["status"] == "SUCCESS"


def test_every_page_failing_fails_the_document(worker: Worker, client: OcrClient) -> None:
    result = run(client, image_pdf(plain_pages(2, dark=[1, 2])), engine="slow-on-dark")
    assert result["status"] == "FAILURE"
    assert result["error"]["code"] == "timeout"
    assert "all 2 pages failed" in result["error"]["message"]


def test_thousand_pages_with_flat_worker_memory(worker: Worker, client: OcrClient) -> None:
    pdf = repeated_image_pdf(Image.new("L", (100, 130), 235), 1000, dpi=50)
    pool = psutil.Process(worker.proc.pid if worker.proc else 0)

    def children_mb() -> float:
        return sum(child.memory_info().rss for child in pool.children()) / 2**20

    # The pool as the job starts and as it ends, and whatever progress came between
    # (its reads are 0.5 s apart: a fast machine may read none past page 800).
    samples: list[tuple[int, float]] = [(0, children_mb())]

    def sample(_: str, status: JobProgress) -> None:
        if status.state == "PROGRESS":
            samples.append((status.done, children_mb()))

    started = time.monotonic()
    job = client.submit(pdf, filename="thousand.pdf")
    result = client.wait([job], timeout=600, on_progress=sample, poll=0.5)[job]
    samples.append((1000, children_mb()))
    assert result["status"] == "SUCCESS"
    assert [p["number"] for p in result["pages"]] == list(range(1, 1001))
    assert {p["source"] for p in result["pages"]} == {"ocr"}
    # spread over both children, which were recycled every 200 tasks on the way
    assert len(result["engine"]["pids"]) >= 5
    early = max(rss for done, rss in samples if done <= 200)
    late = max(rss for done, rss in samples if done >= 800)
    print(f"\n1000 pages in {time.monotonic() - started:.1f} s; pool children RSS "
          f"{early:.0f} MB at <=200 pages, {late:.0f} MB at >=800 pages")
    assert late - early < 40, (early, late)


def test_output_over_its_limit_is_refused(start_worker: Callable[..., Worker],
                                          client: OcrClient) -> None:
    # Tesseract: an engine without word boxes refuses output=pdf (output_unsupported).
    start_worker(OCR_CONCURRENCY="1", OCR_QUEUES="tiny-output", OCR_MAX_OUTPUT_MB="0.001")
    # A text-layer PDF: no page tasks, the whole job stays on this worker.
    data = base64.b64encode(corpus("dig_crazyones.pdf").read_bytes()).decode()
    job = client.app.send_task("ocr.document", queue="tiny-output",
                               kwargs={"data_b64": data, "output": "pdf"}).id
    assert client.wait([job], timeout=60)[job]["error"]["code"] == "output_too_large"
