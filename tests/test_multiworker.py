"""Several workers against one Redis, as on several machines (README, Several machines).

Two workers with their own node names and queues share the `ocr` queue; one is
stopped mid-batch and every job still completes, once.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable

from PIL import Image

from tasks.client import OcrClient
from tests.conftest import FAKE_PLUGINS, Worker

FAKE = {"OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS, "OCR_CACHE_RESULTS": "0",
        "OCR_CONCURRENCY": "1", "FAKE_PAGE_SECONDS": "0.3"}


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (48, 32), shade).save(buffer, "PNG")
    return buffer.getvalue()


def finished_here(worker: Worker) -> dict[str, str]:
    """Job id to node name, from the worker's `ocr.job` log lines."""
    return {r["id"]: r["node"] for r in (json.loads(m) for m in re.findall(
        r"ocr\.job (\{.*\})$", worker.log(), re.M))}


def test_two_workers_share_jobs_and_lose_none_when_one_stops(
        start_worker: Callable[..., Worker], client: OcrClient) -> None:
    first = start_worker(**FAKE, WORKER_NAME="host-a", OCR_QUEUES="ocr,ocr-interactive")
    second = start_worker(**FAKE, WORKER_NAME="host-b", OCR_QUEUES="ocr,ocr-batch")

    def send(queue: str, shade: int) -> str:
        return str(client.app.send_task("ocr.document", queue=queue,
                                        kwargs={"blob": client._blobs.put(png(shade))}).id)

    # A queue of its own is served by its worker only.
    own = {"host-a": send("ocr-interactive", 1), "host-b": send("ocr-batch", 2)}
    assert all(r["status"] == "SUCCESS" for r in client.wait(own.values(), timeout=60).values())
    assert finished_here(first)[own["host-a"]].startswith("host-a@")
    assert finished_here(second)[own["host-b"]].startswith("host-b@")

    batch = [client.submit(png(10 + i)) for i in range(20)]
    deadline = time.monotonic() + 60
    while len(set(batch) & set(finished_here(first))) < 3:
        assert time.monotonic() < deadline, "host-a served no job of the batch"
        time.sleep(0.05)
    first.stop()  # SIGTERM: warm shutdown mid-batch
    assert first.proc is not None and first.proc.returncode is not None

    results = client.wait(batch, timeout=90)
    assert [results[j]["status"] for j in batch] == ["SUCCESS"] * 20
    on_a, on_b = set(batch) & set(finished_here(first)), set(batch) & set(finished_here(second))
    assert len(on_a) >= 3 and len(on_b) >= 3, (len(on_a), len(on_b))
    assert on_a | on_b == set(batch) and not on_a & on_b  # each job ran once
