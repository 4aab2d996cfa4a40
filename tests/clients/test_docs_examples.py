"""Every `sh` example of README.md and docs/http-api.md runs as written (issue 39).

The service is started as `make run` starts it (scripts/supervise.py with the real
Procfile, no REDIS_URL, no OCR_* setting: its defaults), in a checkout of its own: a
directory of links to this repository's files beside a `shared/corpus` link, so that
`var/` (the project's own Redis, its var/redis-url) and every file an example writes
land there and not in this checkout. Two things differ from a plain `make run`, both
through the environment a user would set: the processes are `redis worker control api`
(make run's PROCESSES variable: no Flower, beat or metrics, which no example uses) and
the API listens on a free port (`API_PORT`), which the examples read from `API`.

Each fenced `sh` block runs with `bash -euo pipefail` from the checkout's root, as
pasted; a block marked `<!-- not run: REASON -->` is skipped and must say why.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymupdf
import pytest
import requests
from PIL import Image

from tests.harness import CORPUS, ROOT, VENV_BIN, eventually, free_port
from tests.pdf_fixtures import image_pdf

pytestmark = pytest.mark.slow
DOCS = ("README.md", "docs/http-api.md")
BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^\n]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)\n```",
                   re.DOTALL)


def sh_blocks(name: str) -> list[tuple[str, str | None]]:
    """The `sh` blocks of a document: (body, why it is not run or None)."""
    text = (ROOT / name).read_text()
    return [(m["body"], m["why"]) for m in BLOCK.finditer(text) if m["lang"] == "sh"]


def test_every_skipped_example_says_why() -> None:
    for name in DOCS:
        blocks = sh_blocks(name)
        assert blocks, name
        assert all(why is None or why.strip() for _, why in blocks)
        assert any(why is None for _, why in blocks), f"{name}: no example is run"


class Service:
    """`make run` in a checkout of links: the Procfile under scripts/supervise.py."""

    def __init__(self, checkout: Path) -> None:
        self.checkout = checkout
        self.api = f"http://127.0.0.1:{free_port()}"
        self.log = checkout / "make-run.log"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OCR_", "REDIS_", "API_", "FLOWER_", "METRICS_"))}
        env.update(PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}",
                   API_PORT=self.api.rsplit(":", 1)[1],
                   WORKER_NAME=f"docs-{uuid.uuid4().hex[:6]}")
        self.env = env
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "scripts/supervise.py", "redis", "worker", "control", "api"],
                cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return requests.get(f"{self.api}/readyz?queue=ocr", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    base = tmp_path_factory.mktemp("user")
    checkout = base / "checkout"
    checkout.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("var", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
            (checkout / entry.name).symlink_to(entry)
    (base / "shared").mkdir()
    (base / "shared" / "corpus").symlink_to(CORPUS)
    # "a PDF named report.pdf here": three scanned pages
    scan = Image.open(CORPUS / "scan_linn.png").convert("L")
    (checkout / "report.pdf").write_bytes(image_pdf([scan, scan, scan]))
    running = Service(checkout)
    try:
        eventually(running.ready, 180, lambda: "the service to be ready:\n"
                   + running.log.read_text()[-3000:])
        yield running
    finally:
        running.stop()


def run_block(service: Service, body: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in service.env.items() if k != "API_PORT"}
    env["API"] = service.api  # the examples' own override: API=${API:-http://127.0.0.1:8000}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=service.checkout,
                          env=env, capture_output=True, text=True, timeout=300)


def test_readme_examples_run_as_written(service: Service) -> None:
    ran = 0
    for body, why in sh_blocks("README.md"):
        if why is not None:
            continue
        done = run_block(service, body)
        assert done.returncode == 0, (body, done.stdout[-2000:], done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        ran += 1
        if "submit.py $CORPUS/scan_linn.png" in body:
            assert "Linn Electronics" in done.stdout
            records = [json.loads(line) for line in done.stdout.splitlines()
                       if line.startswith("{")]
            assert [r["status"] for r in records] == ["SUCCESS"] * 3, records
            assert re.search(r"^scan_dh_lorem_ipsum\.pdf: SUCCESS 1/1 pages", done.stdout, re.M)
    assert ran >= 1
    # `make run` said which Redis, in one line, and submit.py found it (var/redis-url).
    said = [line for line in service.log.read_text().splitlines() if "redis: the project's" in line]
    assert len(said) == 1, service.log.read_text()[-2000:]


def test_http_api_examples_run_as_written(service: Service) -> None:
    blocks = [body for body, why in sh_blocks("docs/http-api.md") if why is None]
    assert len(blocks) == 2
    tokens, curl = blocks
    done = run_block(service, tokens)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["token"].startswith("ocr_")
    assert "revoked billing" in done.stdout
    done = run_block(service, curl)
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert json.loads(lines[0]) == {"status": "SUCCESS", "progress": {"done": 2, "total": 2},
                                    "error": None}
    assert lines[1] == "SUCCESS"  # the cancel of a job that had ended: its status
    assert json.loads(lines[2]) == {"status": "ok"} and json.loads(lines[3])["ready"]
    events = (service.checkout / "events.txt").read_text()
    assert events.rstrip().splitlines()[-2] == "event: end"
    assert (service.checkout / "report.txt").read_text().count("\f") == 1  # two pages
    # pages=1-2 with output=pdf: the whole input, a text layer on the pages read
    with pymupdf.open(service.checkout / "report.ocr.pdf") as pdf:
        assert pdf.page_count == 3
        assert [bool(page.get_text().strip()) for page in pdf] == [True, True, False]
