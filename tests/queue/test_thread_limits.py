"""A thread-pool (vlm-api) worker's limits, through real workers.

The worker is the Procfile's `worker:` line with OCR_ENGINE=vlm-api against the
simulated inference server (devkit/inference_server.py): one process, a thread pool.

- A page's whole time is bounded by OCR_VLM_API_PAGE_TIME_LIMIT, not only its waits on
  the server: a page the server reads in a loop (the repetition guard stops it) falls
  back to tesseract at full resolution, a dense 300-dpi page that tesseract reads for
  seconds; with a 1 s limit it is recorded failed (`timeout`) instead of read on.
- Recycling by memory: a fake engine registered as `vlm-api` (so the worker runs its
  thread pool) keeps 4 MB a page; with OCR_MAX_MEMORY_PER_CHILD_MB=2 the process grows
  past its limit with its first job, says so, shuts down warm and runs its own command
  again, and the next jobs are read by the fresh process.

No test asserts a duration: they wait for results and log lines.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from PIL import Image, ImageDraw, ImageFont

from devkit.inference_server import SimulatedInferenceServer
from tasks.client import OcrClient
from tasks.queue import thread_limits
from tests.harness import Worker, eventually, kill_all
from tests.pdf_fixtures import image_pdf, plain_pages

WORKER_ENV = {"OCR_ENGINE": "vlm-api", "OCR_VLM_API_MODEL": "simulated-vlm",
              "OCR_CACHE_RESULTS": "0", "OCR_AUTO_ROTATE": "0", "OCR_DESKEW": "0",
              "OCR_SKIP_BLANK_PAGES": "0", "OCR_VLM_TEMPERATURES": "0,0.2"}


@pytest.fixture
def server() -> Iterator[SimulatedInferenceServer]:
    simulated = SimulatedInferenceServer().start()
    yield simulated
    simulated.stop()


def dense_page() -> Image.Image:
    """An A4 page at 300 dpi full of printed words: seconds of tesseract."""
    image = Image.new("L", (2480, 3508), 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    words = "ledger harbour quartz meadow lantern ribbon saddle timber violet walnut"
    for row in range(60):
        draw.text((120, 120 + 55 * row), f"{row:02d} {words} {words[::-1]}", fill=0,
                  font=font)
    return image


def test_bounded_read_times_out_and_counts_its_runaway() -> None:
    release = threading.Event()
    before = thread_limits.runaways()
    with pytest.raises(SoftTimeLimitExceeded):
        thread_limits.bounded(0.05, lambda: release.wait(30))
    assert thread_limits.runaways() == before + 1  # still running, its result dropped
    release.set()
    eventually(lambda: thread_limits.runaways() == before, 30, "the runaway read's end")
    assert thread_limits.bounded(5, lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        thread_limits.bounded(5, lambda: 1 / 0)


def test_page_time_limit_bounds_the_fallback_read_too(
        start_worker: Callable[..., Worker], server: SimulatedInferenceServer,
        client: OcrClient) -> None:
    server.text = "| row | again |" * 400  # read in a loop: tesseract reads the page
    worker = start_worker(**WORKER_ENV, OCR_VLM_API_URL=server.url,
                          OCR_VLM_API_PAGE_TIME_LIMIT="1")
    try:
        job = client.submit(image_pdf([dense_page()], dpi=300), filename="dense.pdf",
                            engine="vlm-api")
        result = client.wait([job], timeout=300)[job]
        assert result["status"] == "FAILURE", result
        assert "OCR_VLM_API_PAGE_TIME_LIMIT" in str(result), result
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        kill_all([worker])  # its 1 s limit is not for the next test's pages


def test_thread_pool_worker_recycles_by_memory(
        start_worker: Callable[..., Worker], server: SimulatedInferenceServer,
        client: OcrClient) -> None:
    # A fake engine under the name vlm-api (a thread-pool worker) keeps 4 MB a page:
    # the process grows past its 2 MB with its first job, whatever else it allocates.
    worker = start_worker(**WORKER_ENV, OCR_VLM_API_URL=server.url,
                          OCR_ENGINE_PLUGINS="vlm-api=tests.fake_engines:LeakyEngine",
                          OCR_MAX_MEMORY_PER_CHILD_MB="2")
    first = client.submit(image_pdf(plain_pages(2)), filename="first.pdf", engine="vlm-api")
    done = client.wait([first], timeout=300)[first]
    assert done["status"] == "SUCCESS", done
    assert done["pages"][0]["text"].startswith("fake ")  # the fake engine read it
    eventually(lambda: "recycled: it grew by" in worker.log(), 120, "the recycle line")
    eventually(lambda: len(re.findall(r"@\S+ ready\.", worker.log())) >= 2, 240,
               "the worker's second start")
    ids = [client.submit(image_pdf(plain_pages(1)), filename=f"after-{i}.pdf",
                         engine="vlm-api") for i in range(2)]
    results = client.wait(ids, timeout=300)
    assert [results[i]["status"] for i in ids] == ["SUCCESS", "SUCCESS"]
    # os.execv keeps the pid: the same process, its command run afresh, serves on
    assert worker.proc is not None and worker.proc.poll() is None
