"""The Node.js client against a real Redis and real workers: the worker check.

Like submit.py, `clients/node/ocr_client.js` reads which queues the live workers
consume (their presence records) and answers a job whose queue none consumes within
~6 s: PENDING with error `no_worker`, exit status 5, the job left queued. One
fake-engine worker started from the Procfile serves `ocr`. A cancelled job reads
CANCELLED with the pages it kept, as in submit.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from PIL import Image, ImageDraw

from tasks.client import OcrClient
from tasks.records.status import CeleryState, JobStatus, WaitStatus
from tests.harness import ROOT, RedisServer, Worker, eventually, fake_env, sent_past_the_gate
from tests.pdf_fixtures import image_pdf, plain_pages

CLIENT_JS = str(ROOT / "clients" / "node" / "ocr_client.js")
FAKE_ENV = fake_env(OCR_CONCURRENCY="1")


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.skip("node is not installed: the Node.js client is not run")
    return found


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**FAKE_ENV, OCR_QUEUES="ocr")


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    path = tmp_path / "scan.png"
    image = Image.new("L", (400, 80), 255)
    ImageDraw.Draw(image).text((10, 30), "node client", fill=0)
    image.save(path)
    return path


def run_node(node: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([node, CLIENT_JS, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_queue_without_a_worker_is_answered_in_seconds(
        node: str, worker: Worker, redis_url: str, scan: Path) -> None:
    store = redis.Redis.from_url(redis_url)
    bindings = store.smembers("_kombu.binding.reply.celery.pidbox")
    done = run_node(node, "--redis", redis_url, "--queue", "nobody-here", str(scan))
    assert done.returncode == 5, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "PENDING" and result["filename"] == "scan.png"
    assert result["error"] == {"code": "no_worker", "retryable": True,
                               "message": "no live worker consumes queue 'nobody-here'"}
    assert "scan.png: no_worker: no live worker consumes queue 'nobody-here' (job " in done.stderr
    assert "start a worker that consumes that queue" in done.stderr  # not --timeout's TIMEOUT
    # the check's reply bindings are removed again
    assert store.smembers("_kombu.binding.reply.celery.pidbox") == bindings
    # the job stays queued for a worker that comes later, as with submit.py
    message = json.loads(bytes(store.rpop("nobody-here\x06\x163") or b"{}"))  # type: ignore[arg-type]
    assert message["headers"]["id"] == result["id"]


def test_redis_with_no_worker_at_all(node: str, tmp_path: Path, scan: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        done = run_node(node, "--redis", server.url(3), "--timeout", "300", str(scan))
    finally:
        server.stop()
    assert done.returncode == 5, done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "no_worker"
    assert "no live worker consumes queue 'ocr'" in done.stderr


def test_unknown_engine_is_a_usage_error_and_nothing_is_sent(
        node: str, worker: Worker, redis_url: str, scan: Path) -> None:
    """`--engine tesserakt` exits 2 with the engines the live workers know."""
    store = redis.Redis.from_url(redis_url)
    before = set(store.keys("ocr:blob:*"))
    done = run_node(node, "--redis", redis_url, "--engine", "tesserakt", str(scan))
    assert done.returncode == 2, done.stderr
    assert "unknown engine 'tesserakt'; choose one of tesseract, " in done.stderr
    assert "fake" in done.stderr  # the worker's plugins, from its presence record
    # nothing stored (an earlier job's ending may free its own input meanwhile)
    assert not set(store.keys("ocr:blob:*")) - before and not store.exists("ocr-tesserakt")
    ok = run_node(node, "--redis", redis_url, "--engine", "fake", str(scan))
    assert ok.returncode in (0, 5), ok.stderr  # known: sent (served or not)


def test_served_queue_is_waited_for(node: str, worker: Worker, redis_url: str,
                                    scan: Path) -> None:
    done = run_node(node, "--redis", redis_url, str(scan))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "SUCCESS"


def test_lang_is_sent_and_auto_is_the_default(node: str, worker: Worker, redis_url: str,
                                              scan: Path) -> None:
    """`--lang auto` and a named set reach the job; without --lang it is the worker's auto."""
    for args, lang in ((["--lang", "auto"], "auto"), (["--lang", "ell+eng"], "ell+eng"),
                       ([], "auto")):
        done = run_node(node, "--redis", redis_url, *args, str(scan))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["lang"] == lang


