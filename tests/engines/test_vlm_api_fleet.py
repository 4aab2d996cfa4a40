"""A vlm-api worker against a simulated inference server, through real workers.

The server is `SimulatedInferenceServer` (devkit/inference_server.py): a simulator of an
OpenAI-compatible server in this test's process, no model behind it; it answers any
number of requests at once and keeps what it was asked. The worker is the Procfile's
`worker` line with OCR_ENGINE=vlm-api: one process, a thread pool of
OCR_VLM_API_IN_FLIGHT pages. No test asserts a duration: the simulator holds its
answers until the pages it waits for have arrived, and waits are for log lines and
results.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from devkit.inference_server import SimulatedInferenceServer
from tasks.client import OcrClient
from tests.harness import Worker, eventually, free_port, kill_all
from tests.pdf_fixtures import image_pdf, plain_pages

pytestmark = pytest.mark.slow

WORKER_ENV = {"OCR_ENGINE": "vlm-api", "OCR_VLM_API_MODEL": "simulated-vlm",
              "OCR_CACHE_RESULTS": "0", "OCR_AUTO_ROTATE": "0", "OCR_DESKEW": "0",
              "OCR_SKIP_BLANK_PAGES": "0", "OCR_VLM_TEMPERATURES": "0,0.2"}


@pytest.fixture
def simulator() -> Iterator[Callable[..., SimulatedInferenceServer]]:
    made: list[SimulatedInferenceServer] = []

    def make(**kwargs: object) -> SimulatedInferenceServer:
        server = SimulatedInferenceServer(**kwargs)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def fleet_worker(start_worker: Callable[..., Worker]) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(server: SimulatedInferenceServer, **env: str) -> Worker:
        worker = start_worker(**{**WORKER_ENV, **env}, OCR_VLM_API_URL=server.url)
        started.append(worker)
        return worker

    yield start
    kill_all(started)  # its jobs have ended; nothing waits on a warm shutdown


def wait_for_log(worker: Worker, pattern: str, timeout: float = 120) -> None:
    eventually(lambda: re.search(pattern, worker.log()), timeout,
               lambda: f"{pattern!r} in:\n{worker.log()[-3000:]}")


def counter(redis_url: str, metric: str) -> float:
    """The sum of a counter over every worker node of this test's database."""
    client = redis.Redis.from_url(redis_url)
    total = 0.0
    for key in client.scan_iter("ocr:metrics:node:*"):
        for field, value in client.hgetall(key).items():
            if json.loads(field)[0] == metric:
                total += float(value)
    return total


def test_one_worker_keeps_64_pages_in_flight(
        fleet_worker: Callable[..., Worker],
        simulator: Callable[..., SimulatedInferenceServer], client: OcrClient) -> None:
    # No answer until 64 requests wait at once: the job only ends early if they did.
    server = simulator()
    server.hold_until = 64
    server.start()
    worker = fleet_worker(server)
    job = client.submit(image_pdf(plain_pages(64)), filename="sixty-four.pdf",
                        engine="vlm-api")
    result = client.wait([job], timeout=600)[job]
    assert result["status"] == "SUCCESS", result.get("error")
    assert server.most_in_flight == 64
    assert len(server.requests) == 64
    pages = result["pages"]
    assert len(pages) == 64 and len({p["worker"]["pid"] for p in pages}) == 1
    assert all(p["text"] == server.text and "fallback" not in p for p in pages)
    assert all(p["vlm"]["generation_tokens"] == 6 for p in pages)  # the server's usage
    assert "reads with engine vlm-api in a pool of 64 threads" in worker.log()
    # No page needed tesseract (no orientation check, no fallback): it never loaded.
    assert "engine loaded: tesseract" not in worker.log()
    for body in server.requests:  # every request states its sampling
        assert (body["temperature"], body["top_p"], body["top_k"]) == (0.0, 1.0, -1)
        assert (body["repetition_penalty"], body["min_p"]) == (1.0, 0.0)
        assert body["stream_options"] == {"include_usage": True}


def test_a_server_down_when_pages_arrive_reads_them_all_once_it_is_up(
        fleet_worker: Callable[..., Worker],
        simulator: Callable[..., SimulatedInferenceServer], client: OcrClient,
        redis_url: str) -> None:
    probe = 0.5
    server = simulator(port=free_port())  # not started: nothing listens on its port
    worker = fleet_worker(server, OCR_VLM_API_PROBE_SECONDS=str(probe),
                          OCR_VLM_API_IN_FLIGHT="8")
    job = client.submit(image_pdf(plain_pages(12)), filename="twelve.pdf",
                        engine="vlm-api")
    wait_for_log(worker, r"is down or loading")
    # The outage's length itself: the server stays down for many looks at it (a GPU
    # server loading a model for minutes, scaled to the probe interval), then comes up.
    time.sleep(8 * probe)
    status = client.status(job)
    assert not status.final and status.done == 0, status  # the pages wait, none failed
    server.start()
    result = client.wait([job], timeout=300)[job]
    assert result["status"] == "SUCCESS", [p.get("error") for p in result["pages"]]
    assert len(server.requests) == 12  # each page sent once it was up, none lost
    for page in result["pages"]:
        assert page["vlm"]["finish_reason"] == "stop" and "fallback" not in page, page
        assert page["text"] == server.text
    assert result["warnings"] == []
    wait_for_log(worker, r"answers again after \d+ s")
    eventually(lambda: counter(redis_url, "ocr_vlm_server_outages_total") >= 1, 10,
               "the outage counted (a process writes its counts within a second)")


