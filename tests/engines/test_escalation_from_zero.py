"""A GPU pool that scales from zero: its jobs and escalated pages wait for its first worker.

The fleet of the Kubernetes kit's GPU overlay, on one host: a tesseract worker (the CPU
pool, OCR_ESCALATE_ENGINE=vlm-api) and no vlm-api worker, with OCR_ENGINES_FROM_ZERO=
vlm-api on the CPU pool, the API and the client. The Procfile's `metrics` process
serves the figure KEDA wakes the pool on (/v1/queues/ocr-vlm-api/depth). A vlm-api
worker whose OCR_VLM_API_URL is a simulated inference server
(devkit/inference_server.py) is started once the jobs wait.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from devkit.inference_server import SimulatedInferenceServer
from tasks.client import OcrClient
from tasks.errors import EngineUnavailable
from tasks.metrics.queue_depth import QueueDepth
from tasks.queue.celery_config import celery_config
from tasks.settings import Settings
from tests.api_server import ApiServer, create_token, session
from tests.engines.test_escalation import clean_scan, png, unsure_scan
from tests.harness import (
    ROOT,
    ProcfileProcess,
    Worker,
    eventually,
    free_port,
    kill_all,
    make_client,
)

pytestmark = pytest.mark.slow

FROM_ZERO = {"OCR_ENGINES_FROM_ZERO": "vlm-api"}
COMMON = {"OCR_CACHE_RESULTS": "0", "OCR_AUTO_ROTATE": "0", "OCR_DESKEW": "0"}
# The module's pages wait this long for the pool: it comes well within it.
WAIT = 300


def gpu_env(server: SimulatedInferenceServer) -> dict[str, str]:
    """A vlm-api worker of the GPU pool (its own queue alone), on the simulated server."""
    return {**COMMON, "OCR_ENGINE": "vlm-api", "OCR_QUEUES": "ocr-vlm-api",
            "OCR_VLM_API_URL": server.url, "OCR_VLM_API_MODEL": "simulated-vlm",
            "OCR_VLM_API_PROBE_SECONDS": "0.5", "OCR_VLM_TEMPERATURES": "0"}


def cpu_env(wait: float) -> dict[str, str]:
    """A worker of the CPU pool: it escalates unsure pages to the GPU pool from zero."""
    return {**COMMON, **FROM_ZERO, "OCR_ENGINE": "tesseract", "OCR_ESCALATE_ENGINE":
            "vlm-api", "OCR_ESCALATE_WAIT_SECONDS": str(wait)}


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedInferenceServer]:
    simulator = SimulatedInferenceServer().start()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def cpu(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**cpu_env(WAIT))


@pytest.fixture(scope="module")
def zero_client(redis_url: str) -> Iterator[OcrClient]:
    """A client of the fleet: it knows the pool that scales from zero."""
    ocr = make_client(redis_url, **FROM_ZERO)
    yield ocr
    ocr.close()


@pytest.fixture(scope="module")
def depth(redis_url: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Callable[[], int]]:
    """The figure KEDA scales the GPU pool on, asked of the Procfile's `metrics` process."""
    port = free_port()
    process = ProcfileProcess("metrics", tmp_path_factory.mktemp("metrics") / "m.log",
                              {"REDIS_URL": redis_url, "METRICS_PORT": str(port)})
    process.spawn()

    def read() -> int:
        url = f"http://127.0.0.1:{port}/v1/queues/ocr-vlm-api/depth"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(json.loads(answer.read())["value"])

    try:
        process.wait_until(lambda: "metrics: serving" in process.log(), 60, "serving")
        yield read
    finally:
        process.stop()


@pytest.fixture(scope="module")
def waiting(cpu: Worker, zero_client: OcrClient) -> dict[str, str]:
    """A vlm-api job and an escalating one, sent while no vlm-api worker is live."""
    assert not any("ocr-vlm-api" in queues for queues in zero_client.live_queues().values())
    return {
        "vlm": zero_client.submit(png(clean_scan()), filename="clean.png", engine="vlm-api"),
        "escalating": zero_client.submit(png(unsure_scan()), filename="unsure.png",
                                         engine="tesseract", escalate="vlm-api",
                                         escalate_below=0.7),
    }


