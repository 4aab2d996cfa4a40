"""`python -m devkit.inference_server`: the simulated inference server a newcomer runs.

Started as a process, as docs/escalation.md shows it: it answers the OpenAI chat API,
streamed or not, with a fixed text or the prompt's own (`--echo`), and a real vlm-api
worker (the Procfile's line) reads a page with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tasks.client import OcrClient
from tests.harness import ROOT, Worker, corpus, eventually, free_port

pytestmark = pytest.mark.slow

TEXT = "Read by the laptop's simulated model."


def serve(*args: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The server as a newcomer starts it; its base URL once it says it serves."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "devkit.inference_server", "--port",
                                 str(port), *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    eventually(lambda: "serving" in log.read_text() or proc.poll() is not None, 30,
               "the server's start line")
    assert proc.poll() is None, log.read_text()
    return proc, f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def fixed(tmp_path: Path) -> Iterator[str]:
    proc, url = serve("--text", TEXT, log=tmp_path / "fixed.log")
    yield url
    proc.terminate()
    assert proc.wait(10) == 0


def chat(url: str, stream: bool, text: str = "Say hello.") -> requests.Response:
    return requests.post(f"{url}/chat/completions", timeout=30, stream=stream, json={
        "model": "simulated-vlm", "stream": stream, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
            {"type": "text", "text": text}]}]})


def streamed(answer: requests.Response) -> str:
    chunks: list[dict[str, Any]] = [json.loads(line[6:]) for line in answer.iter_lines(
        decode_unicode=True) if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks
                   if c["choices"])


def test_it_answers_the_chat_api_with_its_text(fixed: str) -> None:
    models = requests.get(f"{fixed}/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["simulated-vlm"]
    whole = chat(fixed, stream=False).json()
    assert whole["choices"][0]["message"]["content"] == TEXT, whole
    assert streamed(chat(fixed, stream=True)) == TEXT


def test_echo_answers_with_the_prompt(tmp_path: Path) -> None:
    proc, url = serve("--echo", log=tmp_path / "echo.log")
    try:
        assert chat(url, False, "Read  this\\npage.").json()["choices"][0]["message"][
            "content"] == "Read this\\npage."
        assert streamed(chat(url, True, "Echo me")) == "Echo me"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_port_in_use_is_said(fixed: str, tmp_path: Path) -> None:
    port = fixed.rsplit(":", 1)[1].split("/")[0]
    done = subprocess.run([sys.executable, "-m", "devkit.inference_server", "--port", port],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"port {port}" in done.stderr, done.stderr


def test_a_vlm_api_worker_reads_a_page_with_it(
        fixed: str, start_worker: Callable[..., Worker], client: OcrClient) -> None:
    start_worker(OCR_ENGINE="vlm-api", OCR_QUEUES="ocr-vlm-api", OCR_VLM_API_URL=fixed,
                 OCR_VLM_API_MODEL="simulated-vlm", OCR_VLM_TEMPERATURES="0",
                 OCR_CACHE_RESULTS="0")
    job = client.submit(corpus("scan_linn.png").read_bytes(), filename="page.png",
                        engine="vlm-api")
    result = client.wait([job], timeout=300)[job]
    assert result["status"] == "SUCCESS", result
    assert result["pages"][0]["text"] == TEXT, result
