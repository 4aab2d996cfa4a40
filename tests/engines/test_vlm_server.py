"""The inference server of the vlm-api engine as part of the service.

The Procfile's `vlm-server`, the readiness of vlm-api workers, and the model audit of a
vlm-api host.

Units: the `vlm-server` decision (serve, idle, fail) and the light server check
against a small HTTP server of the test's own. Slow: the real `vlm-server` process
(mlx_vlm.server with the tiny offline model of devkit/tiny_vlm.py), real workers started
as the Procfile starts them, the real API process and `submit.py`, with the server down
and up.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests

from devkit.inference_server import SERVER_ENV, VlmServer
from tasks.client import OcrClient
from tasks.inference_server import MODEL_MISSING, QUEUE, check_server, server_plan
from tasks.models.locate import served_model
from tasks.models.registry import ModelRegistry
from tasks.operator_console import OperatorConsole
from tasks.settings import Settings
from tests.api_server import ApiServer, create_token
from tests.harness import (
    ROOT,
    VENV_BIN,
    Worker,
    corpus,
    eventually,
    free_port,
    waits_for_a_signal,
)

SCRIPT = ROOT / "scripts" / "run_vlm_server.py"


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


def model_folder(models: Path, name: str) -> Path:
    """A folder the locator accepts as a model (config.json), no weights needed."""
    (models / name).mkdir(parents=True, exist_ok=True)
    (models / name / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    return models / name


# --- the vlm-server decision ------------------------------------------------------

def test_other_engines_idle_and_say_why() -> None:
    plan = server_plan(settings(OCR_ENGINE="tesseract"))
    assert plan.action == "idle" and "OCR_ENGINE is 'tesseract'" in plan.reason
    assert plan.argv == ()
    plan = server_plan(settings(OCR_ENGINE="auto"))
    assert plan.action == "idle"


def test_a_server_elsewhere_idles(tmp_path: Path) -> None:
    model_folder(tmp_path, "m")
    plan = server_plan(settings(OCR_ENGINE="vlm-api", OCR_MODEL_DIR=str(tmp_path),
                                OCR_MODEL="m", OCR_VLM_API_URL="http://gpu:8000/v1"))
    assert plan.action == "idle" and "http://gpu:8000/v1" in plan.reason


def test_vlm_api_serves_the_local_model_on_loopback(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "m")
    chosen = settings(OCR_ENGINE="vlm-api", OCR_MODEL_DIR=str(tmp_path), OCR_MODEL="m",
                      OCR_VLM_SERVER_PORT="18999")
    plan = server_plan(chosen, python="/py")
    assert plan.action == "serve"
    assert plan.argv == ("/py", "-m", "mlx_vlm.server", "--model", str(folder.resolve()),
                         "--host", "127.0.0.1", "--port", "18999")
    assert chosen.vlm_api_base == "http://127.0.0.1:18999/v1"
    # mlx_vlm.server names its model by --model; any other name would make it load
    # (offline: fail to load) that name, so requests name the folder.
    assert served_model(chosen) == str(folder.resolve())


def test_served_model_name_elsewhere() -> None:
    assert served_model(settings(OCR_ENGINE="vlm-api", OCR_MODEL="org/model",
                                 OCR_VLM_API_URL="http://gpu:8000/v1/")) == "org/model"
    assert served_model(settings(OCR_ENGINE="vlm-api", OCR_VLM_API_MODEL="Qwen/Qwen2.5-VL",
                                 OCR_MODEL="m")) == "Qwen/Qwen2.5-VL"
    assert settings(OCR_VLM_API_URL="http://gpu:8000/v1/").vlm_api_base == "http://gpu:8000/v1"


def test_a_missing_model_fails_with_a_code(tmp_path: Path) -> None:
    plan = server_plan(settings(OCR_ENGINE="vlm-api", OCR_MODEL_DIR=str(tmp_path),
                                OCR_MODEL="absent"))
    assert plan.action == "fail" and plan.reason.startswith(f"{MODEL_MISSING}: ")
    assert str(tmp_path / "absent") in plan.reason and "never downloaded" in plan.reason
    plan = server_plan(settings(OCR_ENGINE="vlm-api", OCR_MODEL_DIR=str(tmp_path)))
    assert plan.action == "fail" and "needs OCR_MODEL" in plan.reason
    (tmp_path / "weightless").mkdir()  # a folder without config.json is no model
    plan = server_plan(settings(OCR_ENGINE="vlm-api", OCR_MODEL_DIR=str(tmp_path),
                                OCR_MODEL="weightless"))
    assert plan.action == "fail"


def _script_env(**env: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OCR_", "REDIS_"))}
    return {**inherited, "PYTHONPATH": str(ROOT), **env}


def test_the_process_idles_until_stopped() -> None:
    proc = subprocess.Popen([sys.executable, str(SCRIPT)], cwd=ROOT, text=True,
                            env=_script_env(OCR_ENGINE="tesseract"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("vlm-server: idle: OCR_ENGINE is 'tesseract'"), line
    # idle: it waits for its stop (the supervisor would stop everything on an exit)
    eventually(lambda: waits_for_a_signal(proc.pid), 30, "vlm-server waiting for a signal",
               interval=0.05)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert proc.stdout.read() == ""  # said once


def test_the_process_exits_coded_without_its_model(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, text=True, timeout=60,
                          capture_output=True,
                          env=_script_env(OCR_ENGINE="vlm-api", OCR_MODEL="absent",
                                          OCR_MODEL_DIR=str(tmp_path)))
    assert done.returncode == 2
    assert done.stdout.startswith(f"vlm-server: {MODEL_MISSING}: model 'absent'")
    assert len(done.stdout.splitlines()) == 1 and done.stderr == ""


# --- the light server check -----------------------------------------------------

class _Models(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).seen.append(self.headers.get("Authorization"))
        body = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()
        self.send_response(type(self).status if self.path == "/v1/models" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def models_server() -> Iterator[tuple[int, type[_Models]]]:
    handler = type("Models", (_Models,), {"status": 200, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_check_server_answers_and_sends_the_key(models_server: tuple[int, type]) -> None:
    port, handler = models_server
    url = f"http://127.0.0.1:{port}/v1"
    check = check_server(settings(OCR_VLM_API_URL=url, OCR_VLM_API_KEY="s3cret"))
    assert check.ok and check.message == "" and check.url == url
    assert handler.seen == ["Bearer s3cret"]
    handler.status = 401
    check = check_server(settings(OCR_VLM_API_URL=url, OCR_VLM_API_KEY="s3cret"))
    assert not check.ok and check.detail == "HTTP 401 to GET /models"
    assert "s3cret" not in check.message and url in check.message
    assert check_server(settings(OCR_VLM_SERVER_PORT=str(port))).ok is False  # 401 still


def test_check_server_down() -> None:
    check = check_server(settings(OCR_VLM_SERVER_PORT=str(free_port())), timeout=2)
    assert not check.ok and check.detail == "ConnectionRefusedError"
    assert check.message.startswith("the inference server at http://127.0.0.1:")


# --- through the real processes (slow) -------------------------------------------

MODEL = "old_tiny"  # the prune prefix `old_`: pruned unless something keeps it


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model (built in a subprocess: no MLX in this process) and a spare."""
    models = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, "-m", "devkit.tiny_vlm", str(models / MODEL)],
                   cwd=ROOT, check=True, timeout=300, capture_output=True,
                   env={**os.environ, **SERVER_ENV})
    return models