def test_live_queues_names_the_worker(node: str, worker: Worker, redis_url: str) -> None:
    script = (f"const c = require({json.dumps(CLIENT_JS)});"
              f"(async () => {{ const r = await new c.RedisConnection({json.dumps(redis_url)})"
              ".connect(); console.log(JSON.stringify(await c.liveQueues(r)));"
              " r.close(); })();")
    done = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    live = json.loads(done.stdout)
    assert [queues for node_name, queues in live.items() if worker.name in node_name] \
        and "ocr" in next(q for n, q in live.items() if worker.name in n)


def test_file_over_the_input_limit_is_refused_before_sending(
        node: str, worker: Worker, redis_url: str, scan: Path, tmp_path: Path) -> None:
    """A 1 GB file (sparse: never read) is refused by its size, the other file is sent."""
    big = tmp_path / "big.pdf"
    with big.open("wb") as file:
        file.truncate(2**30)
    store = redis.Redis.from_url(redis_url)
    blobs = len(store.keys("ocr:blob:*"))
    done = run_node(node, "--redis", redis_url, str(big), str(scan))
    assert done.returncode == 1, done.stderr  # a failure outranks the success
    refused, sent = (json.loads(line) for line in done.stdout.splitlines())
    assert refused == {"id": None, "status": "FAILURE", "filename": "big.pdf", "error": {
        "code": "input_too_large", "retryable": False,
        "message": "big.pdf is larger than 64 MB (OCR_MAX_INPUT_MB); nothing was sent"}}
    assert sent["status"] == "SUCCESS" and sent["filename"] == "scan.png"
    assert "big.pdf: FAILURE input_too_large: big.pdf is larger than 64 MB" in done.stderr
    assert len(store.keys("ocr:blob:*")) <= blobs + 1  # only scan.png's blob was stored
    # the limit follows the option (and OCR_MAX_INPUT_MB), as the workers' does
    done = run_node(node, "--redis", redis_url, "--max-input-mb", "0.0001", str(scan))
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["code"] == "input_too_large"
    done = run_node(node, "--redis", redis_url, "--max-input-mb", "none", str(scan))
    assert done.returncode == 2 and "--max-input-mb" in done.stderr


def test_submit_refuses_data_over_the_limit(node: str, redis_url: str) -> None:
    script = (f"const c = require({json.dumps(CLIENT_JS)});"
              "(async () => { const r = await new c.RedisConnection(process.argv[1]).connect();"
              " try { await c.submit(r, Buffer.alloc(2048), { maxInputMb: 0.001 }); }"
              " catch (err) { console.log(JSON.stringify([err instanceof c.InputTooLarge,"
              " err.code, err.message])); } finally { r.close(); } })();")
    done = subprocess.run([node, "-e", script, redis_url], capture_output=True, text=True,
                          timeout=30)
    assert json.loads(done.stdout) == [
        True, "input_too_large",
        "the input is larger than 0.001 MB (OCR_MAX_INPUT_MB); nothing was sent"]


@pytest.fixture(scope="module")
def slow_worker(start_worker: Callable[..., Worker]) -> Worker:
    """One pool child whose dark pages hang (until the cancel kills them).

    The Procfile's control worker beside it serves the cancel while that child is busy.
    """
    env = fake_env(OCR_ENGINE="slow-on-dark", OCR_QUEUES="ocr-slow-on-dark",
                   OCR_CONCURRENCY="1", OCR_PDF_DPI="72")
    start_worker(process="control", **env)
    return start_worker(**env)


