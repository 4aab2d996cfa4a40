"""A vlm-api worker (a thread pool) serves the queues it is told, and reads any engine it is told.

Real workers as the Procfile starts them, on one Redis database, against a simulated
inference server (devkit/inference_server.py). The GPU worker is told `ocr-vlm-api`
alone: the default OCR_LANG_ENGINES (`chi_sim=rapidocr`) adds no queue to it, so a job
that names rapidocr is refused at submit (`engine_unavailable`), never taken and ended
as `internal_error`. A second vlm-api worker told `ocr-rapidocr` reads rapidocr jobs in
its threads: the pooled engine (`EnginePool`) answers as the engine does, and its
threads end their tasks while others load engines. A third one, with two fake engines
(tests/gated_engine.py), holds a task's end inside the registry's pass over its engines
while another thread loads an engine: the pass goes on over the engines it began with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devkit.inference_server import SimulatedInferenceServer
from tasks.admission import ocr_queues
from tasks.client import OcrClient
from tasks.errors import EngineUnavailable
from tests.harness import FAKE_PLUGINS, Worker, corpus, eventually

pytestmark = pytest.mark.slow

CHINESE = "lang_chi_sim_page.jpg"
COMMON = {"OCR_CACHE_RESULTS": "0", "OCR_ENGINE": "vlm-api", "OCR_VLM_API_MODEL": "simulated-vlm",
          "OCR_VLM_API_PROBE_SECONDS": "0.5", "OCR_VLM_TEMPERATURES": "0"}
THREADS = 4


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedInferenceServer]:
    running = SimulatedInferenceServer().start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gpu(start_worker: Callable[..., Worker], server: SimulatedInferenceServer) -> Worker:
    return start_worker(**COMMON, OCR_QUEUES="ocr-vlm-api",
                        OCR_VLM_API_URL=server.url)


def node_queues(client: OcrClient, worker: Worker) -> set[str]:
    live = client.live_queues()
    node = next(n for n in live if n.startswith(f"{worker.name}@"))
    return ocr_queues({node: live[node]})


def test_a_vlm_api_worker_serves_only_the_queues_it_is_told(gpu: Worker,
                                                            client: OcrClient) -> None:
    assert node_queues(client, gpu) == {"ocr-vlm-api"}
    assert "ocr-rapidocr" not in gpu.log()


def test_a_job_for_an_engine_no_worker_holds_is_refused_not_taken(gpu: Worker,
                                                                  client: OcrClient) -> None:
    with pytest.raises(EngineUnavailable):
        client.submit(corpus(CHINESE), engine="rapidocr")
    job = client.submit(corpus(CHINESE), engine="vlm-api")
    result = client.wait([job], timeout=240)[job]
    assert result["status"] == "SUCCESS", result


@pytest.fixture(scope="module")
def told_rapidocr(start_worker: Callable[..., Worker], server: SimulatedInferenceServer,
                  gpu: Worker) -> Worker:
    """A vlm-api worker told `ocr-rapidocr` too: rapidocr, not thread-safe, is pooled."""
    return start_worker(**COMMON, OCR_QUEUES="ocr-vlm-api,ocr-rapidocr",
                        OCR_VLM_API_URL=server.url, OCR_CONCURRENCY=str(THREADS))


def test_a_thread_pool_reads_a_pooled_engine_it_is_told(told_rapidocr: Worker,
                                                        client: OcrClient) -> None:
    assert node_queues(client, told_rapidocr) == {"ocr-vlm-api", "ocr-rapidocr"}
    job = client.submit(corpus(CHINESE), engine="rapidocr")  # lang: auto (OCR_LANG)
    result = client.wait([job], timeout=240)[job]
    assert result["status"] == "SUCCESS", result
    assert result["engine"]["name"] == "rapidocr"  # type: ignore[index]


def test_threads_end_their_tasks_while_others_load_engines(told_rapidocr: Worker,
                                                          client: OcrClient) -> None:
    """Every thread busy at once: pooled instances made and engines loaded mid-task."""
    jobs = [client.submit(corpus(CHINESE), engine="rapidocr", lang=lang)
            for lang in ("auto", "chi_sim", "auto", "chi_sim+eng") * 2]
    jobs += [client.submit(corpus(CHINESE), engine="vlm-api") for _ in range(THREADS)]
    results = client.wait(jobs, timeout=600)
    failed = {job: r for job, r in results.items() if r["status"] != "SUCCESS"}
    assert not failed, failed
    assert "dictionary changed size" not in told_rapidocr.log()


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate")


@pytest.fixture(scope="module")
def gated(start_worker: Callable[..., Worker], server: SimulatedInferenceServer,
          gate: Path) -> Worker:
    """A vlm-api worker told the queues of two plugins: `cache-gated` and `fake`."""
    plugins = f"{FAKE_PLUGINS},cache-gated=tests.gated_engine:CacheGatedEngine"
    return start_worker(**COMMON, OCR_QUEUES="ocr-cache-gated,ocr-fake",
                        OCR_ENGINE_PLUGINS=plugins, FAKE_GATE_DIR=str(gate),
                        OCR_VLM_API_URL=server.url, OCR_CONCURRENCY="2")


def test_a_task_ends_while_another_thread_loads_an_engine(gated: Worker, gate: Path,
                                                          client: OcrClient) -> None:
    first = client.submit(corpus(CHINESE), engine="cache-gated")
    assert client.wait([first], timeout=240)[first]["status"] == "SUCCESS"
    eventually(lambda: any(gate.glob("releasing-*")), 120, "the first task's end")
    second = client.submit(corpus(CHINESE), engine="fake")  # loaded meanwhile
    assert client.wait([second], timeout=240)[second]["status"] == "SUCCESS"
    (gate / "open").touch()
    # Two threads: these two start once the held ends are over, and end after them.
    after = [client.submit(corpus(CHINESE), engine="fake") for _ in range(2)]
    assert all(r["status"] == "SUCCESS" for r in client.wait(after, timeout=240).values())
    assert "RuntimeError" not in gated.log(), gated.log()[-3000:]
