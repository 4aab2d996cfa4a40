"""`timings.total_seconds` covers the job.

It runs from the task's start (planning included) to the result handed to the job's
exit, for a PDF read in process, a fanned-out PDF and a cache hit. Checked for
consistency, never for speed: it is at least the work the job must have done (planning,
measured again in this process with a wide margin; the fake engine's sleep) and at most
the wall time the client saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymupdf
import pytest

from tasks.client import OcrClient
from tasks.lifecycle.jobs import FanOut
from tasks.pipeline.pdf import plan_pdf
from tasks.records.jobs import Outcome
from tasks.settings import Settings
from tests.harness import FAKE_PLUGINS, Worker, corpus
from tests.pdf_fixtures import image_pdf, plain_pages
from tests.units.test_lifecycle import Life, make_life, request_for, run_job

DIGITAL = "dig_geotopo_117p.pdf"
PAGE_SECONDS = 0.3  # the fake engine's time per OCR page (FAKE_PAGE_SECONDS)
# A worker's planning of the digital PDF is at least this share of the fastest of three
# plannings in the test process: a wide margin for load on a shared machine, while a
# clock started after planning (0.008 s for 0.2-0.5 s of work) stays far below.
PLANNING_SHARE = 0.25


# --- in process (no Celery) -----------------------------------------------------------

@pytest.fixture
def life(redis_url: str) -> Iterator[Life]:
    made = make_life(redis_url)
    yield made
    made.engines.unload()


def test_the_clock_starts_when_the_task_does_and_a_hit_has_its_own(life: Life) -> None:
    settings = life.settings  # results cached (OCR_CACHE_RESULTS's default)
    assert settings.cache_results
    data = corpus("dig_crazyones.pdf").read_bytes()
    began = time.time() - 3.0  # the task began 3 s ago (reading its message, say)
    done = run_job("job-clock", request_for(data, settings), life, started=began)
    assert isinstance(done, Outcome) and done.result is not None
    assert done.result.timings is not None
    assert done.result.timings["total_seconds"] >= 3.0
    assert done.started == began
    hit = run_job("job-hit", request_for(data, settings), life, started=time.time())
    assert isinstance(hit, Outcome) and hit.result is not None and hit.result.cached
    # The hit's own time, not the first run's 3 s: no OCR ran for it.
    assert hit.result.timings is not None
    assert hit.result.timings["ocr_seconds"] == 0.0
    assert 0.0 <= hit.result.timings["total_seconds"] < 3.0


def test_a_fan_out_carries_the_planning_clock(life: Life) -> None:
    began = time.time() - 2.0
    data = image_pdf(plain_pages(2))
    work = run_job("job-fan", request_for(data, life.settings), life, started=began)
    assert isinstance(work, FanOut) and work.meta.job.started == began


# --- through a real worker (fake engine: queue mechanics) -----------------------------

@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_ENGINE="fake", OCR_ENGINE_PLUGINS=FAKE_PLUGINS,
                        OCR_CONCURRENCY="1", OCR_CACHE_RESULTS="1",
                        FAKE_PAGE_SECONDS=str(PAGE_SECONDS))


def planning_floor(data: bytes) -> float:
    """A share of the fastest of three plannings of `data` in this process."""
    settings = Settings.from_env({})
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        plan_pdf(data, None, None, "auto", settings).doc.close()
        runs.append(time.perf_counter() - started)
    return PLANNING_SHARE * min(runs)


def timed_job(client: OcrClient, source: Path | bytes, **options: Any
              ) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    job = client.submit(source, **options)
    result = client.wait([job], timeout=180)[job]
    assert result["status"] == "SUCCESS", result
    return time.perf_counter() - started, result


@pytest.mark.slow
def test_born_digital_job_counts_its_planning_then_a_hit_its_lookup(
        worker: Worker, client: OcrClient) -> None:
    data = corpus(DIGITAL).read_bytes()
    floor = planning_floor(data)
    seen, result = timed_job(client, data, filename=DIGITAL)
    assert {p["source"] for p in result["pages"]} == {"text-layer"} and not result["cached"]
    timings = result["timings"]
    assert floor <= timings["total_seconds"] <= seen, (floor, timings, seen)
    assert timings["ocr_seconds"] == 0.0

    seen_hit, hit = timed_job(client, data, filename=DIGITAL)
    assert hit["cached"] is True and hit["text"] == result["text"]
    assert hit["timings"]["ocr_seconds"] == 0.0
    assert 0.0 <= hit["timings"]["total_seconds"] <= seen_hit


@pytest.mark.slow
def test_fanned_out_job_counts_planning_and_its_pages(worker: Worker,
                                                      client: OcrClient) -> None:
    """117 text pages planned by the document task, then one scanned page fanned out."""
    with pymupdf.open(stream=corpus(DIGITAL).read_bytes(), filetype="pdf") as doc, \
            pymupdf.open(stream=image_pdf(plain_pages(1)), filetype="pdf") as scan:
        doc.insert_pdf(scan)
        data = bytes(doc.tobytes())
    floor = planning_floor(data)
    seen, result = timed_job(client, data, filename="digital-and-scan.pdf")
    assert [p["source"] for p in result["pages"]] == ["text-layer"] * 117 + ["ocr"]
    assert result["engine"]["pids"]  # read by a page task
    timings = result["timings"]
    assert timings["ocr_seconds"] >= PAGE_SECONDS
    # Planning, then the page task: one after the other, both inside the clock.
    assert floor + timings["ocr_seconds"] <= timings["total_seconds"] <= seen, \
        (floor, timings, seen)
