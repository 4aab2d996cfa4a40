"""The vlm-api engine through real workers and a real `python -m mlx_vlm.server`.

The servers run the tiny random-weight qwen2_vl models of devkit/tiny_vlm.py on CPU,
offline: `tiny-stops` ends every read at once (a clean, empty read), the other never
emits its end token (every read stops at the token budget). Workers reach them over
loopback HTTP exactly as they would reach LM Studio, vLLM or SGLang.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.client import OcrClient
from tests.cer import cer
from tests.harness import ROOT, Worker, corpus, eventually, free_port, ground_truth, kill_all
from tests.pdf_fixtures import image_pdf, plain_pages

pytestmark = pytest.mark.slow

OFFLINE = {"MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
WORKER_ENV = {**OFFLINE, "OCR_ENGINE": "vlm-api", "OCR_CACHE_RESULTS": "0",
              "OCR_VLM_MAX_TOKENS": "6", "OCR_VLM_TEMPERATURES": "0,0.2",
              "OCR_VLM_LONGEST_SIDE": "448",
              # The PDF fixtures are plain light pages: the model must see them all.
              "OCR_SKIP_BLANK_PAGES": "0"}
API_KEY = "sk-e2e-never-logged-7d1f"


class InferenceServer:
    """`python -m mlx_vlm.server` on a loopback port, its log in a file."""

    def __init__(self, model: Path, log_dir: Path) -> None:
        self.model = model
        self.port = free_port()
        self.log_dir = log_dir
        self.logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180) -> InferenceServer:
        log = self.log_dir / f"server-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlx_vlm.server", "--model", str(self.model),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT, env={**os.environ, **OFFLINE}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        eventually(self.healthy, timeout,
                   lambda: f"mlx_vlm.server healthy:\n{self.log()[-3000:]}", interval=0.5)
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"mlx_vlm.server exited:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                        timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def log(self, index: int = -1) -> str:
        return self.logs[index].read_text(errors="replace") if self.logs else ""

    def kill(self) -> None:
        """SIGKILL, as when the server crashes: no request is answered any more."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def completed(self, index: int = -1) -> int:
        return self.log(index).count("Request completed")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both tiny models, built in subprocesses (no MLX in the test process)."""
    root = tmp_path_factory.mktemp("vlm-models")
    for name, geometry in (("tiny-stops", ["tiny-stops"]), ("tiny-loops", [])):
        subprocess.run([sys.executable, "-m", "devkit.tiny_vlm", str(root / name), *geometry],
                       cwd=ROOT, check=True, timeout=300, capture_output=True,
                       env={**os.environ, **OFFLINE})
    return root


@pytest.fixture(scope="module")
def servers(models: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Callable[[str], InferenceServer]]:
    running: dict[str, InferenceServer] = {}

    def get(name: str) -> InferenceServer:
        if name not in running:
            running[name] = InferenceServer(models / name,
                                            tmp_path_factory.mktemp("server")).start()
        return running[name]

    yield get
    for server in running.values():
        server.kill()


@pytest.fixture
def api_worker(start_worker: Callable[..., Worker]) -> Iterator[Callable[..., Worker]]:
    """Start this test's vlm-api worker; killed after it (all serve queue ocr-vlm-api)."""
    started: list[Worker] = []

    def start(server: InferenceServer, model: str | None = None, **env: str) -> Worker:
        worker = start_worker(**{**WORKER_ENV, **env}, OCR_VLM_API_URL=server.url,
                              OCR_VLM_API_MODEL=model or str(server.model))
        started.append(worker)
        return worker

    yield start
    kill_all(started)  # its jobs have ended; nothing waits on a warm shutdown


def warned_only_of_silent_pages(result: dict[str, Any]) -> bool:
    """The tiny model stops at once: each page it read no text of says so, nothing else."""
    silent = [p["number"] for p in result["pages"] if not p["text"].strip()]
    return [(w["code"], w["page"]) for w in result["warnings"]] == \
        [("text_missing", n) for n in silent]


def test_a_page_read_through_the_server_carries_its_vlm_record(
        api_worker: Callable[..., Worker], servers: Callable[[str], InferenceServer],
        client: OcrClient) -> None:
    server = servers("tiny-stops")
    # mlx_vlm.server takes any bearer token: the key is sent, never logged or stored.
    worker = api_worker(server, OCR_CONCURRENCY="1", OCR_VLM_API_KEY=API_KEY)
    before = server.completed()
    job = client.submit(corpus("scan_tess_phototest.tif"), engine="vlm-api")
    result = client.wait([job], timeout=180)[job]
    assert result["status"] == "SUCCESS", result
    (page,) = result["pages"]
    vlm = page["vlm"]
    assert vlm["finish_reason"] == "stop" and vlm["tries"] == 1, vlm
    # Token counts are the server's own `usage`: its log says the same for this request.
    assert vlm["prompt_tokens"] > 0
    # The page went at the served model's own grid (its folder's preprocessor_config.json:
    # 28 px cells, at most 56 x 56 px), so `image_size` is what the model saw.
    width, height = vlm["image_size"]
    assert width % 28 == 0 and height % 28 == 0 and width * height <= 56 * 56, vlm
    completed = re.findall(r"Request completed: .*prompt_tokens=(\d+) generated_tokens=(\d+)",
                           server.log())
    assert (str(vlm["prompt_tokens"]), str(vlm["generation_tokens"])) in completed
    assert server.completed() == before + 1
    assert "fallback" not in page and warned_only_of_silent_pages(result), result["warnings"]
    assert result["engine"]["name"] == "vlm-api"
    assert result["engine"]["model"] == str(server.model)
    assert "serves engine queue ocr-vlm-api" in worker.log()
    assert API_KEY not in worker.log() and API_KEY not in json.dumps(result)


