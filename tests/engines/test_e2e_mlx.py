"""End to end on the mlx-vlm engine, with a tiny random-weight model.

A real worker loads a qwen2_vl model built offline by devkit/tiny_vlm.py.

The text of a random-weight model is noise; these tests check the pipeline (load in
the child, generation, provenance, cache clearing, recycling, guarded loading).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.client import OcrClient
from tasks.operator_console import OperatorConsole
from tests.harness import ROOT, Worker, corpus, eventually, make_client

pytestmark = pytest.mark.slow

MLX_ENV = {"MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1",
           "OCR_VLM_MAX_TOKENS": "8", "OCR_CACHE_RESULTS": "0"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with the tiny model, built in a subprocess.

    MLX must not be evaluated in the test process, which later starts workers.
    """
    models = tmp_path_factory.mktemp("models")
    # `tiny-stops`: every read ends at once (complete and empty), so these jobs test the
    # queue mechanics without fallbacks (tests/engines/test_e2e_vlm_runtime.py tests those).
    subprocess.run([sys.executable, "-m", "devkit.tiny_vlm", str(models / "tiny-qwen2-vl"),
                    "tiny-stops"],
                   cwd=ROOT, check=True, timeout=300, capture_output=True,
                   env={**os.environ, "MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1"})
    return models


@pytest.fixture(scope="module")
def vlm_worker(start_worker: Callable[..., Worker], model_dir: Path) -> Worker:
    # OCR_ENGINE stays `auto`: the model's presence makes this an mlx-vlm worker.
    return start_worker(**MLX_ENV, OCR_MODEL_DIR=str(model_dir), OCR_MODEL="tiny-qwen2-vl",
                        OCR_MAX_TASKS_PER_CHILD="2")


def warned_only_of_silent_pages(result: dict[str, Any]) -> bool:
    """The tiny model stops at once: each page it read no text of says so, nothing else."""
    silent = [p["number"] for p in result["pages"] if not p["text"].strip()]
    return [(w["code"], w["page"]) for w in result["warnings"]] == \
        [("text_missing", n) for n in silent]


def test_vlm_worker_runs_jobs_and_recycles(vlm_worker: Worker, client: OcrClient) -> None:
    jobs = [client.submit(corpus("scan_tess_phototest.tif"), engine="mlx-vlm")
            for _ in range(3)]
    results = client.wait(jobs, timeout=240)
    engines = [results[j]["engine"] for j in jobs]
    assert all(results[j]["status"] == "SUCCESS" for j in jobs), results
    assert all(isinstance(results[j]["text"], str) for j in jobs)
    assert {e["name"] for e in engines} == {"mlx-vlm"}
    assert {e["model"] for e in engines} == {"tiny-qwen2-vl"}
    for job in jobs:
        (page,) = results[job]["pages"]
        assert page["vlm"]["finish_reason"] == "stop" and page["vlm"]["tries"] == 1
        assert "fallback" not in page and warned_only_of_silent_pages(results[job])
    assert [e["tasks_in_process"] for e in engines] == [1, 2, 1]
    assert engines[0]["pid"] == engines[1]["pid"] != engines[2]["pid"]
    log = vlm_worker.log()
    assert log.count("engine loaded: mlx-vlm model=tiny-qwen2-vl") == 2
    assert "serves engine queue ocr-mlx-vlm" in log


def test_jobs_without_engine_use_the_workers_engine(vlm_worker: Worker,
                                                    client: OcrClient) -> None:
    job = client.submit(corpus("edge_multiframe_g4.tiff"), pages="1-2")
    result = client.wait([job], timeout=240)[job]
    assert result["engine"]["name"] == "mlx-vlm"
    assert [p["number"] for p in result["pages"]] == [1, 2]


