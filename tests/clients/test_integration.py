"""Integration from outside: docs/tasks.md's examples run as written, Flower, metrics, logs.

One fake-engine worker (two pool children), one Flower, one metrics exporter and the
HTTP API, all started from the Procfile's lines, serve every test of this module; the
browser tests (Flower's workers page, the API's /docs page) run in headless chromium.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tasks.client import OcrClient
from tasks.queue.telemetry import KEEP_INTERVAL
from tasks.state.metrics import FLUSH_EVERY
from tests.api_server import ApiServer
from tests.harness import (
    ROOT,
    VENV_BIN,
    ProcfileProcess,
    Worker,
    corpus,
    eventually,
    fake_env,
    free_port,
)
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf, inked_pages, plain_pages

FAKE_ENV = fake_env(OCR_CONCURRENCY="2", FAKE_PAGE_SECONDS="0.25")
FLOWER_AUTH = ("ops", uuid.uuid4().hex[:12])
SCREENSHOT = os.environ.get("FLOWER_SCREENSHOT")  # `make screenshot` sets docs/flower.png


def doc_example(name: str) -> str:
    """The code block after `<!-- example: NAME -->` in docs/tasks.md."""
    text = (ROOT / "docs" / "tasks.md").read_text()
    match = re.search(rf"<!-- example: {re.escape(name)} -->\n```\w*\n(.*?)\n```", text,
                      re.DOTALL)
    assert match, f"docs/tasks.md has no example {name}"
    return match.group(1)


def service_env(**extra: str) -> dict[str, str]:
    """The environment of a Procfile process started by a test."""
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("OCR_", "REDIS_", "CELERY", "FLOWER_"))}
    return {**inherited, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT), **extra}


def http(url: str, body: Any = None, auth: tuple[str, str] | None = None,
         timeout: float = 30) -> tuple[int, bytes]:
    """What `curl [-u user:pw] [-d json] URL` does: the status and the body."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if auth is not None:
        token = base64.b64encode(":".join(auth).encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**FAKE_ENV, WORKER_NAME="ocrshot")