@pytest.fixture(scope="module")
def vlm_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def vlm_env(model_dir: Path, vlm_port: int) -> dict[str, str]:
    return {"OCR_ENGINE": "vlm-api", "OCR_MODEL_DIR": str(model_dir), "OCR_MODEL": MODEL,
            "OCR_VLM_SERVER_PORT": str(vlm_port), **SERVER_ENV}


@pytest.fixture(scope="module")
def vlm_worker(start_worker: Callable[..., Worker], vlm_env: dict[str, str]) -> Worker:
    """A vlm-api worker; besides its engine queue it serves `ocr-shared`, not `ocr`."""
    return start_worker(**vlm_env, OCR_QUEUES="ocr-shared", OCR_CONCURRENCY="1",
                        OCR_MODEL_HEARTBEAT_SECONDS="0.5")


@pytest.fixture(scope="module")
def tesseract_worker(start_worker: Callable[..., Worker], model_dir: Path) -> Worker:
    """Serves `ocr` (so it runs the audit) and `ocr-shared`; no OCR_MODEL of its own."""
    return start_worker(OCR_ENGINE="tesseract", OCR_MODEL_DIR=str(model_dir),
                        OCR_QUEUES="ocr,ocr-shared", OCR_CONCURRENCY="1")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
        vlm_env: dict[str, str]) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path_factory.mktemp("api") / "api.log",
                       {"REDIS_URL": redis_url, **vlm_env}).start()
    yield server
    server.stop()


def _ready(api: ApiServer, queue: str, want: bool | None,
           timeout: float = 30) -> requests.Response:
    """/readyz for `queue` once its `inference_server` is `want` (past the 5 s cache).

    Asked with a client's token: the answer then names the workers.
    """
    token = create_token(api.env["REDIS_URL"], f"ready-{uuid.uuid4().hex[:8]}")

    def answer() -> tuple[requests.Response] | None:  # a 503 Response is false
        got = requests.get(f"{api.url}/readyz", params={"queue": queue}, timeout=30,
                           headers={"Authorization": f"Bearer {token}"})
        return (got,) if got.json().get("inference_server") is want else None

    (ready,) = eventually(answer, timeout, f"/readyz of {queue} with inference_server {want}",
                          interval=0.5)
    return ready


