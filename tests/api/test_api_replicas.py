"""The HTTP API is stateless: any replica answers any job, SSE and cancel included.

What lets deploy/kubernetes run several `ocr-api` pods behind one Service with no
session affinity. Two API processes (the Procfile's `api` line, two ports) on one Redis
with the `control` worker and a real worker whose engine is a fake that holds pages
until the test opens a gate (tests/gated_engine.py): a job sent to replica A is found,
streamed (SSE, to its end) and read on replica B; a job sent to B is cancelled through
A; an Idempotency-Key used on A gives the same job on B.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.api_server import ApiServer, create_token, session
from tests.harness import FAKE_PLUGINS, FAST_PAGES, Worker, eventually
from tests.pdf_fixtures import image_pdf, plain_pages

FINAL = ("SUCCESS", "PARTIAL", "FAILURE", "CANCELLED")


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate")


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], gate: Path) -> Worker:
    start_worker("control")  # cancels are carried out at once, as in the deployment
    return start_worker(OCR_ENGINE="gated",
                        OCR_ENGINE_PLUGINS=f"{FAKE_PLUGINS},gated=tests.gated_engine:GatedEngine",
                        OCR_CONCURRENCY="1", OCR_CACHE_RESULTS="0", OCR_AUTO_ROTATE="0",
                        FAKE_GATE_DIR=str(gate), **FAST_PAGES)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
             worker: Worker) -> Iterator[tuple[ApiServer, ApiServer]]:
    servers = [ApiServer(tmp_path_factory.mktemp("api") / "api.log",
                         {"REDIS_URL": redis_url}) for _ in range(2)]
    try:
        for server in servers:
            server.start()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def _send(http: requests.Session, api: ApiServer, pages: int, **headers: str) -> str:
    answer = http.post(f"{api.url}/v1/jobs", headers=headers, timeout=30, data={"lang": "eng"},
                       files={"file": ("scan.pdf", image_pdf(plain_pages(pages)))})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def _held(gate: Path, count: int) -> None:
    eventually(lambda: len(list(gate.glob("started-*"))) >= count, 120,
               f"{count} pages started", interval=0.05)


def _wait_end(http: requests.Session, api: ApiServer, job_id: str) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def ended() -> dict[str, Any] | None:
        last.update(http.get(f"{api.url}/v1/jobs/{job_id}", timeout=10).json())
        return dict(last) if last["status"] in FINAL else None

    return eventually(ended, 120, lambda: f"job {job_id} to end: {last}")


def test_any_replica_answers_any_job_sse_and_cancel_included(
        replicas: tuple[ApiServer, ApiServer], redis_url: str, gate: Path) -> None:
    a, b = replicas
    http = session(create_token(redis_url, "replicas"))

    job = _send(http, a, 2, **{"Idempotency-Key": "one-job"})
    assert _send(http, b, 2, **{"Idempotency-Key": "one-job"}) == job
    _held(gate, 1)  # its first page is in the worker's hands
    status = http.get(f"{b.url}/v1/jobs/{job}", timeout=10)
    assert status.status_code == 200 and status.json()["status"] == "RUNNING", status.text

    events: list[tuple[str, dict[str, Any]]] = []
    streaming = threading.Event()

    def read_events() -> None:
        with http.get(f"{b.url}/v1/jobs/{job}/events", stream=True, timeout=120) as answer:
            assert answer.status_code == 200
            name = ""
            for line in answer.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
                    streaming.set()

    reader = threading.Thread(target=read_events)
    reader.start()
    assert streaming.wait(60), "no SSE event from replica B"
    (gate / "open").touch()
    reader.join(120)
    assert not reader.is_alive()
    assert events[0][0] == "progress" and events[0][1]["status"] == "RUNNING"
    assert events[-1][0] == "end" and events[-1][1]["status"] == "SUCCESS", events
    text = http.get(f"{b.url}/v1/jobs/{job}/result", timeout=10)
    assert text.status_code == 200 and text.text.count("fake ") == 2

    (gate / "open").unlink()
    other = _send(http, b, 3)
    _held(gate, 3)  # two pages of the first job, then this one's first page
    cancel = http.delete(f"{a.url}/v1/jobs/{other}", timeout=10)
    assert cancel.status_code == 202, cancel.text
    assert _wait_end(http, b, other)["status"] == "CANCELLED"
    (gate / "open").touch()
