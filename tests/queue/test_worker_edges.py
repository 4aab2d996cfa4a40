"""A worker's edge cases, through real workers (the Procfile's `worker:` line, a real Redis).

- A lost structure chunk: a markdown job on a born-digital PDF fans its text-layer
  pages out in chunk tasks (OCR_STRUCTURE_CHUNK_PAGES=1); the chunk whose analysis
  kills its pool child (a fake engine's fault in PyMuPDF's own call) is redelivered
  until the poison guard refuses it, its errback records its page failed, and the job
  ends PARTIAL with the other pages' structure.
- A recycled child loads its parent's engine: a worker with OCR_ENGINE=auto resolved
  tesseract at start (no model then); the model appears, children are recycled after
  each task, and every job is still read by tesseract, each in a new child.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pymupdf

from tasks.client import OcrClient
from tests.harness import FAST_PAGES, Worker, corpus, kill_all
from tests.model_dirs import write_model

KILLING = "layout-killing=tests.fake_engines:LayoutKillingEngine"


def png(words: str) -> bytes:
    """A line of printed words (not a blank page: tesseract must read it)."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("L", (520, 70), 255)
    ImageDraw.Draw(image).text((12, 14), words, fill=0, font=ImageFont.load_default(size=34))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_lost_structure_chunk_ends_the_job_partial(start_worker: Callable[..., Worker],
                                                    client: OcrClient) -> None:
    # The corpus first: a test that skips without it leaves no worker behind.
    with pymupdf.open(corpus("dig_multicolumn_3p.pdf")) as doc:
        doc[1].insert_text((72, 40), "KILL-LAYOUT", fontsize=8)
        data = doc.tobytes()
    worker = start_worker(OCR_ENGINE="layout-killing", OCR_ENGINE_PLUGINS=KILLING,
                          OCR_CONCURRENCY="1", OCR_CACHE_RESULTS="0",
                          OCR_STRUCTURE_CHUNK_PAGES="1", **FAST_PAGES)
    try:
        job = client.submit(data, engine="layout-killing", output="markdown",
                            filename="killing.pdf")
        result = client.wait([job], timeout=300)[job]
        assert result["status"] == "PARTIAL", result
        assert [(p["number"], p["code"]) for p in result["failed_pages"]] == [(2, "worker_lost")]
        first, second, third = result["pages"]
        assert second["error"]["code"] == "worker_lost"
        assert first["text"].lstrip().startswith("#") and "|Austria|" in third["text"]
        assert "ocr.pdf_chunk_failed" in worker.log()
    finally:
        kill_all([worker])  # the next test's jobs are for its own worker


def test_recycled_child_loads_its_parents_engine(start_worker: Callable[..., Worker],
                                                 client: OcrClient, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    start_worker(OCR_ENGINE="auto", OCR_MODEL_DIR=str(models), OCR_MODEL="later-vlm",
                 OCR_CONCURRENCY="1", OCR_MAX_TASKS_PER_CHILD="1", OCR_CACHE_RESULTS="0")
    job = client.submit(png("first page read"), filename="a.png")
    first = client.wait([job], timeout=120)[job]
    assert first["status"] == "SUCCESS" and first["engine"]["name"] == "tesseract", first
    write_model(models / "later-vlm")  # what OCR_ENGINE=auto would load now
    pids = {first["engine"]["pid"]}
    for name in ("b.png", "c.png"):
        job = client.submit(png(f"read as {name}"), filename=name)
        result = client.wait([job], timeout=120)[job]
        assert result["status"] == "SUCCESS", result
        assert result["engine"]["name"] == "tesseract"  # the parent's, not mlx-vlm
        pids.add(result["engine"]["pid"])
    assert len(pids) == 3  # each job in a new child