@pytest.fixture(scope="module")
def flower(worker: Worker, redis_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Flower from the Procfile line, with basic auth; yields its base URL."""
    tmp = tmp_path_factory.mktemp("flower")
    port = free_port()
    process = ProcfileProcess("flower", tmp / "flower.log", {
        "REDIS_URL": redis_url, "FLOWER_PORT": str(port), "FLOWER_DB": str(tmp / "flower.db"),
        "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}, drop=("FLOWER_",))
    process.spawn()
    url = f"http://127.0.0.1:{port}"

    def worker_seen() -> bool:
        try:
            status, body = http(f"{url}/api/workers?refresh=1", auth=FLOWER_AUTH, timeout=10)
        except OSError:
            return False
        return status == 200 and "ocrshot@" in body.decode()

    try:
        eventually(worker_seen, 60, "Flower to answer and list the worker")
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def exporter(worker: Worker, redis_url: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Procfile `metrics` process; yields its /metrics URL."""
    port = free_port()
    process = ProcfileProcess("metrics", tmp_path_factory.mktemp("metrics") / "metrics.log", {
        "REDIS_URL": redis_url, "METRICS_PORT": str(port), "OCR_QUEUES": "ocr,ocr-batch"})
    process.spawn()
    url = f"http://127.0.0.1:{port}/metrics"

    def answers() -> bool:
        try:
            return http(url, timeout=5)[0] == 200
        except OSError:
            return False

    try:
        eventually(answers, 30, "the metrics exporter")
        yield url
    finally:
        process.stop()


def test_client_import_pulls_in_no_engine() -> None:
    code = ("import json, sys\nimport tasks.client\nfrom worker_config import Settings\n"
            "before = sorted(sys.modules)\n"
            "tasks.client.OcrClient(Settings.from_env({'REDIS_URL': 'redis://127.0.0.1:1/0'}))"
            "\nprint(json.dumps([before, sorted(sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=service_env())
    assert done.returncode == 0, done.stderr
    for modules in json.loads(done.stdout):
        top = {name.split(".")[0] for name in modules}
        assert not top & {"mlx", "mlx_vlm", "tesserocr", "pymupdf", "fitz"}, top


def test_python_send_task_example(worker: Worker, redis_url: str, tmp_path: Path) -> None:
    code = doc_example("python-send-task")
    assert "tasks" not in re.findall(r"^(?:from|import) (\w+)", code, re.M)
    (tmp_path / "scan.png").write_bytes(corpus("scan_linn.png").read_bytes())
    (tmp_path / "report.pdf").write_bytes(image_pdf(plain_pages(3)))
    # A clean interpreter: nothing of this project importable.
    env = {**service_env(REDIS_URL=redis_url), "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("SUCCESS 1 fake 2550x3300 mean="), lines
    assert lines[1:] == ["SUCCESS [1, 2]", "FAILURE unsupported_format"]
    assert not [k for k in _redis_keys(redis_url) if k.startswith("ocr:blob:")]


def _redis_keys(redis_url: str) -> list[str]:
    import redis

    return [k.decode() for k in redis.Redis.from_url(redis_url).keys("*")]


def test_node_client_examples(worker: Worker, redis_url: str, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js client example is not run")
    (tmp_path / "scan.png").write_bytes(png(90))
    (tmp_path / "report.pdf").write_bytes(image_pdf(plain_pages(3)))
    client_js = str(ROOT / "clients" / "node" / "ocr_client.js")
    cli = doc_example("node-cli").replace("clients/node/ocr_client.js", client_js)
    done = subprocess.run(["bash", "-c", cli], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=service_env(REDIS_URL=redis_url))
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["status"] for r in results] == ["SUCCESS", "SUCCESS"]
    assert results[0]["filename"] == "scan.png" and results[0]["text"].startswith("fake ")
    assert results[1]["page_count"] == 3 and len(results[1]["pages"]) == 3
    # the message was shown without its blob's bytes, and the blobs are gone
    worker.job_records([r["id"] for r in results])  # both jobs ended, each logged
    assert not [k for k in _redis_keys(redis_url) if k.startswith("ocr:blob:")]

    api = doc_example("node-api").replace("./clients/node/ocr_client.js", client_js)
    (tmp_path / "example.js").write_text(api)
    done = subprocess.run([node, "example.js"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=service_env(REDIS_URL=redis_url))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SUCCESS 1,2"

    bad = tmp_path / "bad.png"
    bad.write_bytes(corpus("bad_broken.png").read_bytes())
    done = subprocess.run([node, client_js, "--redis", redis_url, "--engine", "fake",
                           str(bad)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["code"] == "corrupt_input"
    assert subprocess.run([node, client_js], capture_output=True, timeout=30).returncode == 2
    # priorities land in kombu's priority lists, as a Python client's would
    import redis

    store = redis.Redis.from_url(redis_url)
    sep = "\x06\x16"  # kombu's Redis transport default
    for priority, key in (("batch", f"nodeprio{sep}6"), ("normal", f"nodeprio{sep}3"),
                          ("interactive", "nodeprio")):
        done = subprocess.run([node, client_js, "--redis", redis_url, "--queue", "nodeprio",
                               "--priority", priority, "--no-wait", str(bad)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        message = json.loads(store.lpop(key) or b"{}")
        assert message["headers"]["id"] == done.stdout.split("\t")[0]
        assert message["properties"]["priority"] == {"batch": 6, "normal": 3,
                                                     "interactive": 0}[priority]


def test_flower_api_sends_and_reads_results(flower: str, worker: Worker) -> None:
    data = base64.b64encode(corpus("scan_tess_phototest.tif").read_bytes()).decode()
    body = {"kwargs": {"data_b64": data, "filename": "phototest.tif"}}
    send = f"{flower}/api/task/send-task/ocr.document"
    assert http(send, body)[0] == 401
    assert http(send, body, auth=("ops", "wrong"))[0] == 401
    assert http(f"{flower}/api/task/result/{uuid.uuid4()}")[0] == 401
    status, sent = http(send, body, auth=FLOWER_AUTH)
    assert status == 200, sent
    job = json.loads(sent)["task-id"]
    reply = result_through_flower(flower, job)
    assert reply["state"] == "SUCCESS", reply
    assert reply["result"]["filename"] == "phototest.tif"
    assert reply["result"]["text"].startswith("fake 640x480")

    # What Flower shows of the job: the worker, and kwargs without the payload.
    def info() -> dict[str, Any] | None:
        found = json.loads(http(f"{flower}/api/task/info/{job}", auth=FLOWER_AUTH)[1])
        return found if found.get("state") == "SUCCESS" else None

    shown = eventually(info, 20, "Flower to see the job succeed")
    assert shown["worker"].startswith("ocrshot@")
    assert "bytes base64>" in shown["kwargs"] and data[:40] not in shown["kwargs"]

    bad = base64.b64encode(corpus("bad_broken.png").read_bytes()).decode()
    job = json.loads(http(send, {"kwargs": {"data_b64": bad}}, auth=FLOWER_AUTH)[1])["task-id"]
    reply = result_through_flower(flower, job)
    assert reply["state"] == "FAILURE" and "'corrupt_input'" in reply["result"]


def result_through_flower(flower: str, job: str) -> dict[str, Any]:
    """The documented calls: wait with `timeout`, then read the state afresh."""
    status, _ = http(f"{flower}/api/task/result/{job}?timeout=60", auth=FLOWER_AUTH,
                     timeout=90)
    assert status == 200
    return dict(json.loads(http(f"{flower}/api/task/result/{job}", auth=FLOWER_AUTH)[1]))


def test_flower_curl_example(flower: str, tmp_path: Path) -> None:
    missing = [tool for tool in ("curl", "jq", "base64") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: the curl example is not run")
    (tmp_path / "scan.png").write_bytes(png(120))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", doc_example("flower-curl")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FLOWER": flower, "AUTH": ":".join(FLOWER_AUTH)})
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout.splitlines()[-1])
    assert reply["state"] == "SUCCESS" and reply["result"]["filename"] == "scan.png"


def test_flower_task_page_shows_progress(flower: str, worker: Worker) -> None:
    # Pages with ink, each read by the fake engine in FAKE_PAGE_SECONDS: blank pages
    # skip the engine, and their job could end between two looks at the page.
    pdf = base64.b64encode(image_pdf(inked_pages(8))).decode()
    sent = http(f"{flower}/api/task/send-task/ocr.document",
                {"kwargs": {"data_b64": pdf, "filename": "eight.pdf"}}, auth=FLOWER_AUTH)
    job = json.loads(sent[1])["task-id"]

    def progress_on_page() -> str | None:
        page = http(f"{flower}/task/{job}", auth=FLOWER_AUTH)[1].decode()
        found = re.search(r"\b([0-7])/8 pages\b", page)
        return found.group(0) if found and "PROGRESS" in page else None

    assert eventually(progress_on_page, 30, "the task page to show progress")

    def finished() -> dict[str, Any] | None:
        found = json.loads(http(f"{flower}/api/task/info/{job}", auth=FLOWER_AUTH)[1])
        return found if found.get("state") == "SUCCESS" else None

    assert eventually(finished, 30, "Flower to see the PDF finish")["result"] == "SUCCESS"
    # Flower's own Prometheus metrics count the progress events (served without auth).
    status, metrics = http(f"{flower}/metrics")
    assert status == 200
    assert re.search(r'flower_events_total\{[^}]*type="task-progress"[^}]*\} [1-9]',
                     metrics.decode())


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(http(url)[1].decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
          **labels: str) -> float:
    return sum(value for have, value in samples.get(name, [])
               if all(have.get(k) == v for k, v in labels.items()))


def test_metrics_exporter_counts_jobs_pages_loads_and_memory(
        exporter: str, worker: Worker, client: OcrClient) -> None:
    # The earlier tests' counts that the children still hold are written within
    # FLUSH_EVERY: waited for (time itself), so that `before` holds them all.
    time.sleep(2 * FLUSH_EVERY)
    before = scrape(exporter)
    jobs = [client.submit(png(10 * i)) for i in range(1, 4)]
    jobs.append(client.submit(image_pdf(plain_pages(4)), filename="four.pdf"))
    jobs.append(client.submit(b"not an image"))
    results = client.wait(jobs, timeout=120)
    assert [results[j]["status"] for j in jobs] == ["SUCCESS"] * 4 + ["FAILURE"]
    # A job's result is stored before its ending counts it, and a process writes its
    # counts within a second: read once every job's `ocr.job` line is written and the
    # jobs' and pages' counts have reached the exporter.
    node = worker.job_records(jobs)[jobs[0]]["node"]
    after: dict[str, list[tuple[dict[str, str], float]]] = {}

    def delta(name: str, **labels: str) -> float:
        return total(after, name, node=node, **labels) - total(before, name, node=node,
                                                                **labels)

    def counted() -> bool:
        after.clear()
        after.update(scrape(exporter))
        return delta("ocr_jobs_total", engine="fake") >= 5 and \
            delta("ocr_pages_total", engine="fake", source="ocr") >= 7

    eventually(counted, 30, "every job counted by the exporter", interval=0.5)

    assert delta("ocr_jobs_total", engine="fake", outcome="SUCCESS") == 4
    assert delta("ocr_jobs_total", engine="fake", outcome="FAILURE") == 1
    assert delta("ocr_pages_total", engine="fake", source="ocr") == 7
    assert delta("ocr_job_seconds_total", engine="fake", outcome="SUCCESS") > 0.25
    assert worker.proc is not None
    children = {str(c.pid) for c in psutil.Process(worker.proc.pid).children()}
    assert len(children) == 2
    # each child loaded its engine once
    assert total(after, "ocr_engine_loads_total", node=node, engine="fake") == 2
    assert total(after, "ocr_engine_load_seconds_total", node=node, engine="fake") > 0
    rss = {labels["pid"]: value for labels, value in after["ocr_child_rss_bytes"]
           if labels["node"] == node}
    assert set(rss) == children and min(rss.values()) > 20 * 2**20
    assert {labels["pid"] for labels, _ in after["ocr_child_engine_load_seconds"]} == children
    queues = {labels["queue"]: value for labels, value in after["ocr_queue_length"]}
    assert queues["ocr"] == 0 and {"ocr-batch", "ocr-tesseract", "ocr-mlx-vlm"} <= set(queues)


def test_one_log_line_per_job(worker: Worker, client: OcrClient) -> None:
    image = client.submit(png(30), filename="one.png")
    pdf = client.submit(image_pdf(plain_pages(3)), filename="three.pdf", mode="ocr")
    bad = client.submit(b"%PDF-1.7 broken", filename="bad.pdf")
    late = client.submit(png(31), filename="late.png", deadline=0.001)  # expires at once
    client.wait([image, pdf, bad, late], timeout=120)
    records = worker.job_records([image, pdf, bad, late])
    assert records[image] | {"seconds": 0} == {
        "id": image, "node": records[image]["node"], "client": client.client,
        "filename": "one.png", "pages": 1, "engine": "fake", "seconds": 0,
        "outcome": "SUCCESS", "code": None, "cached": False}
    # Every line names the job's client, the expired one's (ended by the parent) too.
    assert {records[job]["client"] for job in (pdf, bad, late)} == {client.client}
    assert records[image]["node"].startswith("ocrshot@") and records[image]["seconds"] > 0
    assert (records[pdf]["pages"], records[pdf]["outcome"]) == (3, "SUCCESS")
    assert records[pdf]["seconds"] >= 0.25
    assert (records[bad]["outcome"], records[bad]["code"]) == ("FAILURE", "corrupt_input")
    assert records[bad]["seconds"] >= 0  # a failed job's time counts too
    # logged by the worker parent, which never ran it
    assert (records[late]["outcome"], records[late]["code"], records[late]["filename"]) == (
        "FAILURE", "deadline_exceeded", "late.png")
    log = worker.log()
    for job in (image, pdf, bad, late):
        assert len(re.findall(rf'ocr\.job \{{"id": "{job}"', log)) == 1


def test_gauges_of_a_killed_child_are_dropped(exporter: str, worker: Worker,
                                              client: OcrClient) -> None:
    assert worker.proc is not None
    victim = psutil.Process(worker.proc.pid).children()[0]
    victim.kill()  # like the OOM killer: the child cannot clean up after itself
    victim.wait(10)

    def gone_and_replaced() -> bool:
        pids = {labels["pid"] for labels, _ in scrape(exporter).get("ocr_child_rss_bytes", [])}
        live = {str(c.pid) for c in psutil.Process(worker.proc.pid).children()}
        return str(victim.pid) not in pids and len(live) == 2

    # the worker parent checks its children on a heartbeat (every 5 s) once every
    # KEEP_INTERVAL (60 s): the next check may be that far off
    eventually(gone_and_replaced, KEEP_INTERVAL + 30, "the killed child's gauges to go")
    job = client.submit(png(77))
    assert client.wait([job], timeout=60)[job]["status"] == "SUCCESS"


def browser(profile: Path) -> list[str]:
    """Debian's headless chromium (`make test` installs it) and its flags: offline, quiet.

    Fails, never skips, without it: the browser tests are the only real-browser ones.
    """
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium "
                    "(apt-get install chromium)")
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
            "--window-size=1400,900", "--virtual-time-budget=5000"]


@pytest.fixture(scope="module")
def api(worker: Worker, redis_url: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path_factory.mktemp("api") / "api.log",
                       {"REDIS_URL": redis_url}).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_api_docs_page_renders_in_the_browser(api: ApiServer, tmp_path: Path) -> None:
    """The API's /docs page, its files served by the API itself, in headless chromium.

    Swagger UI's script must run and fetch /openapi.json for the operations to appear
    in the page: the DOM holds each route as a rendered operation block.
    """
    dom = subprocess.run([*browser(tmp_path / "profile"), "--dump-dom", f"{api.url}/docs"],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "swagger-ui" in dom.stdout and "OCR service" in dom.stdout, dom.stdout[-2000:]
    rendered = set(re.findall(r'data-path="([^"]+)"', dom.stdout))
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result", "/healthz"} <= \
        rendered, dom.stdout[-2000:]
    assert not re.search(r"https?://(?!127\.0\.0\.1)[\w.-]+/[^\"']*\.(?:js|css)", dom.stdout)


@pytest.mark.slow
def test_api_redoc_page_renders_in_the_browser(api: ApiServer, tmp_path: Path) -> None:
    """/redoc renders its operations under its own CSP (no unsafe-eval), in chromium."""
    dom = subprocess.run([*browser(tmp_path / "profile"), "--virtual-time-budget=10000",
                          "--dump-dom", f"{api.url}/redoc"],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "/v1/jobs/{job_id}/result" in dom.stdout, dom.stdout[-2000:]
    assert "Content Security Policy" not in dom.stderr, dom.stderr[-2000:]


@pytest.mark.slow
def test_flower_dashboard_screenshot(flower: str, worker: Worker, client: OcrClient,
                                     tmp_path: Path) -> None:
    """Headless Chromium's picture of Flower's workers page shows the worker."""
    jobs = [client.submit(png(40 + i)) for i in range(4)]
    client.wait(jobs, timeout=60)
    out = Path(SCREENSHOT).resolve() if SCREENSHOT else tmp_path / "flower.png"
    user, password = FLOWER_AUTH
    page = flower.replace("http://", f"http://{user}:{password}@") + "/workers"
    flags = browser(tmp_path / "profile")
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True,
                         text=True, timeout=120)
    assert worker_node(worker, jobs) in dom.stdout, dom.stderr[-2000:]
    # progress events come from the worker node, not from anonymous senders Flower
    # would list as workers of their own
    assert not re.search(r"gen\d+@", dom.stdout)
    shot = subprocess.run([*flags, f"--screenshot={out}", page],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and out.exists(), shot.stderr[-2000:]
    with Image.open(out) as image:
        assert image.size == (1400, 900)
        text = read_text(image)
    # the picture itself shows the worker: OCR it with the bundled tesseract
    assert "ocrshot@" in text.replace(" ", ""), text


def worker_node(worker: Worker, jobs: list[str]) -> str:
    return str(worker.job_records(jobs)[jobs[0]]["node"])


def read_text(image: Image.Image) -> str:
    from tasks.engines import RecognizeOptions, engine_class
    from tasks.settings import Settings

    settings = Settings.from_env({})
    engine = engine_class("tesseract", settings).load(settings)
    try:
        big = image.convert("L").resize((image.width * 2, image.height * 2))
        return engine.recognize(big, RecognizeOptions()).text
    finally:
        engine.close()


@pytest.fixture(scope="module")
def slow_worker(start_worker: Callable[..., Worker]) -> Worker:
    """A worker whose dark pages take long, with the Procfile's control worker beside it.

    The cancel is then served while the only pool child is busy.
    """
    env = {**FAKE_ENV, "OCR_ENGINE": "slow-on-dark", "OCR_QUEUES": "nowhere",
           "OCR_CONCURRENCY": "1", "OCR_PDF_DPI": "72"}
    start_worker(process="control", **env)
    return start_worker(**env)


def running_document(client: OcrClient) -> str:
    """A 5-page PDF whose first two pages are read and whose third hangs."""
    job = client.submit(image_pdf(plain_pages(5, dark=[3, 4, 5])), filename="slow.pdf",
                        engine="slow-on-dark")
    eventually(lambda: client.status(job).done >= 2, 60, "two pages read")
    return job


def check_cancelled(client: OcrClient, job: str) -> None:
    result = client.wait([job], timeout=30)[job]
    assert result["status"] == "CANCELLED", result
    assert [p["number"] for p in result["pages"]] == [1, 2]


def test_node_client_cancels(slow_worker: Worker, client: OcrClient, redis_url: str) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js client is not run")
    job = running_document(client)
    done = subprocess.run([node, str(ROOT / "clients" / "node" / "ocr_client.js"), "cancel",
                           "--redis", redis_url, job], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"id": job, "status": "cancelled"}
    check_cancelled(client, job)


def test_flower_api_cancels(flower: str, slow_worker: Worker, client: OcrClient) -> None:
    job = running_document(client)
    status, sent = http(f"{flower}/api/task/send-task/ocr.cancel",
                        {"kwargs": {"job_id": job}}, auth=FLOWER_AUTH)
    assert status == 200, sent
    reply = result_through_flower(flower, json.loads(sent)["task-id"])
    assert reply["result"] == {"job_id": job, "status": "cancelled"}, reply
    check_cancelled(client, job)
    # Flower ends it as every other caller does: CANCELLED, not PROGRESS forever.
    status_now = client.status(job)
    assert (status_now.status, status_now.done, status_now.total) == ("CANCELLED", 2, 5)

    def cancelled_in_flower() -> dict[str, Any] | None:
        found = json.loads(http(f"{flower}/api/task/info/{job}", auth=FLOWER_AUTH)[1])
        return found if found.get("state") == "CANCELLED" else None

    assert "2 pages kept" in str(eventually(cancelled_in_flower, 30,
                                          "Flower to show the job CANCELLED")["result"])
