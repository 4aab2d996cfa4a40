"""Queue mechanics through a real redis-server and real worker processes.

The workers load the fake engines of tests/fake_engines.py as plugins.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.client import OcrClient
from tests.harness import ROOT, Worker, corpus, fake_env, kill_all, make_client
from tests.image_fixtures import bomb_frame_tiff, png
from tests.pdf_fixtures import (
    broken_xref_pdf,
    huge_page_pdf,
    millions_of_pages_pdf,
    truncated_pdf,
)

FAKE_ENV = fake_env(OCR_CONCURRENCY="1")


@pytest.fixture(scope="module")
def fake_worker(start_worker: Callable[..., Worker], tmp_path_factory: pytest.TempPathFactory
                ) -> Worker:
    inbox = tmp_path_factory.mktemp("inbox")  # a drawn page: the module runs without the corpus
    (inbox / "page.png").write_bytes(png())
    return start_worker(**FAKE_ENV, OCR_ALLOWED_ROOTS=str(inbox))


def run_one(client: OcrClient, source: Path | bytes, **options: Any) -> dict[str, Any]:
    job = client.submit(source, **options)
    return client.wait([job], timeout=60)[job]


def send(client: OcrClient, **kwargs: Any) -> dict[str, Any]:
    """Send raw kwargs the way a foreign client would (no upload helper)."""
    job = client.app.send_task("ocr.document", kwargs=kwargs).id
    return client.wait([job], timeout=60)[job]


def test_children_load_once_and_recycle_after_n_tasks(own_redis_url: str,
                                                      tmp_path: Path) -> None:
    """On a worker and database of its own: the module's worker never recycles its child.

    (A recycled child's successor starts on billiard's next pool maintenance, up to 5 s
    later: the other tests' jobs would wait for it.)
    """
    worker = Worker(tmp_path / "worker.log", {"REDIS_URL": own_redis_url, **FAKE_ENV,
                                              "OCR_MAX_TASKS_PER_CHILD": "3"}).start()
    client = make_client(own_redis_url)
    try:
        image = corpus("scan_tess_phototest.tif")
        engines = [run_one(client, image)["engine"] for _ in range(7)]
    finally:
        client.close()
        kill_all([worker])
    assert [e["tasks_in_process"] for e in engines] == [1, 2, 3, 1, 2, 3, 1]
    pids = [e["pid"] for e in engines]
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]
    assert all(e["name"] == "fake" and e["model"] == "fake-1" for e in engines)
    loads = [line for line in worker.log().splitlines() if "engine loaded: fake" in line]
    for pid in set(pids):
        assert sum(f"(pid {pid})" in line for line in loads) == 1


def test_result_shape(fake_worker: Worker, client: OcrClient) -> None:
    result = run_one(client, corpus("edge_multiframe_g4.tiff"), pages="1,3")
    assert result["status"] == "SUCCESS" and result["id"]
    assert result["filename"] == "edge_multiframe_g4.tiff"
    assert [p["number"] for p in result["pages"]] == [1, 3]
    assert {p["source"] for p in result["pages"]} == {"ocr"}
    assert set(result["engine"]) == {"name", "model", "pid", "tasks_in_process",
                                     "load_seconds"}
    assert result["timings"]["total_seconds"] >= result["timings"]["ocr_seconds"] >= 0
    json.dumps(result)


@pytest.mark.parametrize("make_kwargs,code", [
    (lambda: {"data_b64": ""}, "bad_request"),
    (lambda: {"data_b64": base64.b64encode(b"hello, I am text").decode(),
              "filename": "scan.png"}, "unsupported_format"),
    (lambda: {"data_b64": _b64("bad_broken.png")}, "corrupt_input"),
    (lambda: {"data_b64": _b64("edge_decompression_bomb.gif")}, "image_too_large"),
    (lambda: {"data_b64": _b64("bad_invalid_header_eof.pdf")}, "corrupt_input"),
    (lambda: {"data_b64": _b64("edge_zero_pages.pdf")}, "no_pages"),
    (lambda: {"data_b64": _b64("edge_encrypted_pw_openpassword.pdf")}, "pdf_encrypted"),
    (lambda: {"data_b64": _b64("scan_tess_phototest.tif"), "pages": "2"}, "invalid_pages"),
    (lambda: {"data_b64": "%%%"}, "bad_request"),
    (lambda: {"blob": "ocr:blob:doesnotexist"}, "input_not_found"),
    (lambda: {"blob": "celery-task-meta-x"}, "bad_request"),
    (lambda: {"path": "/etc/passwd"}, "path_not_allowed"),
    (lambda: {"data_b64": "AAAA", "pickle": "x"}, "bad_request"),
    (lambda: {"data_b64": _enc(truncated_pdf(_raw("dig_tracemonkey_14p.pdf")))},
     "corrupt_input"),
    (lambda: {"data_b64": _enc(millions_of_pages_pdf())}, "corrupt_input"),
    (lambda: {"path": "/etc/passwd\0.png"}, "bad_request"),
    (lambda: {"data_b64": _enc(bomb_frame_tiff())}, "image_too_large"),
])
def test_bad_input_fails_with_a_code(fake_worker: Worker, client: OcrClient,
                                     make_kwargs: Callable[[], dict[str, Any]],
                                     code: str) -> None:
    job = client.app.send_task("ocr.document", kwargs=make_kwargs()).id
    result = client.wait([job], timeout=60)[job]
    assert result["status"] == "FAILURE"
    assert result["error"]["code"] == code, result
    assert result["error"]["retryable"] is False
    assert f"ocr.document[{job}] retry" not in fake_worker.log()  # it failed at once
    # the worker is alive and serves the next job
    assert run_one(client, corpus("scan_tess_phototest.tif"))["status"] == "SUCCESS"


def test_positional_arguments_are_a_bad_request(fake_worker: Worker,
                                                client: OcrClient) -> None:
    job = client.app.send_task("ocr.document", args=[_b64("scan_linn.png")]).id
    result = client.wait([job], timeout=60)[job]
    assert result["error"]["code"] == "bad_request"
    assert "keyword arguments only" in result["error"]["message"]


def _raw(name: str) -> bytes:
    return corpus(name).read_bytes()


def _enc(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _b64(name: str) -> str:
    return _enc(_raw(name))


def test_empty_upload(fake_worker: Worker, client: OcrClient) -> None:
    blob = client._blobs.put(b"")
    assert send(client, blob=blob)["error"]["code"] == "empty_input"


def test_recoverable_damage_is_repaired_and_read(fake_worker: Worker,
                                                 client: OcrClient) -> None:
    result = send(client, data_b64=_enc(broken_xref_pdf(_raw("dig_tracemonkey_14p.pdf"))))
    assert result["status"] == "SUCCESS" and result["page_count"] == 14
    assert "Trace-based" in result["text"]


def test_huge_page_is_rendered_at_a_capped_size(fake_worker: Worker,
                                                client: OcrClient) -> None:
    result = send(client, data_b64=_enc(huge_page_pdf()), mode="ocr")
    assert result["status"] == "SUCCESS", result
    width, height = map(int, result["text"].split()[1].split("x"))
    assert 30_000_000 < width * height <= 40_000_000  # OCR_MAX_RENDER_PIXELS


def test_path_input_inside_allowed_root(fake_worker: Worker, client: OcrClient) -> None:
    inbox = Path(fake_worker.env["OCR_ALLOWED_ROOTS"])
    assert send(client, path=str(inbox / "page.png"))["status"] == "SUCCESS"
    escaped = send(client, path=str(inbox / ".." / ".." / "etc" / "passwd"))
    assert escaped["error"]["code"] == "path_not_allowed"


def test_uploaded_blob_is_removed_after_the_job(fake_worker: Worker,
                                                client: OcrClient) -> None:
    blob = client._blobs.put(corpus("scan_tess_phototest.tif").read_bytes())
    assert send(client, blob=blob)["status"] == "SUCCESS"
    assert send(client, blob=blob)["error"]["code"] == "input_not_found"


def submit_cli(redis_url: str, *args: str, **env_extra: str
               ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.run([sys.executable, "submit.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_submit_cli_json_and_exit_codes(fake_worker: Worker, redis_url: str,
                                        tmp_path: Path) -> None:
    good, bad = corpus("scan_tess_phototest.tif"), corpus("bad_broken.png")
    done = submit_cli(redis_url, "--json", "--out", str(tmp_path), str(good), str(bad))
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["status"] for r in lines] == ["SUCCESS", "FAILURE"]
    assert lines[1]["error"]["code"] == "corrupt_input"
    assert (tmp_path / "scan_tess_phototest.txt").read_text() == lines[0]["text"]
    ok = submit_cli(redis_url, str(good))
    assert ok.returncode == 0 and ok.stdout.startswith("fake 640x480")
    assert submit_cli(redis_url, "--output", "docx", str(good)).returncode == 2
    assert submit_cli(redis_url).returncode == 2


def test_submit_cli_no_wait_then_wait(fake_worker: Worker, redis_url: str) -> None:
    sent = submit_cli(redis_url, "--json", "--no-wait", str(corpus("scan_linn.png")))
    assert sent.returncode == 0
    job = json.loads(sent.stdout)
    assert job["status"] == "PENDING" and set(job) == {"id", "status", "filename"}
    waited = submit_cli(redis_url, "wait", "--json", job["id"])
    assert waited.returncode == 0
    assert json.loads(waited.stdout)["id"] == job["id"]


def test_missing_local_file_is_a_failure_not_a_crash(fake_worker: Worker,
                                                     redis_url: str) -> None:
    done = submit_cli(redis_url, "--json", "/nonexistent/scan.png")
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["code"] == "input_not_found"


def test_client_refuses_oversize_upload(fake_worker: Worker, redis_url: str,
                                        tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 3_000_000)
    done = submit_cli(redis_url, "--json", str(big), OCR_MAX_INPUT_MB="1")
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["code"] == "input_too_large"


@pytest.fixture(scope="module")
def broken_worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**{**FAKE_ENV, "OCR_ENGINE": "broken", "OCR_QUEUES": "ocr-broken"})


def test_failed_load_makes_tasks_fail_fast(broken_worker: Worker, client: OcrClient) -> None:
    job = client.app.send_task("ocr.document", queue="ocr-broken",
                               kwargs={"data_b64": _b64("scan_tess_phototest.tif")}).id
    result = client.wait([job], timeout=30)[job]
    assert result["error"]["code"] == "engine_unavailable"
    assert "RuntimeError while loading" in result["error"]["message"]
    assert "engine load failed: broken" in broken_worker.log()
    assert broken_worker.proc is not None and broken_worker.proc.poll() is None


def test_foreign_python_client_by_task_name(fake_worker: Worker, redis_url: str) -> None:
    """docs/tasks.md's first example: plain Celery, no import of this project."""
    from celery import Celery

    app = Celery(broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json",
                    accept_content=["json"])
    job = app.send_task("ocr.document", kwargs={"data_b64": _b64("scan_linn.png"),
                                                "filename": "linn.png"}, queue="ocr")
    result = job.get(timeout=60)
    assert result["filename"] == "linn.png" and result["text"].startswith("fake 2550x3300")
    app.close()
