"""Escalation: tesseract reads every page, a vlm-api worker reads again the unsure ones.

Real workers as the Procfile starts them: a tesseract worker (OCR_ESCALATE_ENGINE=vlm-api,
the fleet's default) and a vlm-api worker whose OCR_VLM_API_URL is a simulated
inference server (devkit/inference_server.py: it answers every page with its fixed text).
The unsure page is a blurred, low-resolution copy of a clean corpus scan, made here with
Pillow: tesseract reads it with a mean word confidence near 0.4, the clean scan near 0.9.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymupdf
import pytest
import redis
import requests
from PIL import Image, ImageFilter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from devkit.inference_server import SimulatedInferenceServer
from tasks.client import OcrClient
from tasks.errors import EngineUnavailable
from tasks.metrics.metrics_collector import RedisCollector
from tasks.state.stores import new_blob_key
from tests.api_server import ApiServer, create_token, session
from tests.harness import ROOT, Worker, corpus, eventually, sent_past_the_gate
from tests.pdf_fixtures import image_pdf

pytestmark = pytest.mark.slow

# An escalated page waits this long for its second reading (set on the tesseract
# worker, which sends it): the server-down test waits it out.
WAIT = 20
COMMON = {"OCR_CACHE_RESULTS": "0", "OCR_AUTO_ROTATE": "0", "OCR_DESKEW": "0"}


class Server:
    """The module's simulated inference server, which a test may stop and start again."""

    def __init__(self) -> None:
        self.now = SimulatedInferenceServer().start()

    def restart(self) -> None:
        self.now = SimulatedInferenceServer(port=self.now.port).start()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    held = Server()
    yield held
    held.now.stop()


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., Worker], server: Server) -> tuple[Worker, Worker]:
    cpu = start_worker(**COMMON, OCR_ENGINE="tesseract", OCR_ESCALATE_ENGINE="vlm-api",
                       OCR_ESCALATE_WAIT_SECONDS=str(WAIT))
    # Not on the `ocr` queue: jobs that name no engine are the tesseract pool's.
    gpu = start_worker(**COMMON, OCR_ENGINE="vlm-api", OCR_QUEUES="ocr-vlm-api",
                       OCR_VLM_API_URL=server.now.url, OCR_VLM_API_MODEL="simulated-vlm",
                       OCR_VLM_API_PROBE_SECONDS="0.5", OCR_VLM_TEMPERATURES="0")
    return cpu, gpu


def clean_scan() -> Image.Image:
    return Image.open(corpus("scan_tess_phototest.tif")).convert("L")