def _submit(redis_url: str, vlm_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCR_", "REDIS_"))}
    env.update(vlm_env, REDIS_URL=redis_url, PYTHONPATH=str(ROOT),
               PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}")
    return subprocess.run([sys.executable, "submit.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_readiness_says_when_the_server_is_down_then_up(
        vlm_worker: Worker, tesseract_worker: Worker, api: ApiServer, redis_url: str,
        vlm_env: dict[str, str], vlm_port: int, tmp_path: Path) -> None:
    down = _ready(api, QUEUE, False)
    assert down.status_code == 503, down.text
    body = down.json()
    assert body["ready"] is False and body["inference_server"] is False
    assert [w.split("@")[0] for w in body["workers"]] == [vlm_worker.name]
    assert body["message"] == (f"the inference server at http://127.0.0.1:{vlm_port}/v1 "
                               "does not answer (ConnectionRefusedError)")
    # Another worker also serves `ocr-shared`: ready, and the server is named.
    shared = _ready(api, "ocr-shared", False)
    assert shared.status_code == 200 and shared.json()["inference_server"] is False
    assert "does not answer" in shared.json()["message"]
    # No vlm-api worker on `ocr`: not checked.
    plain = _ready(api, "ocr", None)
    assert plain.status_code == 200 and plain.json()["inference_server"] is None

    cli = _submit(redis_url, vlm_env, "--engine", "vlm-api", "--timeout", "8",
                  str(corpus("scan_tess_phototest.tif")))
    note = (f"submit.py: the inference server at http://127.0.0.1:{vlm_port}/v1 does not "
            "answer (ConnectionRefusedError)")
    assert cli.stderr.count(note) == 1, cli.stderr

    server = VlmServer(tmp_path / "vlm-server.log", vlm_env).start()
    try:
        up = _ready(api, QUEUE, True)
        assert up.status_code == 200, up.text
        assert up.json() == {**up.json(), "ready": True, "message": "",
                             "inference_server": True}
        cli = _submit(redis_url, vlm_env, "--engine", "vlm-api", "--timeout", "8",
                      str(corpus("scan_tess_phototest.tif")))
        assert "inference server" not in cli.stderr, cli.stderr
    finally:
        server.stop()


@pytest.mark.slow
def test_the_procfile_server_serves_the_local_model(vlm_env: dict[str, str],
                                                    model_dir: Path, tmp_path: Path) -> None:
    server = VlmServer(tmp_path / "vlm-server.log", vlm_env).start()
    try:
        folder = str((model_dir / MODEL).resolve())
        assert server.health()["loaded_model"] == folder  # type: ignore[index]
        listed = requests.get(f"{server.url}/v1/models", timeout=10).json()["data"]
        assert folder in [m["id"] for m in listed]
        assert served_model(Settings.from_env(vlm_env)) == folder
        assert check_server(Settings.from_env(vlm_env)).ok
        assert server.log().splitlines()[0] == (
            f"vlm-server: serving {MODEL} ({folder}) on {server.url}/v1")
        # Bound to loopback only.
        assert "Uvicorn running on http://127.0.0.1:" in server.log()
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode is not None


@pytest.mark.slow
def test_audit_keeps_the_model_a_vlm_api_host_serves(
        vlm_worker: Worker, tesseract_worker: Worker, client: OcrClient, model_dir: Path,
        redis_url: str) -> None:
    spare = model_folder(model_dir, "old_spare")  # same prefix, nobody's model
    models = ModelRegistry(redis.Redis.from_url(redis_url))
    eventually(lambda: any(h.model == MODEL for h in models.configured()), 30,
               "the vlm-api worker's registration", interval=0.2)
    # `ocr` is served by the tesseract worker only: it runs the audit, with no
    # OCR_MODEL of its own; the vlm-api worker never loads its model.
    report = OperatorConsole(client).audit_models(prune=True, timeout=120)
    assert report.get("errors") == [], report
    kept = {d["name"]: d for d in report["kept"]}
    assert "current_model" in kept[MODEL]["reasons"], kept
    assert kept[MODEL]["matched"] == ["prefix"]  # kept only as the configured one
    assert vlm_worker.name in kept[MODEL]["detail"]
    assert (model_dir / MODEL / "config.json").is_file()
    assert [d["name"] for d in report["pruned"]] == ["old_spare"] and not spare.exists()
