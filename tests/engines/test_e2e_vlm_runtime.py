"""The VLM runtime through real workers: page budget, incomplete reads, fallback, memory.

The model is random-weight with Qwen2-VL's own image geometry (14 px patches, 2x2 merge,
max_pixels 12,845,056: the processor would take a 300-dpi page whole), built offline by
devkit/tiny_vlm.py. Its greedy output never ends with the end token, so every read stops
at the (small) token budget: tried on each temperature, then read by tesseract.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.client import OcrClient
from tests.cer import cer
from tests.harness import ROOT, Worker, corpus, ground_truth, kill_all

pytestmark = pytest.mark.slow

MEMORY_LIMIT_MB = 100
LONGEST_SIDE = 448  # small, so CI's 2 cores stay fast; the default is 1288 (bench/vlm.py)
VLM_ENV = {"MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1", "OCR_CACHE_RESULTS": "0",
           "OCR_VLM_MAX_TOKENS": "6", "OCR_VLM_TEMPERATURES": "0,0",
           "OCR_VLM_LONGEST_SIDE": str(LONGEST_SIDE)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built in a subprocess: MLX must not run in the test process, which starts workers."""
    models = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, "-m", "devkit.tiny_vlm", str(models / "qwen2-vl-pages"),
                    "qwen2-vl-pages"], cwd=ROOT, check=True, timeout=300,
                   capture_output=True,
                   env={**os.environ, "MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1"})
    return models


@pytest.fixture(scope="module")
def vlm_worker(start_worker: Callable[..., Worker], model_dir: Path) -> Worker:
    # No OCR_CONCURRENCY: a VLM worker has one pool child by default. The memory limit
    # is far below the child's RSS once the model loaded: counted as growth, it holds.
    return start_worker(**VLM_ENV, OCR_MODEL_DIR=str(model_dir), OCR_MODEL="qwen2-vl-pages",
                        OCR_MAX_MEMORY_PER_CHILD_MB=str(MEMORY_LIMIT_MB),
                        OCR_MLX_MEMORY_LIMIT_MB="4096", OCR_MLX_CACHE_LIMIT_MB="256")


def test_300_dpi_page_goes_at_the_budget_and_falls_back(vlm_worker: Worker,
                                                        client: OcrClient) -> None:
    page_job = client.submit(corpus("scan_linn.png"), output="json")  # 2550 x 3300 px
    small_job = client.submit(corpus("scan_tess_phototest.tif"))  # 640 x 480 px
    results = client.wait([page_job, small_job], timeout=300)
    result, small = results[page_job], results[small_job]
    assert result["status"] == "SUCCESS", result
    page = result["pages"][0]
    vlm = page["vlm"]
    width, height = vlm["image_size"]
    assert max(width, height) <= LONGEST_SIDE and width % 28 == 0 and height % 28 == 0
    # The prompt is the image's tokens (one per 28 x 28 cell) plus the same text for
    # both pages: one constant, whatever the input's resolution.
    sw, sh = small["pages"][0]["vlm"]["image_size"]
    text_tokens = vlm["prompt_tokens"] - width * height // 784
    assert text_tokens == small["pages"][0]["vlm"]["prompt_tokens"] - sw * sh // 784
    assert 0 < text_tokens < 200 and vlm["prompt_tokens"] < 600  # 300 dpi: ~10,900
    # Never stopped by itself: tried twice, then tesseract read the full-resolution page.
    assert vlm["finish_reason"] == "length" and vlm["generation_tokens"] == 6
    assert vlm["tries"] == 2 and vlm["profile"] == "generic"
    assert page["fallback"] == {"engine": "tesseract", "reason": "length"}
    assert page["image_size"] == [2550, 3300] and page["words"]
    assert cer(ground_truth("scan_linn.png"), result["text"]) <= 0.04
    assert [w["page"] for w in result["warnings"]] == [1]
    assert result["engine"]["name"] == "mlx-vlm"
    record = vlm_worker.job_records([page_job])[page_job]
    assert record["vlm"] == {"prompt_tokens": vlm["prompt_tokens"], "generation_tokens": 6,
                             "finish_reasons": {"length": 1}, "fallbacks": 1}


def test_pdf_page_rendered_at_the_budget(vlm_worker: Worker, client: OcrClient) -> None:
    """A scanned PDF page is rendered for the VLM at the budget, for tesseract at 300 dpi.

    The PDF fans out to page tasks (run_pdf_page), the other rendering path.
    """
    job = client.submit(corpus("scan_linn_skew.pdf"), mode="ocr", output="json")
    result = client.wait([job], timeout=300)[job]
    assert result["status"] == "SUCCESS", result
    page = result["pages"][0]
    assert max(page["vlm"]["image_size"]) <= LONGEST_SIDE
    assert page["fallback"]["engine"] == "tesseract"
    assert page["image_size"] == [2550, 3300]
    assert cer(ground_truth("scan_linn_skew.pdf"), result["text"]) <= 0.10
    assert result["warnings"][0]["page"] == 1


def test_searchable_pdf_of_a_vlm_page_has_a_real_text_layer(vlm_worker: Worker,
                                                            client: OcrClient) -> None:
    import pymupdf

    job = client.submit(corpus("scan_tess_phototest.tif"), output="pdf")
    result = client.wait([job], timeout=240)[job]
    assert result["status"] == "SUCCESS", result
    data = client.fetch_output(result)
    assert data is not None
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        layer = doc[0].get_text()
    assert cer(ground_truth("scan_tess_phototest.tif"), layer) <= 0.05


def test_vlm_worker_has_one_child_recycled_on_growth(vlm_worker: Worker,
                                                     client: OcrClient) -> None:
    stats = client.app.control.inspect(timeout=5).stats() or {}
    (node_stats,) = [v for k, v in stats.items() if k.startswith(vlm_worker.name)]
    assert node_stats["pool"]["max-concurrency"] == 1
    assert len(node_stats["pool"]["processes"]) == 1
    jobs = [client.submit(corpus("scan_tess_phototest.tif")) for _ in range(2)]
    results = client.wait(jobs, timeout=240)
    (pid,) = {results[j]["engine"]["pid"] for j in jobs}  # not recycled
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    rss_mb = int(match.group(1)) // 1024
    assert rss_mb > MEMORY_LIMIT_MB, "an absolute limit would have recycled this child"
    assert re.search(rf"pool child {pid}: memory baseline \d+ MB", vlm_worker.log())
    assert f"mlx limits (pid {pid}): memory 4096 MB, cache 256 MB" in vlm_worker.log()


def test_fallback_none_fails_the_page_with_a_code(vlm_worker: Worker,
                                                  start_worker: Callable[..., Worker],
                                                  model_dir: Path,
                                                  client: OcrClient) -> None:
    kill_all([vlm_worker])  # this module's jobs now go to the worker below only
    start_worker(**{**VLM_ENV, "OCR_VLM_TEMPERATURES": "0"}, OCR_MODEL_DIR=str(model_dir),
                 OCR_MODEL="qwen2-vl-pages", OCR_VLM_FALLBACK="none")
    job = client.submit(corpus("scan_tess_phototest.tif"))
    result = client.wait([job], timeout=240)[job]
    assert result["status"] == "FAILURE", result
    assert result["error"]["code"] == "vlm_incomplete"
