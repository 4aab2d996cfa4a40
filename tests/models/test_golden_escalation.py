# ruff: noqa: F811  (the metrics exporter's fixture of test_monitoring.py is imported by name)
"""The golden set's run with escalation on: the share of pages escalated next to the CER.

Real workers as the Procfile starts them (tests/engines/test_escalation.py's): a
tesseract worker with the fleet's escalation on (OCR_ESCALATE_ENGINE=vlm-api) and a
vlm-api worker in front of a simulated inference server that answers every page with
the scan's ground truth. The set holds a clean scan and a blurred, low-resolution copy
of it (Pillow), each with its `.gt.txt`: the copy escalates, the clean scan does not.
`ocr_admin.py accuracy --run` scores it; the Procfile `metrics` process exports it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from devkit.inference_server import SimulatedInferenceServer

# The scan's ground truth, the simulated server that answers it, and the set (a clean
# scan and its unsure copy, each with its truth): the eval's fixtures.
from tests.clients.test_eval_escalation import folder, server, truth  # noqa: F401
from tests.deploy.test_monitoring import _get, exporter  # noqa: F401 - the exporter's fixture
from tests.engines.test_escalation import COMMON
from tests.harness import Worker
from tests.models.test_golden_set import admin, gauges

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], server: SimulatedInferenceServer) -> Worker:
    """The tesseract pool (the exporter's fixture asks for it by name), and the GPU pool.

    The control worker sends each job's `ocr.golden_score` (its callback outbox).
    """
    start_worker("control", **COMMON)
    start_worker(**COMMON, OCR_ENGINE="vlm-api", OCR_QUEUES="ocr-vlm-api",
                 OCR_VLM_API_URL=server.url, OCR_VLM_API_MODEL="simulated-vlm",
                 OCR_VLM_TEMPERATURES="0")
    return start_worker(**COMMON, OCR_ENGINE="tesseract", OCR_ESCALATE_ENGINE="vlm-api")


def test_the_run_records_the_share_escalated_next_to_the_cer(
        worker: Worker, exporter: str, redis_url: str, folder: Path) -> None:
    done = admin(redis_url, folder, "--run", "--json", OCR_ESCALATE_ENGINE="vlm-api")
    assert done.returncode == 0, done.stderr
    records = {r["engine"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert {"tesseract", "vlm-api"} <= set(records), records
    tesseract = records["tesseract"]
    # The unsure copy was read again (and read right: the server answers the truth).
    assert (tesseract["escalate"], tesseract["pages"], tesseract["escalated"],
            tesseract["escalated_share"]) == ("vlm-api", 2, 1, 0.5), json.dumps(records)
    assert tesseract["cer"] <= 0.05 and "kept_first" not in tesseract, tesseract
    # The escalation engine's own run reads every page itself: nothing escalates.
    assert "escalated_share" not in records["vlm-api"], records["vlm-api"]

    shown = admin(redis_url, folder, OCR_ESCALATE_ENGINE="vlm-api")
    line = next(line for line in shown.stdout.splitlines() if "\ttesseract\t" in line)
    assert "\tCER " in line and "\tescalated 50.00% to vlm-api\t" in line, line

    scraped = _get(f"{exporter}/metrics") or ""
    share = gauges(scraped, "ocr_golden_escalated_share")
    assert share[("tesseract", tesseract["model"])] == 0.5, share
    assert not any(engine == "vlm-api" for engine, _ in share), share
    assert gauges(scraped, "ocr_golden_cer")[("tesseract", tesseract["model"])] == \
        pytest.approx(tesseract["cer"])