def test_jobs_for_a_pool_at_zero_are_accepted_and_counted(
        waiting: dict[str, str], depth: Callable[[], int], zero_client: OcrClient,
        start_api: Callable[..., ApiServer], redis_url: str, tmp_path: Path) -> None:
    # The vlm-api job, and the escalated page once tesseract read it first.
    eventually(lambda: depth() == 2, 120, lambda: f"depth {depth()}, not 2")
    statuses = zero_client.status(waiting["escalating"]), zero_client.status(waiting["vlm"])
    assert not any(status.final for status in statuses), statuses
    # submit.py says why the job waits: the engine, its pool scaling from zero.
    done = subprocess.run(
        [sys.executable, "submit.py", "status", "--json", waiting["vlm"]], cwd=ROOT,
        capture_output=True, text=True, timeout=120,
        env={**os.environ, **FROM_ZERO, "REDIS_URL": redis_url})
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["error"]["code"] == "scaling_from_zero", record
    assert "'vlm-api'" in record["error"]["message"], record
    assert "scaling from zero" in record["error"]["message"], record
    # So does the API, and its readiness names the engine beside the live ones.
    api = start_api(**FROM_ZERO)
    http = session(create_token(redis_url, "from-zero"))
    sent = http.post(f"{api.url}/v1/jobs", timeout=30, data={"engine": "vlm-api"},
                     files={"file": ("clean.png", png(clean_scan()), "image/png")})
    assert sent.status_code == 202, sent.text
    shown = http.get(f"{api.url}/v1/jobs/{sent.json()['id']}", timeout=30).json()
    assert shown["status"] == "QUEUED", shown
    assert shown["error"]["code"] == "scaling_from_zero", shown

    def answered() -> requests.Response | None:
        answer = http.get(f"{api.url}/readyz", params={"queue": "ocr-vlm-api"}, timeout=30)
        return answer if answer.status_code == 200 else None

    ready = eventually(answered, 30, "the queue of the pool at zero ready")
    assert "scaling from zero" in ready.json()["message"], ready.json()
    assert ready.json()["engines_from_zero"] == ["vlm-api"], ready.json()
    assert "tesseract" in ready.json()["engines"], ready.json()
    assert "vlm-api" not in ready.json()["engines"], ready.json()
    waiting["api"] = sent.json()["id"]


def test_an_engine_neither_live_nor_declared_is_refused_as_before(
        cpu: Worker, zero_client: OcrClient) -> None:
    for engine, escalate in (("mlx-vlm", None), ("tesseract", "mlx-vlm")):
        with pytest.raises(EngineUnavailable, match="no live worker runs engine"):
            zero_client.submit(png(clean_scan()), filename="x.png", engine=engine,
                               escalate=escalate)


def test_a_worker_started_afterwards_reads_them(
        waiting: dict[str, str], depth: Callable[[], int], zero_client: OcrClient,
        start_worker: Callable[..., Worker], server: SimulatedInferenceServer) -> None:
    start_worker(**gpu_env(server))
    results = zero_client.wait(list(waiting.values()), timeout=300)
    assert all(r["status"] == "SUCCESS" for r in results.values()), results
    (read,) = results[waiting["vlm"]]["pages"]
    assert read["engine"] == "vlm-api" and read["text"] == server.text, read
    (page,) = results[waiting["escalating"]]["pages"]
    assert page["engine"] == "vlm-api" and page["text"] == server.text, page
    assert page["escalation"]["from"] == "tesseract" and "error" not in page["escalation"]
    eventually(lambda: depth() == 0, 60, lambda: f"depth {depth()}, not 0")


def broker_depth(redis_url: str) -> int:
    """The pages waiting in or held from `ocr-vlm-api`, as the metrics process counts them."""
    options = celery_config(Settings.from_env({"REDIS_URL": redis_url}))
    reader = QueueDepth(redis.Redis.from_url(redis_url), options["broker_transport_options"])
    return reader.depth(["ocr-vlm-api"]).value


