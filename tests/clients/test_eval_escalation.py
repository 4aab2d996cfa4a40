"""`submit.py eval --escalate`: the pages escalated and the CER, and the threshold's curve.

Real workers as the Procfile starts them (tests/engines/test_escalation.py's): a
tesseract worker and a vlm-api worker in front of a simulated inference server that
answers every page with the scan's ground truth. The folder holds a clean scan and a
blurred, low-resolution copy of it (Pillow), each with its `.gt.txt`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devkit.inference_server import SimulatedInferenceServer
from tests.clients.test_eval import run_eval
from tests.engines.test_escalation import COMMON, clean_scan, png, unsure_scan
from tests.harness import Worker, ground_truth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def truth() -> str:
    """The scan's ground truth, which the simulated server answers (read from the corpus)."""
    return ground_truth("scan_tess_phototest.tif")


@pytest.fixture(scope="module")
def server(truth: str) -> Iterator[SimulatedInferenceServer]:
    running = SimulatedInferenceServer(text=truth).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., Worker],
            server: SimulatedInferenceServer) -> tuple[Worker, Worker]:
    cpu = start_worker(**COMMON, OCR_ENGINE="tesseract")
    gpu = start_worker(**COMMON, OCR_ENGINE="vlm-api", OCR_QUEUES="ocr-vlm-api",
                       OCR_VLM_API_URL=server.url, OCR_VLM_API_MODEL="simulated-vlm",
                       OCR_VLM_TEMPERATURES="0")
    return cpu, gpu


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, truth: str) -> Path:
    here = tmp_path_factory.mktemp("escalating")
    for name, image in (("clean", clean_scan()), ("unsure", unsure_scan())):
        (here / f"{name}.png").write_bytes(png(image))
        (here / f"{name}.gt.txt").write_text(truth)
    return here


def test_eval_draws_the_curve_of_cer_against_the_pages_escalated(
        workers: tuple[Worker, Worker], server: SimulatedInferenceServer, redis_url: str,
        folder: Path, tmp_path: Path) -> None:
    report = tmp_path / "curve.html"
    done = run_eval(redis_url, str(folder), "--json", "--engine", "tesseract",
                    "--escalate", "vlm-api", "--escalate-below", "0.95,0.6",
                    "--report", str(report))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    records, last = lines[:-1], lines[-1]
    # One run per threshold, lowest first; each document's pages escalated.
    assert [(r["document"], r["escalate_below"], r["escalated"], r["pages"])
            for r in records] == [("clean.png", 0.6, 0, 1), ("unsure.png", 0.6, 1, 1),
                                  ("clean.png", 0.95, 1, 1), ("unsure.png", 0.95, 1, 1)]
    assert all(r["engine"] == "tesseract" and r["escalate"] == "vlm-api" for r in records)
    low, high = last["curve"]
    assert (low["escalate_below"], high["escalate_below"]) == (0.6, 0.95)
    assert low["share"] < high["share"], last["curve"]
    assert (low["share"], high["share"]) == (0.5, 1.0)
    assert (low["escalated"], low["pages"], high["escalated"]) == (1, 2, 2)
    # The server answers the truth: the unsure page read again is read right.
    assert high["cer"] <= 0.02 and low["cer"] <= 0.05, last["curve"]
    summary = last["summary"]
    assert set(summary) == {"tesseract+vlm-api<0.6", "tesseract+vlm-api<0.95"}
    assert summary["tesseract+vlm-api<0.6"]["share"] == 0.5
    page = report.read_text()
    assert not re.search(r"""(src|href)\s*=|<script|@import|url\(""", page)
    plot = re.search(r"<svg .*?</svg>", page, re.S)
    assert plot is not None, page[:2000]
    assert plot.group().count("<circle") == 2 and "<polyline" in plot.group()


def test_eval_wants_an_engine_to_escalate_to(redis_url: str, folder: Path) -> None:
    done = run_eval(redis_url, str(folder), "--escalate-below", "0.6,0.9")
    assert done.returncode == 2 and "--escalate-below needs --escalate" in done.stderr


def test_eval_with_the_fleets_threshold_prints_the_pages_escalated(
        workers: tuple[Worker, Worker], redis_url: str, folder: Path) -> None:
    done = run_eval(redis_url, str(folder), "--engine", "tesseract", "--escalate", "vlm-api")
    assert done.returncode == 0, done.stderr
    clean, unsure, summary = done.stdout.splitlines()
    assert clean.startswith("clean.png\ttesseract\t") and clean.endswith("\t0/1 pages escalated")
    assert unsure.endswith("\t1/1 pages escalated"), unsure
    # OCR_ESCALATE_BELOW's 0.85: the run is named without a threshold.
    assert summary.startswith("tesseract+vlm-api: CER "), summary
    assert summary.endswith(", 1 of 2 pages escalated (50.00%)"), summary