def test_a_read_that_never_stops_is_retried_then_read_by_the_fallback(
        api_worker: Callable[..., Worker], servers: Callable[[str], InferenceServer],
        client: OcrClient) -> None:
    server = servers("tiny-loops")
    api_worker(server, OCR_CONCURRENCY="1")
    job = client.submit(corpus("scan_tess_phototest.tif"), engine="vlm-api")
    result = client.wait([job], timeout=240)[job]
    assert result["status"] == "SUCCESS", result
    (page,) = result["pages"]
    assert page["vlm"]["finish_reason"] == "length" and page["vlm"]["tries"] == 2
    assert page["vlm"]["generation_tokens"] == 6  # the token budget, counted by the server
    assert page["fallback"] == {"engine": "tesseract", "reason": "length"}
    assert [w["code"] for w in result["warnings"]] == ["vlm_fallback"]
    assert cer(ground_truth("scan_tess_phototest.tif"), result["text"]) <= 0.05


def test_several_pages_are_in_flight_at_the_server_at_once(
        api_worker: Callable[..., Worker], servers: Callable[[str], InferenceServer],
        client: OcrClient) -> None:
    server = servers("tiny-loops")
    # No OCR_CONCURRENCY: a vlm-api worker is one process with a thread pool of
    # OCR_VLM_API_IN_FLIGHT pages (64 by default); every request states its sampling
    # (top_p; top_k, repetition_penalty, min_p as extra fields) and the server takes it.
    worker = api_worker(server, OCR_VLM_MAX_TOKENS="48",
                        OCR_VLM_TEMPERATURES="0", OCR_AUTO_ROTATE="0", OCR_DESKEW="0")
    job = client.submit(image_pdf(plain_pages(8)), filename="eight.pdf", engine="vlm-api")
    result = client.wait([job], timeout=300)[job]
    assert result["status"] == "SUCCESS", result
    assert len(result["pages"]) == 8
    assert len({p["worker"]["pid"] for p in result["pages"]}) == 1
    assert all(p["vlm"]["finish_reason"] == "length" for p in result["pages"])
    assert "engine vlm-api in a pool of 64 threads" in worker.log(), worker.log()[:2000]
    in_flight = [int(n) for n in re.findall(r"Request started: .*in_flight=(\d+)",
                                            server.log())]
    assert max(in_flight) > 1, in_flight


def test_the_server_killed_mid_job_and_started_again_reads_every_page(
        api_worker: Callable[..., Worker], servers: Callable[[str], InferenceServer],
        client: OcrClient) -> None:
    server = servers("tiny-stops")
    api_worker(server, OCR_CONCURRENCY="1")
    first = len(server.logs) - 1
    before = server.completed(first)
    job = client.submit(image_pdf(plain_pages(8)), filename="eight.pdf", engine="vlm-api")
    eventually(lambda: server.completed(first) != before, 120, "the job's first page read",
               interval=0.05)
    server.kill()  # after the job's first page, before its last
    # Until the new server answers, pages meet a refused connection: the worker takes
    # the server for down, its pages wait (no retry burnt) and go on once it answers.
    server.start()
    result = client.wait([job], timeout=300)[job]
    assert result["status"] == "SUCCESS", [p.get("error") for p in result["pages"]]
    assert server.completed(first) - before < 8  # some pages were left when it died
    assert server.completed() >= 1  # ... and the restarted server read them
    for page in result["pages"]:
        assert page["vlm"]["finish_reason"] == "stop", page
        assert "fallback" not in page
    assert warned_only_of_silent_pages(result), result["warnings"]


def test_a_model_the_server_does_not_have_is_a_coded_error(
        api_worker: Callable[..., Worker], servers: Callable[[str], InferenceServer],
        client: OcrClient) -> None:
    # Last in the module: mlx_vlm.server drops its model when asked for another one.
    server = servers("tiny-loops")
    api_worker(server, model="org/no-such-model", OCR_CONCURRENCY="1")
    job = client.submit(corpus("scan_tess_phototest.tif"), engine="vlm-api")
    result = client.wait([job], timeout=120)[job]
    assert result["status"] == "FAILURE", result
    error = result["error"]
    assert error["code"] == "vlm_api_error" and error["retryable"] is False
    assert "400" in error["message"] and "no-such-model" not in error["message"]