def test_a_pool_that_never_comes_leaves_the_first_reading(
        own_redis_url: str, server: SimulatedInferenceServer, tmp_path: Path) -> None:
    # A Redis database of its own: no vlm-api worker is live there, and none comes
    # within the CPU pool's OCR_ESCALATE_WAIT_SECONDS.
    worker = Worker(tmp_path / "cpu.log", {"REDIS_URL": own_redis_url, **cpu_env(3)})
    gpu = Worker(tmp_path / "gpu.log", {"REDIS_URL": own_redis_url, **gpu_env(server)})
    ocr = make_client(own_redis_url, **FROM_ZERO)
    try:
        worker.start()
        job = ocr.submit(png(unsure_scan()), filename="unsure.png", engine="tesseract",
                         escalate="vlm-api", escalate_below=0.7)
        result: dict[str, Any] = ocr.wait([job], timeout=300)[job]
        assert result["status"] == "SUCCESS", result
        (page,) = result["pages"]
        assert page["engine"] == "tesseract" and page["text"] != server.text, page
        assert page["escalation"]["to"] == "vlm-api", page
        assert page["escalation"]["error"]["code"] == "timeout", page
        # The pool comes late: the page's second reading is dropped, never asked for.
        assert broker_depth(own_redis_url) == 1
        asked = len(server.requests)
        gpu.start()
        eventually(lambda: broker_depth(own_redis_url) == 0, 120, "the late page taken")
        assert len(server.requests) == asked
        assert ocr.wait([job], timeout=10)[job]["pages"] == result["pages"]
    finally:
        ocr.close()
        kill_all([worker, gpu])


def test_a_client_past_its_engine_cap_keeps_first_readings(
        zero_client: OcrClient, redis_url: str,
        start_api: Callable[..., ApiServer], server: SimulatedInferenceServer) -> None:
    # After the pool came (the test above): one vlm-api page a day for this client.
    api = start_api(**FROM_ZERO)
    token = create_token(redis_url, "capped", "--engine-pages-per-day", "vlm-api=1",
                         "--engine-pages-per-day", "rapidocr=50")
    http = session(token)

    def escalating() -> dict[str, Any]:
        sent = http.post(f"{api.url}/v1/jobs", timeout=30, files={
            "file": ("unsure.png", png(unsure_scan()), "image/png")}, data={
            "engine": "tesseract", "escalate": "vlm-api", "escalate_below": "0.7"})
        assert sent.status_code == 202, sent.text
        job = sent.json()["id"]
        result = zero_client.wait([job], timeout=300)[job]
        assert result["status"] == "SUCCESS", result
        return dict(result["pages"][0])

    read = escalating()
    assert read["engine"] == "vlm-api" and read["text"] == server.text, read
    kept = escalating()  # past the cap: the first reading, and why
    assert kept["engine"] == "tesseract" and kept["text"] != server.text, kept
    assert kept["escalation"]["error"]["code"] == "page_quota_exceeded", kept
    assert "vlm-api" in kept["escalation"]["error"]["message"], kept
    # A job naming the engine is refused at the door, as a cap on all pages refuses.
    refused = http.post(f"{api.url}/v1/jobs", timeout=30, data={"engine": "vlm-api"},
                        files={"file": ("clean.png", png(clean_scan()), "image/png")})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "page_quota_exceeded", refused.json()
    # The GPU pages, shown: ocr_admin.py usage, GET /v1/usage and the console.
    done = subprocess.run(
        [sys.executable, "ocr_admin.py", "--redis-url", redis_url, "usage", "--client",
         "capped"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)["clients"]
    assert report["engines"] == {"tesseract": 2, "vlm-api": 1}, report
    assert report["engine_pages_per_day"] == {"rapidocr": 50, "vlm-api": 1}, report
    usage = http.get(f"{api.url}/v1/usage", timeout=30).json()
    assert usage["engines_today"] == {"tesseract": 2, "vlm-api": 1}, usage
    assert usage["engine_pages_per_day"] == {"rapidocr": 50, "vlm-api": 1}, usage
    browser = requests.Session()
    assert browser.post(f"{api.url}/console/signin", data={"token": token},
                        headers={"Origin": api.url}, allow_redirects=False,
                        timeout=60).status_code == 303
    page = browser.get(f"{api.url}/console/usage", timeout=30).text
    (row,) = re.findall(r'<tr data-engine="vlm-api">(.*?)</tr>', page, re.S)
    assert re.findall(r"<td>(.*?)</td>", row) == ["vlm-api", "1", "1", "1"], row
    # The cap raised: the engine's jobs are admitted again.
    raised = subprocess.run(
        [sys.executable, "ocr_admin.py", "--redis-url", redis_url, "tokens", "set",
         "capped", "--engine-pages-per-day", "vlm-api=0", "--json"], cwd=ROOT,
        capture_output=True, text=True, timeout=120)
    assert raised.returncode == 0, raised.stderr
    assert json.loads(raised.stdout)["engine_pages_per_day"] == {"rapidocr": 50}
    again = http.post(f"{api.url}/v1/jobs", timeout=30, data={"engine": "vlm-api"},
                      files={"file": ("clean.png", png(clean_scan()), "image/png")})
    assert again.status_code == 202, again.text
