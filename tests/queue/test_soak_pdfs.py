"""Soak: a stream of small scanned PDFs through the fan-out keeps pool children flat.

500 one-page scanned PDFs (a rendered line of text each, no text layer, all different)
go through a real tesseract worker started from the Procfile: each job plans its PDF
and sends its page as an `ocr.pdf_page` task, and the last page merges. Children are
never recycled (OCR_MAX_TASKS_PER_CHILD=0), so a leak would show. Their RSS is sampled
after each batch of 50; after a warm-up batch it may grow by less than 25 MB.
OCR_SOAK_PDFS sets another count (e.g. 5000 as a longer bench run).

Two things had made the children grow by ~0.37 MB per fanned-out PDF job (500 tesseract
jobs: 397 -> 612+ MB in total, the fake engine ~0.75 MB a job), both per job, not per
page: the `Ignore` that ends a fan-out's document task kept its frames in a reference
cycle only the cyclic collector frees (`signals.drop_traceback` cuts it; returning a
summary instead is not an option: Celery would store it as the job's SUCCESS for
messages that ask for results, Flower's and the Node client's), and MuPDF's resource
store kept every document's fonts and images up to 256 MB a process
(`pdf.empty_store` after each task). With both: 500 jobs, 374.0 -> 376.8 MB for the two
children after the warm-up batch (fake engine, 300 jobs: 206.1 -> 208.1 MB).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import psutil
import pytest
from PIL import Image, ImageDraw, ImageFont

from tasks.client import OcrClient
from tests.harness import Worker, fake_env
from tests.pdf_fixtures import image_pdf

COUNT = int(os.environ.get("OCR_SOAK_PDFS", "500"))  # the long form (`make test-long`)
# The short form (`make test`): a warm-up batch and three more, 150 jobs after it; a
# child growing ~0.37 MB a job (the leaks this soak has caught) grows 55 MB there.
SHORT = 200
# OCR_SOAK_ENGINE=fake: the same stream through the fake engine (tests/fake_engines.py),
# to tell the engine's memory from the fan-out's
ENGINE = os.environ.get("OCR_SOAK_ENGINE", "tesseract")
BATCH = 50
WORDS = ("invoice", "ledger", "quarter", "harbour", "signal", "meadow", "copper", "violet")


def scanned_line(n: int) -> bytes:
    """A one-page scanned PDF (200 dpi) of one line of text, different for each n."""
    image = Image.new("L", (900, 90), 255)
    font = ImageFont.load_default(size=36)
    text = f"{WORDS[n % 8]} {n} {WORDS[(n // 8) % 8]}"
    ImageDraw.Draw(image).text((20, 22), text, fill=0, font=font)
    return image_pdf([image], dpi=200)


def children_rss_mb(worker: Worker) -> list[float]:
    assert worker.proc is not None
    return [round(c.memory_info().rss / 2**20, 1)
            for c in psutil.Process(worker.proc.pid).children()]


@pytest.mark.slow
@pytest.mark.parametrize("count", [pytest.param(SHORT, id="short"),
                                   pytest.param(COUNT, id="long", marks=pytest.mark.long)])
def test_soak_of_small_scanned_pdfs_keeps_children_flat(
        start_worker: Callable[..., Worker], client: OcrClient, count: int) -> None:
    engine = fake_env(cache=True, OCR_SKIP_BLANK_PAGES="1") if ENGINE == "fake" else {}
    worker = start_worker(**engine, OCR_CONCURRENCY="2",
                          OCR_MAX_TASKS_PER_CHILD="0", OCR_CACHE_RESULTS="0")
    before = children_rss_mb(worker)
    samples: list[list[float]] = []
    for start in range(0, count, BATCH):
        ids = [client.submit(scanned_line(n), filename=f"line{n}.pdf")
               for n in range(start, min(start + BATCH, count))]
        results = client.wait(ids, timeout=600)
        assert all(results[i]["status"] == "SUCCESS" for i in ids), \
            [results[i] for i in ids if results[i]["status"] != "SUCCESS"][:2]
        assert all(results[i]["pages"][0]["source"] == "ocr" for i in ids)
        samples.append(children_rss_mb(worker))
    # every job really went through OCR: the number on each line is read back
    if ENGINE == "tesseract":
        assert str(count - 1) in results[ids[-1]]["text"]
    totals = [sum(s) for s in samples]
    print(f"\nsoak of {count} scanned PDFs: children RSS (MB) at start {before}; after each "
          f"{BATCH}: {samples}; total after warm-up {totals[0]:.1f}, at the end "
          f"{totals[-1]:.1f}, max {max(totals):.1f}")
    assert len(samples[-1]) == 2  # the same two children all along (never recycled)
    assert max(totals[1:]) - totals[0] < 25
