"""The OCRmyPDF engine plugin, as a user runs it.

OCRmyPDF 17 and the plugin are installed in a clean venv of their own (`make
ocrmypdf-plugin`: .venv-ocrmypdf); its `ocrmypdf` command runs against a running
service (real workers, the real HTTP API, Redis).

OCRmyPDF's own tesseract reads three pages of the corpus's scanned 6-page PDF once; the
plugin reads them by the HTTP API with a token and by the broker, each within 1 CER
point of it, with every page a job the workers logged, in the languages `-l` named
(`auto` without it, on the command line and through the Python API alike). A vlm-api
worker against the simulated inference server gives hOCR whose words carry the model's
text on tesseract's boxes. The HTTP API stopped while OCRmyPDF is mid-document (a page
read, the next held at the model), a service that was never up, a refused token and a failed page
end OCRmyPDF with one line, a non-zero exit and no output file; `--ocr-engine
tesseract|none` leaves OCRmyPDF to itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pymupdf
import pytest
import requests
from PIL import Image

from devkit.inference_server import SimulatedInferenceServer
from tests.api_server import ApiServer, create_token
from tests.cer import cer
from tests.harness import ROOT, Worker, corpus, eventually, free_port, ground_truth

pytestmark = pytest.mark.slow

VENV = ROOT / ".venv-ocrmypdf"
OCRMYPDF = VENV / "bin" / "ocrmypdf"
PLUGIN = ROOT / "integrations" / "ocrmypdf" / "ocrmypdf_ocr_queue"
SCAN = "scan_vicksburg_ocrlayer_6p.pdf"  # 6 scanned pages (with an old OCR layer)
PAGES = 3  # its first three (`scan`): several pages, each a job, read three times over
# Both sides the same: OCRmyPDF's default output (PDF/A by its own means, no Ghostscript
# needed), an old layer replaced, 2 pages at once.
COMMON = ["--force-ocr", "--jobs", "2", "--output-type", "pdf"]
# OCRmyPDF's own tesseract: a page may wait longer than its 180 s on a loaded machine,
# within `ocrmypdf`'s 600 s here; past it OCRmyPDF keeps the page without text.
OWN_TESSERACT = ["--tesseract-timeout", "540"]
SIMULATED_TEXT = "Siege of Vicksburg read by the simulated model"


def ready(server: ApiServer, queue: str) -> None:
    """Wait until the API's readiness sees a live worker on `queue`.

    The plugin checks it before any page; a worker's presence record follows its log's
    `ready` by up to one heartbeat.
    """
    eventually(lambda: requests.get(f"{server.url}/readyz", params={"queue": queue},
                                    timeout=10).json().get("ready"),
               60, f"a worker consuming {queue} at {server.url}/readyz")


def _installed_plugin() -> Path:
    """The plugin's folder in .venv-ocrmypdf; fails when missing or not this tree's."""
    if not OCRMYPDF.exists():
        pytest.fail("OCRmyPDF's venv is missing: run `make ocrmypdf-plugin` (`make test` does)")
    done = subprocess.run([str(VENV / "bin" / "python"), "-c", (
        "import importlib.metadata as m, ocrmypdf, ocrmypdf_ocr_queue as p\n"
        "print([e.value for e in m.entry_points(group='ocrmypdf')], ocrmypdf.__version__,"
        " p.__file__)")], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    entry_points, version, module = done.stdout.rsplit(" ", 2)
    assert "ocrmypdf_ocr_queue.plugin" in entry_points and version.startswith("17.")
    installed = Path(module.strip()).parent
    assert installed.parent.name == "site-packages"  # installed, not the checkout's
    for source in PLUGIN.glob("*.py"):
        if hashlib.sha256(source.read_bytes()).digest() != \
                hashlib.sha256((installed / source.name).read_bytes()).digest():
            pytest.fail(f"{source.name} changed since it was installed: run "
                        "`make ocrmypdf-plugin`")
    return installed


def _environment(env: dict[str, str] | None) -> dict[str, str]:
    """The environment without the service's settings and Python's paths, plus `env`.

    OMP_THREAD_LIMIT=1: OCRmyPDF's own tesseract runs one OpenMP thread, as the workers'
    and the benchmarks' do. Left to OCRmyPDF, a one-page PDF with `--jobs 2` gets two,
    whose spinning barriers on a loaded 2-core machine took one page past OCRmyPDF's
    180 s timeout (16 s with one thread), leaving an empty text layer.
    """
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("OCR_", "REDIS_", "PYTHON", "VIRTUAL_ENV"))}
    return {**clean, "OMP_THREAD_LIMIT": "1", **(env or {})}


def ocrmypdf(*args: str | Path, env: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`ocrmypdf ARGS` from the clean venv, outside the checkout.

    Nothing of the checkout is importable unless `env` puts it on PYTHONPATH.
    """
    return subprocess.run([str(OCRMYPDF), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd="/", env=_environment(env))


def start_ocrmypdf(*args: str | Path) -> subprocess.Popen[str]:
    """`ocrmypdf ARGS` as `ocrmypdf` runs it, started and left running."""
    return subprocess.Popen([str(OCRMYPDF), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/",
                            env=_environment(None))


def text_layer(pdf: Path) -> str:
    with pymupdf.open(pdf) as doc:
        return "\n".join(page.get_text() for page in doc)


def page_jobs(worker: Worker) -> list[dict[str, Any]]:
    """The worker log's `ocr.job` records of OCRmyPDF's page images."""
    records = (json.loads(m) for m in re.findall(r"ocr\.job (\{.*\})$", worker.log(), re.M))
    return [r for r in records if re.match(r"\d+_", r.get("filename") or "")]


def jobs_since(worker: Worker, before: int, count: int) -> list[dict[str, Any]]:
    """The `count` page jobs logged after the first `before`.

    A job's line follows its stored result: OCRmyPDF may have its answer a moment
    before the line is written.
    """
    eventually(lambda: len(page_jobs(worker)) >= before + count, 60,
               lambda: f"{count} page jobs in the worker's log: {page_jobs(worker)[before:]}")
    return page_jobs(worker)[before:]


@pytest.fixture(scope="module")
def installed() -> Path:
    return _installed_plugin()


@pytest.fixture(scope="module")
def tesseract_worker(start_worker: Callable[..., Worker], installed: Path,
                     client: Any) -> Worker:
    worker = start_worker(OCR_CONCURRENCY="2", OCR_CACHE_RESULTS="0")
    # The broker path checks the presence records before any page.
    eventually(lambda: any("ocr" in queues for queues in client.live_queues().values()),
               60, "the worker's presence record")
    return worker


class GatedSimulator(SimulatedInferenceServer):
    """The simulated inference server, with a gate a test closes from one request on.

    `hold_from(n)`: the request that arrives n-th (counting from 0 over the server's
    life) and every later one wait until `open_gate()` (at most `hold_timeout`).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._held_from: int | None = None
        self._gate = threading.Event()

    def hold_from(self, arrival: int) -> None:
        self._gate.clear()
        self._held_from = arrival

    def open_gate(self) -> None:
        self._held_from = None
        self._gate.set()

    def _wait(self, arrived: float) -> None:
        held_from = self._held_from
        if held_from is not None and self.arrivals.index(arrived) >= held_from:
            self._gate.wait(self.hold_timeout)
        super()._wait(arrived)


@pytest.fixture(scope="module")
def simulated() -> Iterator[GatedSimulator]:
    """The vlm-api workers' inference server: a simulator answering every page at once."""
    server = GatedSimulator(text=SIMULATED_TEXT).start()
    yield server
    server.open_gate()
    server.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str, tesseract_worker: Worker,
        simulated: SimulatedInferenceServer) -> Iterator[tuple[ApiServer, str]]:
    # The API's readiness checks the vlm-api workers' inference server from its host.
    server = ApiServer(tmp_path_factory.mktemp("api") / "api.log",
                       {"REDIS_URL": redis_url, "OCR_VLM_API_URL": simulated.url,
                        "OCR_VLM_API_MODEL": "simulated-vlm"}).start()
    try:
        ready(server, "ocr")
        yield server, create_token(redis_url, "ocrmypdf")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def vlm_worker(start_worker: Callable[..., Worker], api: tuple[ApiServer, str],
               simulated: GatedSimulator) -> Worker:
    """A vlm-api worker (queue ocr-vlm-api) reading pages at the simulated server."""
    worker = start_worker(OCR_ENGINE="vlm-api", OCR_VLM_API_URL=simulated.url,
                          OCR_VLM_API_MODEL="simulated-vlm", OCR_QUEUES="ocr-vlm-api",
                          OCR_CONCURRENCY="1", OCR_CACHE_RESULTS="0")
    ready(api[0], "ocr-vlm-api")
    return worker


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scan's first PAGES pages, as a PDF of their own (their old OCR layer kept)."""
    path = tmp_path_factory.mktemp("scan") / "scan.pdf"
    with pymupdf.open(corpus(SCAN)) as doc, pymupdf.open() as part:
        part.insert_pdf(doc, from_page=0, to_page=PAGES - 1)
        part.save(path)
    return path


def scan_truth() -> str:
    """The ground truth of `scan`'s pages (the corpus' pages are separated by form feeds)."""
    return "\f".join(ground_truth(SCAN).split("\f")[:PAGES])


@pytest.fixture(scope="module")
def own_tesseract(tmp_path_factory: pytest.TempPathFactory, installed: Path,
                  scan: Path) -> float:
    """The CER of OCRmyPDF's own tesseract on the scan (the plugin present, not chosen)."""
    out = tmp_path_factory.mktemp("own") / "out.pdf"
    done = ocrmypdf(*COMMON, *OWN_TESSERACT, "-l", "eng", scan, out)
    assert done.returncode == 0, done.stderr
    assert "ocr-queue" not in done.stderr
    return cer(scan_truth(), text_layer(out))


def test_http_api_with_a_token_reads_every_page_as_its_tesseract_does(
        api: tuple[ApiServer, str], tesseract_worker: Worker, own_tesseract: float,
        client: Any, scan: Path, tmp_path: Path) -> None:
    server, token = api
    # The HTTP path imports nothing of the service's stack: these would fail if it did.
    poison = tmp_path / "poison"
    poison.mkdir()
    for name in ("celery", "redis", "kombu", "pymupdf", "fitz", "tasks"):
        (poison / f"{name}.py").write_text(f"raise ImportError('{name} imported')\n")
    out = tmp_path / "out.pdf"
    before = len(page_jobs(tesseract_worker))
    done = ocrmypdf(*COMMON, "-l", "eng", "--sidecar", tmp_path / "out.txt",
                    "--ocr-queue-url", server.url, "--ocr-queue-token", token,
                    scan, out, env={"PYTHONPATH": str(poison)})
    assert done.returncode == 0, done.stderr
    got = cer(scan_truth(), text_layer(out))
    assert abs(got - own_tesseract) <= 0.01, (got, own_tesseract)
    assert cer(scan_truth(), (tmp_path / "out.txt").read_text()) <= own_tesseract + 0.01
    jobs = jobs_since(tesseract_worker, before, PAGES)
    assert len(jobs) == PAGES, jobs
    assert {(j["engine"], j["outcome"], j["pages"]) for j in jobs} == {("tesseract",
                                                                        "SUCCESS", 1)}
    assert {client.result(j["id"])["lang"] for j in jobs} == {"eng"}  # -l eng


def test_broker_url_from_the_environment_reads_every_page(
        redis_url: str, tesseract_worker: Worker, own_tesseract: float,
        client: Any, scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.pdf"
    before = len(page_jobs(tesseract_worker))
    # OCR_QUEUE_URL as paperless-ngx would set it; no -l: each page lang=auto.
    done = ocrmypdf(*COMMON, scan, out,
                    env={"OCR_QUEUE_URL": redis_url, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    got = cer(scan_truth(), text_layer(out))
    assert abs(got - own_tesseract) <= 0.01, (got, own_tesseract)
    jobs = jobs_since(tesseract_worker, before, PAGES)
    assert len(jobs) == PAGES and {j["outcome"] for j in jobs} == {"SUCCESS"}, jobs
    assert {client.result(j["id"])["lang"] for j in jobs} == {"auto"}


def test_python_api_call_as_paperless_makes_it(api: tuple[ApiServer, str],
                                               tesseract_worker: Worker, client: Any,
                                               tmp_path: Path) -> None:
    """`ocrmypdf.ocr(**args)` as paperless-ngx calls it, then with `"language": null`.

    Threads, its language, a sidecar, and the plugin's options merged last as
    PAPERLESS_OCR_USER_ARGS would add them (docs/ocrmypdf.md): the page's job has that
    language. The same call with `"language": null` among the user arguments (in the
    same process) is `lang=auto`, as the command line without `-l` is.
    """
    server, token = api
    before = len(page_jobs(tesseract_worker))
    user_args = {"ocr_queue_url": server.url, "ocr_queue_token": token}
    code = ("import json, sys, ocrmypdf\n"
            "ours = dict(use_threads=True, jobs=1, language='eng', output_type='pdf',"
            " progress_bar=False, force_ocr=True)\n"
            "user = json.loads(sys.argv[4])\n"
            "code = ocrmypdf.ocr(sys.argv[1], sys.argv[2], sidecar=sys.argv[3],"
            " **{**ours, **user})\n"
            "sys.exit(code or ocrmypdf.ocr(sys.argv[1], sys.argv[2] + '.auto.pdf',"
            " **{**ours, **user, 'language': None}))")
    out, sidecar = tmp_path / "archive.pdf", tmp_path / "sidecar.txt"
    done = subprocess.run([str(VENV / "bin" / "python"), "-c", code,
                           str(corpus("scan_linn_skew.pdf")), str(out), str(sidecar),
                           json.dumps(user_args)], capture_output=True, text=True,
                          timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr
    text = sidecar.read_text()
    assert "32 Track MIDI Sequence Recorder" in text and "Oxnard Street" in text, text
    jobs = jobs_since(tesseract_worker, before, 2)
    assert [(j["engine"], j["outcome"]) for j in jobs] == [("tesseract", "SUCCESS")] * 2
    assert [client.result(j["id"])["lang"] for j in jobs] == ["eng", "auto"]


def test_rotate_pages_asks_the_services_orientation_check(
        api: tuple[ApiServer, str], tesseract_worker: Worker, tmp_path: Path) -> None:
    server, token = api
    name = "scan_dh_lorem_ipsum.pdf"
    upside_down = tmp_path / "upside-down.pdf"
    with pymupdf.open(corpus(name)) as doc, pymupdf.open() as out:
        pixmap = doc[0].get_pixmap(dpi=200)
        image = Image.frombytes("RGB", (pixmap.width, pixmap.height), pixmap.samples)
        buffer = io.BytesIO()
        image.rotate(180).save(buffer, "PNG")
        page = out.new_page(width=doc[0].rect.width, height=doc[0].rect.height)
        page.insert_image(page.rect, stream=buffer.getvalue())
        out.save(upside_down)
    before = len(page_jobs(tesseract_worker))
    out = tmp_path / "out.pdf"
    done = ocrmypdf(*COMMON, "--rotate-pages", "-l", "eng", "--ocr-queue-url", server.url,
                    "--ocr-queue-token", token, upside_down, out)
    assert done.returncode == 0, done.stderr
    # OCRmyPDF's log of the angle the plugin gave, and the page it made: upright (its
    # first words at the top; on the upside-down page they were at the bottom).
    assert "page is facing ⇩, confidence 15.00 - will rotate" in done.stderr, done.stderr
    with pymupdf.open(out) as doc:
        words = doc[0].get_text("words")
        first = ground_truth(name).split()[0]
        assert [w[1] < doc[0].rect.height / 3 for w in words if w[4] == first][:1] == [True]
    assert cer(ground_truth(name), text_layer(out)) < 0.05
    # Two jobs for the page: the orientation check on OCRmyPDF's preview, then the read.
    assert len(jobs_since(tesseract_worker, before, 2)) == 2


def test_vlm_api_page_gives_hocr_with_the_models_words_on_boxes(
        api: tuple[ApiServer, str], vlm_worker: Worker, simulated: GatedSimulator,
        tmp_path: Path) -> None:
    server, token = api
    page = tmp_path / "page.pdf"
    with pymupdf.open(corpus(SCAN)) as doc, pymupdf.open() as one:
        one.insert_pdf(doc, from_page=0, to_page=0)
        one.save(page)
    out = tmp_path / "out.pdf"
    work = tmp_path / "work"  # OCRmyPDF's work folder, kept, under TMPDIR
    work.mkdir()
    done = ocrmypdf(*COMMON, "--keep-temporary-files", "--ocr-queue-url", server.url,
                    "--ocr-queue-token", token, "--ocr-queue-engine", "vlm-api",
                    page, out, env={"TMPDIR": str(work)})
    assert done.returncode == 0, done.stderr
    assert simulated.requests, "the inference server read no page"
    assert " ".join(text_layer(out).split()) == SIMULATED_TEXT
    # The hOCR OCRmyPDF was handed: the model's words, each on a box of the page.
    hocr = next(work.glob("*/*ocr_hocr.hocr")).read_text()
    words = [w for w in ET.fromstring(hocr).iter() if w.get("class") == "ocrx_word"]
    assert " ".join("".join(w.itertext()) for w in words) == SIMULATED_TEXT
    page_box = re.search(r"bbox 0 0 (\d+) (\d+)", hocr)
    assert page_box and int(page_box[1]) > 1000
    for word in words:
        x0, y0, x1, y1 = map(int, re.search(r"bbox (\d+) (\d+) (\d+) (\d+)",
                                            word.get("title", "")).groups())  # type: ignore[union-attr]
        assert 0 <= x0 < x1 <= int(page_box[1]) and 0 <= y0 < y1 <= int(page_box[2])


def test_api_stopped_mid_document_ends_ocrmypdf_with_one_line_and_no_output(
        redis_url: str, api: tuple[ApiServer, str], vlm_worker: Worker,
        simulated: GatedSimulator, tmp_path: Path) -> None:
    """The HTTP API stops while OCRmyPDF is mid-document: exit 3, one line, no PDF.

    An API process of its own, on the module's Redis and workers (the module's API
    keeps serving the other tests). OCRmyPDF reads the 6-page scan one page at a time
    through the vlm-api worker, whose model answers page 1 and holds page 2: the API is
    stopped with page 1 read and page 2 in flight. Page 2's job still ends once the
    model answers, read by nobody.
    """
    _, token = api
    own = ApiServer(tmp_path / "api.log", {"REDIS_URL": redis_url,
                                           "OCR_VLM_API_URL": simulated.url,
                                           "OCR_VLM_API_MODEL": "simulated-vlm"}).start()
    run = None
    out = tmp_path / "out.pdf"
    before = len(page_jobs(vlm_worker))
    arrivals = len(simulated.arrivals)
    simulated.hold_from(arrivals + 1)  # page 1's request passes, page 2's waits
    try:
        ready(own, "ocr-vlm-api")
        run = start_ocrmypdf("--force-ocr", "--jobs", "1", "--output-type", "pdf",
                             "--ocr-queue-url", own.url, "--ocr-queue-token", token,
                             "--ocr-queue-engine", "vlm-api", corpus(SCAN), out)

        def mid_document() -> bool:
            if run.poll() is not None:
                raise AssertionError(f"ocrmypdf ended first: {run.communicate()}")
            return len(simulated.arrivals) >= arrivals + 2 and \
                len(page_jobs(vlm_worker)) > before

        eventually(mid_document, 120, "page 1 read and page 2 held at the model")
        # Stopped as a supervisor stops it, with a short grace: on SIGTERM uvicorn waits
        # for open responses, and page 2's event stream is one, so SIGKILL ends it.
        own.stop_grace = 2.0
        own.stop()
        _, stderr = run.communicate(timeout=120)
    finally:
        simulated.open_gate()
        own.stop()
        if run is not None and run.poll() is None:
            run.kill()
            run.communicate()
    lines = [line for line in stderr.splitlines() if "ocr-queue:" in line]
    assert run.returncode == 3 and len(lines) == 1, stderr
    assert f"the OCR service at {own.url}" in lines[0], stderr
    assert "Traceback" not in stderr and not out.exists()
    # The two pages' jobs end SUCCESS (page 2 once the model answers): nothing of this
    # run is left to the next test.
    jobs = jobs_since(vlm_worker, before, 2)
    assert [j["outcome"] for j in jobs] == ["SUCCESS", "SUCCESS"], jobs


def test_failures_end_ocrmypdf_with_one_line_and_no_output(
        api: tuple[ApiServer, str], tmp_path: Path) -> None:
    server, token = api
    pool = ThreadPoolExecutor(7)
    page = corpus("scan_linn_skew.pdf")
    out, nothing_read = tmp_path / "out.pdf", tmp_path / "none.pdf"
    down = f"http://127.0.0.1:{free_port()}"  # a service that was never up
    cases = [
        (["--ocr-queue-url", down, "--ocr-queue-token", token], 3,
         f"cannot reach the OCR service at {down}"),
        (["--ocr-queue-url", server.url, "--ocr-queue-token", "ocr_not-a-token"], 1,
         "refused the token"),
        (["--ocr-queue-url", "redis://127.0.0.1:1/0"], 3, "cannot reach Redis"),
        (["--ocr-queue-url", server.url, "--ocr-queue-token", token, "--pdf-renderer",
          "sandwich"], 1, "not a text-only PDF"),
        (["--ocr-queue-url", server.url, "--ocr-queue-token", token, "-l", "xyz"], 7,
         "page 1: unknown_language"),
    ]
    # All at once (each its own output path): they share nothing.
    runs = [(args, code, message, tmp_path / f"out{n}.pdf", pool.submit(
                ocrmypdf, *COMMON, *args, page, tmp_path / f"out{n}.pdf",
                env={"PYTHONPATH": str(ROOT)}))
            for n, (args, code, message) in enumerate(cases)]
    # --ocr-engine tesseract or none with a URL set: the plugin returns no engine, and
    # OCRmyPDF reads the page itself, or reads nothing (no text layer at all).
    own = pool.submit(ocrmypdf, *COMMON, *OWN_TESSERACT, "--ocr-engine", "tesseract", page, out,
                      env={"OCR_QUEUE_URL": down})
    none = pool.submit(ocrmypdf, *COMMON, "--ocr-engine", "none", page, nothing_read,
                       env={"OCR_QUEUE_URL": down})
    for args, code, message, output, future in runs:
        done = future.result()
        lines = [line for line in done.stderr.splitlines() if "ocr-queue:" in line]
        assert done.returncode == code and len(lines) == 1 and message in lines[0], \
            (args, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr and not output.exists()
    done = own.result()
    assert done.returncode == 0 and "ocr-queue" not in done.stderr, done.stderr
    assert "Oxnard Street" in text_layer(out)
    done = none.result()
    pool.shutdown()
    assert done.returncode == 0 and "ocr-queue" not in done.stderr, done.stderr
    assert nothing_read.exists() and text_layer(nothing_read).strip() == ""
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