def test_a_cancelled_jobs_line_says_what_it_kept(node: str, slow_worker: Worker,
                                                  redis_url: str, client: OcrClient,
                                                  tmp_path: Path) -> None:
    """As submit.py's `wait`: CANCELLED (never REVOKED), and how many pages it kept.

    A 5-page PDF whose third page hangs; cancelled once two pages are read, while the
    Node client waits for it.
    """
    pdf = tmp_path / "slow.pdf"
    pdf.write_bytes(image_pdf(plain_pages(5, dark=[3, 4, 5])))
    store = redis.Redis.from_url(redis_url)
    before = set(store.scan_iter("celery-task-meta-*"))
    waiting = subprocess.Popen([node, CLIENT_JS, "--redis", redis_url, "--engine",
                                "slow-on-dark", str(pdf)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        def two_pages_read() -> str | None:
            assert waiting.poll() is None, waiting.communicate()
            for key in set(store.scan_iter("celery-task-meta-*")) - before:
                job = key.decode().removeprefix("celery-task-meta-")
                if client.status(job).done >= 2:
                    return job
            return None

        job = eventually(two_pages_read, 60, "two pages of slow.pdf read")
        assert client.cancel([job]) == {job: "cancelled"}
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 4, err
    result = json.loads(out)
    assert result["status"] == "CANCELLED" and result["id"] == job
    assert [p["number"] for p in result["pages"]] == [1, 2]
    assert err.splitlines() == ["slow.pdf: CANCELLED: 2 of 5 pages kept (pages 1-2; its "
                                "JSON result on stdout has them)"]


def test_revoked_reads_as_the_jobs_real_ending(node: str, redis_url: str,
                                               client: OcrClient) -> None:
    """Celery's REVOKED before the ending is stored: as submit.py's `wait` reads it.

    A job sent with a deadline and never cancelled expired (FAILURE
    `deadline_exceeded`); one whose cancel was asked is CANCELLED.
    """
    late = sent_past_the_gate(client, {"blob": "ocr:blob:none", "engine": "nobody"},
                              deadline=3600)
    stopped = sent_past_the_gate(client, {"blob": "ocr:blob:none", "engine": "nobody"},
                                 deadline=3600)
    client._control.cancel(stopped)
    for job, reason in ((late, "expired"), (stopped, "cancelled")):
        client.app.backend.mark_as_revoked(job, reason)
    script = (f"const c = require({json.dumps(CLIENT_JS)});"
              "(async () => { const r = await new c.RedisConnection(process.argv[1]).connect();"
              " const out = await c.waitAll(r, process.argv.slice(2).map((id) => ({id})));"
              " console.log(JSON.stringify(out)); r.close(); })();")
    done = subprocess.run([node, "-e", script, redis_url, late, stopped], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    read = json.loads(done.stdout)
    assert (read[late]["status"], read[late]["error"]["code"]) == ("FAILURE",
                                                                   "deadline_exceeded")
    assert read[stopped]["status"] == "CANCELLED"
    assert read[late]["status"] == client.wait([late])[late]["status"]  # as submit.py's


def test_status_names_are_the_ground_floors(node: str) -> None:
    """The Node client's STATUS and CELERY tables hold tasks/records/status.py's names."""
    script = (f"const c = require({json.dumps(CLIENT_JS)}); "
              "process.stdout.write(JSON.stringify({status: c.STATUS, celery: c.CELERY}))")
    done = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    tables = json.loads(done.stdout)
    assert tables["status"] == {s.name: s.value for s in
                                [*JobStatus, WaitStatus.PENDING, WaitStatus.TIMEOUT]}
    assert all(CeleryState[name].value == value for name, value in tables["celery"].items())


def test_sentinel_urls_are_refused_with_what_to_use(node: str, scan: Path) -> None:
    """The Node client speaks no Sentinel: one line says what to give it instead."""
    url = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380/0"
    for args in (("--redis", url, str(scan)), ("cancel", "--redis", url, "some-id")):
        done = run_node(node, *args)
        assert done.returncode != 0 and done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "sentinel:// is not supported by the Node client" in lines[0]
        assert "redis:// or rediss://" in lines[0] and "HTTP API" in lines[0]