def unsure_scan() -> Image.Image:
    """The clean scan at a quarter of its size, blurred: tesseract is unsure of it."""
    clean = clean_scan()
    small = clean.resize((clean.width // 4, clean.height // 4), Image.Resampling.BILINEAR)
    return small.filter(ImageFilter.GaussianBlur(1.2))


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def scans_pdf() -> bytes:
    """Page 1 the clean scan, page 2 the unsure copy, a quarter of its size."""
    return image_pdf([clean_scan(), unsure_scan()], dpi=72)


def text_and_scan_pdf() -> bytes:
    """Page 1 has a text layer, page 2 is the unsure scan."""
    doc = pymupdf.open(stream=scans_pdf(), filetype="pdf")
    doc.delete_page(0)
    page = doc.new_page(0, width=612, height=792)
    page.insert_text((72, 100), "A born-digital page: its text layer is its text.",
                     fontsize=12)
    return bytes(doc.tobytes(garbage=3, deflate=True))


def read(client: OcrClient, data: bytes, name: str, **options: Any) -> dict[str, Any]:
    job = client.submit(data, filename=name, engine="tesseract", **options)
    result = client.wait([job], timeout=300)[job]
    assert result["status"] == "SUCCESS", result
    return result


def escalated(redis_url: str) -> dict[tuple[str, str, str], float]:
    """`ocr_pages_escalated_total` as the metrics exporter serves it, by (from, to, reason).

    Summed over the worker nodes (its `node` label).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(redis.Redis.from_url(redis_url)))
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == "ocr_pages_escalated_total":
                at = (sample.labels["from"], sample.labels["to"], sample.labels["reason"])
                counts[at] = counts.get(at, 0.0) + sample.value
    return counts


def test_a_clean_page_is_kept_and_an_unsure_one_is_read_again(
        workers: tuple[Worker, Worker], server: Server, client: OcrClient,
        redis_url: str) -> None:
    asked = len(server.now.requests)
    result = read(client, scans_pdf(), "two.pdf", escalate="vlm-api", escalate_below=0.7)
    clean, unsure = result["pages"]
    assert clean["engine"] == "tesseract" and "escalation" not in clean, clean
    assert clean["confidence"] >= 70
    assert unsure["engine"] == "vlm-api" and unsure["text"] == server.now.text, unsure
    assert unsure["escalation"]["confidence"] < 0.7, unsure
    assert unsure["escalation"] == {"from": "tesseract", "to": "vlm-api",
                                    "reason": "low_confidence",
                                    "confidence": unsure["escalation"]["confidence"],
                                    "first_text": unsure["escalation"]["first_text"]}
    assert unsure["escalation"]["first_text"] != server.now.text  # tesseract's own
    # The model's words on the first reading's boxes.
    assert unsure["text_layer"]["boxes"] == "tesseract"
    assert " ".join(w["text"] for w in unsure["words"]) == server.now.text
    assert result["engine"]["names"] == ["tesseract", "vlm-api"], result["engine"]
    assert len(server.now.requests) == asked + 1  # the unsure page alone went to the server
    eventually(lambda: escalated(redis_url).get(("tesseract", "vlm-api", "low_confidence")),
               10, "the escalated page counted (a process writes its counts within a second)")


def test_an_unsure_image_escalates_by_the_fleets_defaults(
        workers: tuple[Worker, Worker], server: Server, client: OcrClient) -> None:
    # Neither `escalate` nor `escalate_below`: OCR_ESCALATE_ENGINE and its 0.85.
    result = read(client, png(unsure_scan()), "unsure.png")
    (page,) = result["pages"]
    assert page["text"] == server.now.text and page["engine"] == "vlm-api", page
    assert page["escalation"]["from"] == "tesseract" and "error" not in page["escalation"]
    assert result["engine"]["names"] == ["tesseract", "vlm-api"]
    clean = read(client, png(clean_scan()), "clean.png")["pages"][0]
    assert clean["engine"] == "tesseract" and "escalation" not in clean, clean


def test_threshold_0_sends_no_page_and_1_every_ocr_page(
        workers: tuple[Worker, Worker], server: Server, client: OcrClient) -> None:
    asked = len(server.now.requests)
    none = read(client, scans_pdf(), "none.pdf", escalate_below=0)
    assert all("escalation" not in p and p["engine"] == "tesseract" for p in none["pages"])
    assert len(server.now.requests) == asked
    every = read(client, scans_pdf(), "every.pdf", escalate="vlm-api", escalate_below=1)
    assert [p["escalation"]["reason"] for p in every["pages"]] == ["low_confidence"] * 2
    assert all(p["engine"] == "vlm-api" for p in every["pages"]), every["pages"]
    assert len(server.now.requests) == asked + 2


def test_text_layer_pages_never_escalate(
        workers: tuple[Worker, Worker], server: Server, client: OcrClient) -> None:
    result = read(client, text_and_scan_pdf(), "mixed.pdf", escalate_below=1)
    layer, scan = result["pages"]
    assert layer["source"] == "text-layer" and "escalation" not in layer, layer
    assert "born-digital" in layer["text"]
    assert scan["engine"] == "vlm-api" and scan["escalation"]["to"] == "vlm-api", scan


def test_the_http_api_takes_the_options(
        workers: tuple[Worker, Worker], server: Server, client: OcrClient,
        start_api: Callable[..., ApiServer], redis_url: str) -> None:
    api = start_api()
    http = session(create_token(redis_url, "escalating"))

    def send(**fields: str) -> requests.Response:
        return http.post(f"{api.url}/v1/jobs", timeout=30, data=fields,
                         files={"file": ("unsure.png", png(unsure_scan()), "image/png")})

    sent = send(engine="tesseract", escalate="vlm-api", escalate_below="0.7")
    assert sent.status_code == 202, sent.text
    job = sent.json()["id"]
    (page,) = client.wait([job], timeout=300)[job]["pages"]
    assert page["engine"] == "vlm-api" and page["escalation"]["to"] == "vlm-api", page
    assert send(escalate_below="1.5").status_code == 422
    refused = send(escalate="tesseract")  # no vision-language engine
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_request"


def test_submit_py_takes_the_options(
        workers: tuple[Worker, Worker], server: Server, redis_url: str,
        tmp_path: Path) -> None:
    scan = tmp_path / "unsure.png"
    scan.write_bytes(png(unsure_scan()))
    done = subprocess.run(
        [sys.executable, "submit.py", "--json", "--engine", "tesseract", "--escalate",
         "vlm-api", "--escalate-below", "0.7", str(scan)], cwd=ROOT, capture_output=True,
        text=True, timeout=300, env={**os.environ, "REDIS_URL": redis_url})
    assert done.returncode == 0, done.stderr
    (page,) = json.loads(done.stdout)["pages"]
    assert page["engine"] == "vlm-api" and page["escalation"]["from"] == "tesseract", page


def test_an_engine_no_worker_runs_is_refused_at_the_door(
        workers: tuple[Worker, Worker], client: OcrClient) -> None:
    with pytest.raises(EngineUnavailable):
        client.submit(png(unsure_scan()), filename="x.png", engine="tesseract",
                      escalate="mlx-vlm")


def test_an_escalation_engine_no_worker_runs_keeps_the_first_reading(
        workers: tuple[Worker, Worker], client: OcrClient) -> None:
    # Sent past the door, as a stock Celery sender does: the worker finds no live worker
    # of mlx-vlm and keeps the page's first reading.
    job = sent_past_the_gate(client, {"blob": new_blob_key(), "filename": "x.png",
                                      "engine": "tesseract", "escalate": "mlx-vlm"},
                             input=png(unsure_scan()))
    result = client.wait([job], timeout=300)[job]
    assert result["status"] == "SUCCESS", result
    (page,) = result["pages"]
    assert page["engine"] == "tesseract", page
    assert page["escalation"]["to"] == "mlx-vlm", page
    assert page["escalation"]["error"]["code"] == "engine_unavailable", page


def test_cancel_and_deadline_reach_a_page_at_the_server(
        workers: tuple[Worker, Worker], server: Server, client: OcrClient) -> None:
    simulator = server.now
    simulator.hold_until = 10**6  # holds every answer until released
    try:
        job = client.submit(scans_pdf(), filename="cancel.pdf", engine="tesseract",
                            escalate_below=0.7)
        eventually(lambda: simulator.in_flight >= 1, 120, "the unsure page at the server",
                   interval=0.05)
        assert client.cancel([job]) == {job: "cancelled"}
        cancelled = client.wait([job], timeout=60)[job]
        assert cancelled["status"] == "CANCELLED", cancelled
        # The deadline stops the second reading: the page keeps its first.
        late = client.submit(png(unsure_scan()), filename="late.png", engine="tesseract",
                             deadline=8)
        result = client.wait([late], timeout=120)[late]
        assert result["status"] == "SUCCESS", result
        (page,) = result["pages"]
        assert page["engine"] == "tesseract", page
        assert page["escalation"]["error"]["code"] == "deadline_exceeded", page
    finally:
        simulator.release()


def test_a_server_down_past_the_bound_keeps_the_first_reading(
        workers: tuple[Worker, Worker], server: Server, client: OcrClient) -> None:
    server.now.stop()  # nothing listens on its port: the server is down
    try:
        result = read(client, png(unsure_scan()), "down.png")
        (page,) = result["pages"]
        assert page["engine"] == "tesseract" and page["text"] != server.now.text, page
        assert page["escalation"]["error"]["code"] == "timeout", page
        assert result["engine"]["name"] == "tesseract" and "names" not in result["engine"]
    finally:
        server.restart()


def test_a_page_no_worker_takes_keeps_its_first_reading_when_its_wait_is_over(
        workers: tuple[Worker, Worker], server: Server, client: OcrClient) -> None:
    _, gpu = workers
    assert gpu.proc is not None
    # A GPU host that hangs: alive by its last heartbeat when the page goes, it never
    # takes it. The page's `ocr.escalation_due` keeps the first reading.
    os.killpg(gpu.proc.pid, signal.SIGSTOP)
    try:
        result = read(client, png(unsure_scan()), "hung.png")
        (page,) = result["pages"]
        assert page["engine"] == "tesseract", page
        assert page["escalation"]["error"]["code"] == "timeout", page
    finally:
        os.killpg(gpu.proc.pid, signal.SIGCONT)


def test_the_console_marks_an_escalated_page_and_shows_both_readings(
        workers: tuple[Worker, Worker], server: Server, client: OcrClient,
        start_api: Callable[..., ApiServer], redis_url: str) -> None:
    api = start_api()
    token = create_token(redis_url, "console-escalating")
    sent = session(token).post(
        f"{api.url}/v1/jobs", timeout=30, files={"file": ("two.pdf", scans_pdf())},
        data={"engine": "tesseract", "escalate": "vlm-api", "escalate_below": "0.7"})
    assert sent.status_code == 202, sent.text
    job = sent.json()["id"]
    clean, unsure = client.wait([job], timeout=300)[job]["pages"]
    assert unsure["engine"] == "vlm-api", unsure
    browser = requests.Session()
    signed = browser.post(f"{api.url}/console/signin", data={"token": token},
                          headers={"Origin": api.url}, allow_redirects=False, timeout=60)
    assert signed.status_code == 303, signed.text
    shown = browser.get(f"{api.url}/console/jobs/{job}", timeout=30)
    assert shown.status_code == 200, shown.text
    marks = re.findall(r'<p class="escalation[^"]*">(.*?)</p>', shown.text, re.S)
    assert len(marks) == 1, marks  # the unsure page alone
    mark = " ".join(marks[0].split())
    confidence = f"{unsure['escalation']['confidence']:.2f}"
    assert "tesseract → vlm-api" in mark and "low_confidence" in mark, mark
    assert f"confidence {confidence}" in mark, mark
    assert f"/console/jobs/{job}/pages/2/escalation" in mark, mark
    both = browser.get(f"{api.url}/console/jobs/{job}/pages/2/escalation", timeout=30)
    assert both.status_code == 200, both.text
    first, kept = re.findall(r'<ol class="reading (?:first|second)">(.*?)</ol>', both.text,
                             re.S)
    assert server.now.text.split()[0] in kept, kept  # the model's text, kept
    first_words = unsure["escalation"]["first_text"].split()
    assert first_words and html.escape(first_words[0]) in first, first  # tesseract's
    # The clean page was not escalated: no such view for it.
    assert browser.get(f"{api.url}/console/jobs/{job}/pages/1/escalation",
                       timeout=30).status_code == 404


def test_usage_counts_an_escalated_page_for_both_engines(
        workers: tuple[Worker, Worker], server: Server, client: OcrClient,
        start_api: Callable[..., ApiServer], redis_url: str) -> None:
    api = start_api()
    token = create_token(redis_url, "usage-escalating")
    http = session(token)
    sent = http.post(
        f"{api.url}/v1/jobs", timeout=30, files={"file": ("two.pdf", scans_pdf())},
        data={"engine": "tesseract", "escalate": "vlm-api", "escalate_below": "0.7"})
    assert sent.status_code == 202, sent.text
    job = sent.json()["id"]
    clean, unsure = client.wait([job], timeout=300)[job]["pages"]
    assert clean["engine"] == "tesseract" and unsure["engine"] == "vlm-api", unsure
    usage = http.get(f"{api.url}/v1/usage", timeout=30).json()
    # Two pages read, each once; the unsure one by both engines.
    assert usage["total"] == 2 and usage["today"] == 2, usage
    assert usage["engines"] == {"tesseract": 2, "vlm-api": 1}, usage
    (today,) = [day for day in usage["days"] if day["pages"]]
    assert today["engines"] == {"tesseract": 2, "vlm-api": 1}, usage
    done = subprocess.run(
        [sys.executable, "ocr_admin.py", "--redis-url", redis_url, "usage", "--client",
         "usage-escalating"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)["clients"]
    assert report["total"] == 2 and report["engines"] == {"tesseract": 2, "vlm-api": 1}, report
