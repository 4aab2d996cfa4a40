"""The figure KEDA scales the CPU pool on equals the work really waiting and held.

A real redis-server, the Procfile's `metrics` exporter and a real worker started by the
Procfile's `worker` line as the CPU pool's Deployment configures it (OCR_ENGINE=
tesseract, OCR_QUEUES=ocr, 2 children). Its engine is a fake (tests/gated_engine.py)
registered under the name `tesseract`, so the worker consumes exactly the pool's
queues and holds each page until the test opens a gate. The URL and `valueLocation`
are read from the rendered ScaledObject (deploy/kubernetes/base) and asked of the
exporter on loopback: a 3-page PDF fanned out (2 pages held by the two children, 1
waiting on `ocr-tesseract`) and N image jobs queued on `ocr` at three priorities (three
Redis lists) give N + 3. Then the gate opens, every job ends, and the figure reads 0.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import redis

from tasks.broker.layout import list_lane_key
from tasks.client import OcrClient
from tasks.metrics.queue_depth import QueueDepth
from tasks.state.keys import METRICS_OLDEST_KEY
from tests.deploy.test_deploy_manifests import DEPLOY
from tests.harness import (
    FAKE_PLUGINS,
    FAST_PAGES,
    ProcfileProcess,
    Worker,
    eventually,
    free_port,
    make_client,
)
from tests.image_fixtures import png
from tests.kustomize_lite import build
from tests.pdf_fixtures import image_pdf, plain_pages

PRIORITIES = ("interactive", "normal", "batch")
JOBS_PER_PRIORITY = 2
CHILDREN = 2
PDF_PAGES = 3


def _trigger() -> dict[str, str]:
    """The CPU pool's metrics-api trigger, as the base's ScaledObject states it."""
    (scaled,) = [o for o in build(DEPLOY / "base") if o["kind"] == "ScaledObject"
                 and o["spec"]["scaleTargetRef"]["name"] == "ocr-worker-cpu"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api"
    return dict(trigger["metadata"])


def _value_at(document: Any, location: str) -> Any:
    """A GJSON path of plain keys and indexes (`a.b.0`), as KEDA reads `valueLocation`."""
    assert re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", location), location
    for part in location.split("."):
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[int]:
    port = free_port()
    log = tmp_path_factory.mktemp("metrics") / "metrics.log"
    process = ProcfileProcess("metrics", log, {"REDIS_URL": redis_url,
                                               "METRICS_PORT": str(port)})
    process.spawn()
    try:
        process.wait_until(lambda: "metrics: serving" in process.log(), 60, "serving")
        yield port
    finally:
        process.stop()


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    eventually(condition, timeout, what, interval=0.05)


def test_figure_counts_every_priority_list_and_the_pages_workers_hold(
        tmp_path: Path, redis_url: str, start_worker: Callable[..., Worker],
        exporter: int) -> None:
    trigger = _trigger()
    path = urlparse(trigger["url"]).path
    gate = tmp_path / "gate"
    gate.mkdir()
    start_worker(OCR_ENGINE="tesseract",
                 OCR_ENGINE_PLUGINS=f"{FAKE_PLUGINS},tesseract=tests.gated_engine:GatedEngine",
                 OCR_QUEUES="ocr", OCR_CONCURRENCY=str(CHILDREN), OCR_LANG_ENGINES="",
                 OCR_CACHE_RESULTS="0", OCR_AUTO_ROTATE="0", FAKE_GATE_DIR=str(gate),
                 OCR_WORKER_LIVENESS_SECONDS="10", **FAST_PAGES)
    client: OcrClient = make_client(redis_url)
    try:
        pdf = client.submit(image_pdf(plain_pages(PDF_PAGES)), filename="three.pdf",
                            lang="eng")
        # The PDF is split into page tasks on `ocr-tesseract`; both children hold one.
        _wait_for(lambda: len(list(gate.glob("started-*"))) == CHILDREN, "two pages held")
        sent = time.time()
        jobs = [client.submit(png(), filename=f"{priority}-{n}.png", priority=priority,
                              lang="eng")
                for priority in PRIORITIES for n in range(JOBS_PER_PRIORITY)]
        broker = redis.Redis.from_url(redis_url)
        lists = QueueDepth(broker, {}).lists("ocr")
        lengths = [broker.llen(list_lane_key(name, client.client)) for name in lists]
        # The jobs sit in the client's lanes of three of the `ocr` lists (tasks/queue/
        # lanes.py): a trigger on the list `ocr` alone sees none of them.
        assert sorted(lengths, reverse=True)[:3] == [JOBS_PER_PRIORITY] * 3
        assert broker.llen("ocr") == 0

        status, body = _get(exporter, path)
        assert status == 200, body
        assert body["waiting"] == len(jobs) + PDF_PAGES - CHILDREN
        assert body["running"] == CHILDREN
        assert float(_value_at(body, trigger["valueLocation"])) == len(jobs) + PDF_PAGES
        # Prometheus' gauge reads the same lists: the waiting jobs, every priority.
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter}/metrics", timeout=30) as got:
            scraped = got.read().decode()
        assert f'ocr_queue_length{{queue="ocr"}} {float(len(jobs))}' in scraped
        assert len(list(gate.glob("started-*"))) == CHILDREN  # nothing moved meanwhile
        # The oldest waiting job's age: the worker reads the messages (a look a sweep
        # interval) and stores when it was sent; the exporter, which only counts them,
        # serves that.
        _wait_for(lambda: broker.hexists(METRICS_OLDEST_KEY, "ocr"), "a worker's look", 60)
        since = float(broker.hget(METRICS_OLDEST_KEY, "ocr") or 0)
        assert sent - 0.5 <= since <= time.time()
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter}/metrics", timeout=30) as got:
            age = re.search(r'ocr_queue_oldest_age_seconds\{queue="ocr"\} (\S+)',
                            got.read().decode())
        assert age and float(age.group(1)) >= time.time() - since - 1

        (gate / "open").touch()
        results = client.wait([pdf, *jobs], timeout=300)
        assert {r["status"] for r in results.values()} == {"SUCCESS"}
        assert len(results[pdf]["pages"]) == PDF_PAGES
        # Acknowledged after each result is stored: the figure drops to 0 right after.
        _wait_for(lambda: _get(exporter, path)[1]["value"] == 0, "the figure back to 0")
        _wait_for(lambda: not broker.hexists(METRICS_OLDEST_KEY, "ocr"), "no age left", 60)
    finally:
        (gate / "open").touch()
        client.close()


def test_figure_endpoint_refuses_bad_queue_names_and_keeps_serving_metrics(
        exporter: int) -> None:
    status, body = _get(exporter, "/v1/queues/ocr,bad%20name/depth")
    assert status == 400 and body["error"]["code"] == "bad_request"
    with urllib.request.urlopen(f"http://127.0.0.1:{exporter}/metrics", timeout=30) as answer:
        assert b"ocr_queue_length" in answer.read()


def test_exporter_stops_on_sigterm(tmp_path: Path, redis_url: str) -> None:
    """The exporter acts on SIGTERM itself, and exits 0.

    As a container's first process it must: PID 1 has no default action for SIGTERM,
    so without a handler it would wait for the runtime's SIGKILL.
    """
    process = ProcfileProcess("metrics", tmp_path / "metrics.log",
                              {"REDIS_URL": redis_url, "METRICS_PORT": str(free_port())})
    proc = process.spawn()
    _wait_for(lambda: "metrics: serving" in process.log(), "the exporter serving", 60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert "metrics: stopped" in process.log()


def test_figure_endpoint_on_rabbitmq_says_which_trigger_to_use() -> None:
    """On RabbitMQ the exporter has no Redis lists to count: 501, naming the trigger."""
    from scripts.metrics_exporter import depth_answer

    status, body = depth_answer(None, "ocr,ocr-tesseract", "GET")
    assert status.startswith("501") and "rabbitmq trigger" in body["error"]["message"]