def test_an_aborted_answer_sends_the_page_again(
        fleet_worker: Callable[..., Worker],
        simulator: Callable[..., SimulatedInferenceServer], client: OcrClient) -> None:
    server = simulator()
    server.abort_first = 1
    server.start()
    fleet_worker(server)
    job = client.submit(image_pdf(plain_pages(2)), filename="two.pdf", engine="vlm-api")
    result = client.wait([job], timeout=300)[job]
    assert result["status"] == "SUCCESS", result
    assert len(server.requests) == 3  # two pages, one of them twice
    for page in result["pages"]:
        assert page["vlm"]["finish_reason"] == "stop" and "fallback" not in page, page
        assert page["text"] == server.text


def test_merged_deltas_read_whole_and_loops_are_still_caught(
        fleet_worker: Callable[..., Worker],
        simulator: Callable[..., SimulatedInferenceServer], client: OcrClient) -> None:
    server = simulator(text="A longer page, read by the simulated server in merged deltas.")
    server.chars_per_delta = 9  # several tokens' text in each delta, cut mid-word
    server.start()
    fleet_worker(server, OCR_VLM_MAX_TOKENS="100000")
    job = client.submit(image_pdf(plain_pages(1)), filename="one.pdf", engine="vlm-api")
    (page,) = client.wait([job], timeout=300)[job]["pages"]
    assert page["text"] == server.text and page["vlm"]["finish_reason"] == "stop"
    assert page["vlm"]["generation_tokens"] == len(server.text.split(" "))  # usage
    server.text = "| row | again |" * 400  # a loop, in merged deltas
    job = client.submit(image_pdf(plain_pages(1)), filename="loop.pdf", engine="vlm-api")
    (page,) = client.wait([job], timeout=300)[job]["pages"]
    assert page["vlm"]["finish_reason"] == "repetition" and page["vlm"]["tries"] == 2
    assert page["fallback"] == {"engine": "tesseract", "reason": "repetition"}


def test_a_server_that_never_answers_is_bounded(
        fleet_worker: Callable[..., Worker],
        simulator: Callable[..., SimulatedInferenceServer], client: OcrClient) -> None:
    server = simulator()
    server.silent = True  # takes the request, answers /v1/models, never the page
    server.start()
    fleet_worker(server, OCR_VLM_API_TIMEOUT="3", OCR_VLM_API_RETRY_SECONDS="1")
    job = client.submit(image_pdf(plain_pages(1)), filename="one.pdf", engine="vlm-api")
    result = client.wait([job], timeout=300)[job]
    assert result["status"] == "FAILURE", result
    # Its one page ended as transient (never read by the fallback): the job failed.
    assert result["error"]["code"] == "transient" and result["error"]["retryable"], result
    assert len(server.requests) == 1  # no retry left in 1 s of OCR_VLM_API_RETRY_SECONDS


def test_cancel_and_deadline_end_pages_that_wait_at_the_server(
        fleet_worker: Callable[..., Worker],
        simulator: Callable[..., SimulatedInferenceServer], client: OcrClient) -> None:
    server = simulator()
    server.hold_until = 10**6  # holds every answer until released
    server.start()
    worker = fleet_worker(server)
    # Celery enforces no time limit in a thread pool, nor kills a running thread: the
    # job's end comes from the cancel and the page clock, and late pages leave nothing.
    job = client.submit(image_pdf(plain_pages(4)), filename="four.pdf", engine="vlm-api")
    eventually(lambda: server.in_flight >= 4, 120, "the four pages at the server",
               interval=0.05)
    assert client.cancel([job]) == {job: "cancelled"}
    assert client.wait([job], timeout=60)[job]["status"] == "CANCELLED"
    late = client.submit(image_pdf(plain_pages(2)), filename="late.pdf", engine="vlm-api",
                         deadline=3)
    result = client.wait([late], timeout=120)[late]
    assert result["status"] == "FAILURE", result
    assert "deadline_exceeded" in json.dumps(result), result
    server.release()
    follow = client.submit(image_pdf(plain_pages(1)), filename="next.pdf", engine="vlm-api")
    assert client.wait([follow], timeout=120)[follow]["status"] == "SUCCESS"
    eventually(lambda: not server.in_flight, 120, "the held pages' end", interval=0.05)
    store = client.app.backend.client
    assert not store.keys(f"ocr:doc:{job}:*") and not store.keys(f"ocr:doc:{late}:*")
    assert "pidbox command error" not in worker.log()  # a thread is not killed: no error