def test_unload_control_releases_the_vlm(start_worker: Callable[..., Worker], model_dir: Path,
                                         own_redis_url: str) -> None:
    """The remote-control command closes the MLX model in the child; the next job reloads.

    A worker of its own, on a database of its own, whose child never recycles: the
    module's worker recycles after 2 tasks, and a child that replaces a recycled one loads
    the model at its start, so whether the model stays registered after an unload would
    depend on how many tasks the module's earlier tests gave it.
    """
    import redis

    from tasks.models.registry import ModelRegistry

    worker = start_worker(**MLX_ENV, REDIS_URL=own_redis_url, OCR_MODEL_DIR=str(model_dir),
                          OCR_MODEL="tiny-qwen2-vl")
    client = make_client(own_redis_url)
    models = ModelRegistry(redis.Redis.from_url(own_redis_url))
    loaded = "engine loaded: mlx-vlm model=tiny-qwen2-vl"
    first = client.submit(corpus("scan_tess_phototest.tif"), engine="mlx-vlm")
    assert client.wait([first], timeout=240)[first]["status"] == "SUCCESS"
    assert "tiny-qwen2-vl" in {h.model for h in models.loaded()}
    loads = worker.log().count(loaded)
    replies = OperatorConsole(client).unload_models(timeout=3)
    (reply,) = [r for node, r in replies.items() if node.startswith(f"{worker.name}@")]
    assert reply.get("ok") == "release requested in 1 pool children", replies
    (child,) = reply["pids"]
    eventually(lambda: f"engines released (unload_model) in pid {child}" in worker.log(), 30,
               lambda: f"the release in the worker's log:\n{worker.log()[-2000:]}")
    assert f"engine unloaded: mlx-vlm (pid {child})" in worker.log()
    eventually(lambda: "tiny-qwen2-vl" not in {h.model for h in models.loaded()}, 30,
               "the model's registration gone")
    job = client.submit(corpus("scan_tess_phototest.tif"), engine="mlx-vlm")
    result = client.wait([job], timeout=240)[job]
    assert result["status"] == "SUCCESS" and result["engine"]["model"] == "tiny-qwen2-vl"
    assert result["engine"]["pid"] == child  # the same child, which loaded it again
    assert worker.log().count(loaded) == loads + 1
    client.close()


def test_missing_model_fails_fast_and_never_downloads(start_worker: Callable[..., Worker],
                                                      model_dir: Path,
                                                      client: OcrClient) -> None:
    worker = start_worker(**MLX_ENV, OCR_ENGINE="mlx-vlm", OCR_MODEL_DIR=str(model_dir),
                          OCR_MODEL="Qwen2-VL-2B-Instruct-4bit", OCR_QUEUES="missing-model")
    job = client.app.send_task("ocr.document", queue="missing-model", kwargs={
        "data_b64": "iVBORw0KGgo="}).id
    result = client.wait([job], timeout=60)[job]
    assert result["error"]["code"] == "engine_unavailable"
    assert "never downloaded" in result["error"]["message"]
    assert not (model_dir / "Qwen2-VL-2B-Instruct-4bit").exists()
    assert "engine load failed: mlx-vlm" in worker.log()


def test_worker_loads_a_hub_cache_repo_by_repo_id(start_worker: Callable[..., Worker],
                                                  model_dir: Path, client: OcrClient,
                                                  tmp_path: Path, redis_url: str) -> None:
    """The tiny model stored as a Hugging Face hub cache repo; OCR_MODEL=org/name."""
    import base64

    import redis

    from tasks.models.registry import ModelRegistry
    from tests.model_dirs import copy_into_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"
    repo = copy_into_hub(model_dir / "tiny-qwen2-vl", cache, "test-org/tiny-qwen2-vl", commit)
    (cache / "unrelated.txt").write_text("a flat entry beside the repo")
    # OCR_ENGINE stays `auto`: the repo resolved through refs/main makes this a VLM worker
    worker = start_worker(**MLX_ENV, OCR_MODEL_DIR=str(cache),
                          OCR_MODEL="test-org/tiny-qwen2-vl", OCR_QUEUES="hub-vlm")
    data = base64.b64encode(corpus("scan_tess_phototest.tif").read_bytes()).decode()
    job = client.app.send_task("ocr.document", queue="hub-vlm", kwargs={"data_b64": data}).id
    result = client.wait([job], timeout=240)[job]
    assert result["status"] == "SUCCESS", result
    assert result["engine"]["name"] == "mlx-vlm"
    assert result["engine"]["model"] == "test-org/tiny-qwen2-vl"
    assert isinstance(result["text"], str)
    assert "engine loaded: mlx-vlm model=test-org/tiny-qwen2-vl" in worker.log()
    holders = ModelRegistry(redis.Redis.from_url(redis_url)).loaded()
    assert str(repo / "snapshots" / commit) in {h.path for h in holders}
    assert sorted(os.listdir(cache)) == [".locks", repo.name, "unrelated.txt"]  # no download
