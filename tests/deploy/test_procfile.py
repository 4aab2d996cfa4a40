"""Every Procfile line runs under any Procfile runner, not only under `make run`.

Each line is started as a plain shell command, the way honcho, foreman, a platform that
reads Procfiles or a systemd unit copied from it starts it: `sh -c LINE` from the
repository root, the venv's `bin` first on PATH, no `PYTHONPATH` and none of the
service's settings but the ports and REDIS_URL (`ProcfileProcess`). Each must answer:
redis a PING, the workers a control ping (after their ready line), beat its start line,
Flower, the metrics exporter and the API over HTTP, vlm-server its idle message.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests

from tasks.client import OcrClient
from tests.harness import ROOT, ProcfileProcess, free_port, kill_all, waits_for_a_signal

pytestmark = pytest.mark.slow
START_BOUND = 120.0  # seconds: a worker loading its engine on a loaded machine


def procfile_names() -> list[str]:
    return [line.partition(":")[0].strip() for line in
            (ROOT / "Procfile").read_text().splitlines()
            if ":" in line and not line.lstrip().startswith("#")]


def wait_until(process: ProcfileProcess, answers: Callable[[], bool]) -> None:
    """Poll `answers` until it holds; fail at once if the process exits."""
    process.wait_until(answers, START_BOUND, "answering")


def http_ok(url: str) -> Callable[[], bool]:
    def answers() -> bool:
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False
    return answers


def pings(client: OcrClient, node: str) -> Callable[[], bool]:
    def answers() -> bool:
        return bool(client.app.control.ping(destination=[node], timeout=1.0))
    return answers


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Callable[..., ProcfileProcess]]:
    """Start a Procfile line as a plain command; every one started is ended.

    Killed: nothing is asserted of their shutdown (a warm shutdown costs a worker
    2-3 s), but beat, which writes its schedule into the checkout's var/, is stopped.
    """
    mine: list[ProcfileProcess] = []

    def start(name: str, **env: str) -> ProcfileProcess:
        process = ProcfileProcess(name, tmp_path / f"{name}.log", env,
                                  drop=("FLOWER_", "API_", "METRICS_", "WORKER_NAME"))
        mine.append(process)
        process.spawn()
        return process

    yield start
    for process in mine:
        if process.process == "beat":
            process.stop()
    kill_all(mine)


def check_redis(start: Callable[..., ProcfileProcess], redis_url: str,
                client: OcrClient) -> None:
    had_var = (ROOT / "var" / "redis").exists()
    url = f"redis://127.0.0.1:{free_port()}/0"
    process = start("redis", REDIS_URL=url)
    try:
        def answers() -> bool:
            try:
                return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
            except redis.ConnectionError:
                return False
        wait_until(process, answers)
        assert "starting the project's own server" in process.log()
    finally:
        process.stop()
        if not had_var:  # the test's server's files, not an operator's data
            shutil.rmtree(ROOT / "var" / "redis", ignore_errors=True)


def check_worker(start: Callable[..., ProcfileProcess], redis_url: str,
                 client: OcrClient) -> None:
    name = f"plain-{uuid.uuid4().hex[:8]}"
    process = start("worker", REDIS_URL=redis_url, WORKER_NAME=name, OCR_ENGINE="tesseract",
                    OCR_CONCURRENCY="1")
    wait_until(process, lambda: " ready." in process.log())
    wait_until(process, pings(client, _node(name)))


def check_control(start: Callable[..., ProcfileProcess], redis_url: str,
                  client: OcrClient) -> None:
    process = start("control", REDIS_URL=redis_url)
    wait_until(process, lambda: " ready." in process.log())
    wait_until(process, pings(client, _node("control")))


def _node(name: str) -> str:
    """The node name a worker of WORKER_NAME=NAME takes on this host.

    A ping to one node returns on its reply, where a broadcast waits out its timeout.
    """
    return f"{name}@{socket.gethostname()}"


def check_beat(start: Callable[..., ProcfileProcess], redis_url: str,
               client: OcrClient) -> None:
    before = _schedule_files()
    process = start("beat", REDIS_URL=redis_url)
    wait_until(process, lambda: "beat: Starting..." in process.log())
    # After the start line beat opens its schedule and writes it (the Procfile's
    # --schedule=var/celerybeat-schedule): then it is past its start.
    wait_until(process, lambda: _schedule_files() != before)
    assert process.proc is not None and process.proc.poll() is None, process.log()


def _schedule_files() -> dict[str, int]:
    """The schedule files beat keeps in the checkout's var/, and when each was written."""
    return {path.name: path.stat().st_mtime_ns
            for path in (ROOT / "var").glob("celerybeat-schedule*")}


def check_flower(start: Callable[..., ProcfileProcess], redis_url: str,
                 client: OcrClient) -> None:
    port = free_port()
    process = start("flower", REDIS_URL=redis_url, FLOWER_PORT=str(port), OCR_FLOWER_OPEN="1",
                    FLOWER_PERSISTENT="False")
    wait_until(process, http_ok(f"http://127.0.0.1:{port}/healthcheck"))


def check_metrics(start: Callable[..., ProcfileProcess], redis_url: str,
                  client: OcrClient) -> None:
    port = free_port()
    process = start("metrics", REDIS_URL=redis_url, METRICS_PORT=str(port))
    wait_until(process, http_ok(f"http://127.0.0.1:{port}/metrics"))


def check_api(start: Callable[..., ProcfileProcess], redis_url: str,
              client: OcrClient) -> None:
    port = free_port()
    process = start("api", REDIS_URL=redis_url, API_PORT=str(port))
    wait_until(process, http_ok(f"http://127.0.0.1:{port}/healthz"))


def check_vlm_server(start: Callable[..., ProcfileProcess], redis_url: str,
                     client: OcrClient) -> None:
    process = start("vlm-server", REDIS_URL=redis_url)  # no vlm-api worker: it idles
    wait_until(process, lambda: "vlm-server: " in process.log())
    assert process.proc is not None
    wait_until(process, lambda: waits_for_a_signal(process.proc.pid))  # type: ignore[union-attr]
    assert "vlm-server: idle: " in process.log(), process.log()


CHECKS = {"redis": check_redis, "worker": check_worker, "control": check_control,
          "beat": check_beat, "flower": check_flower, "metrics": check_metrics,
          "api": check_api, "vlm-server": check_vlm_server}


def test_every_procfile_line_has_a_check() -> None:
    assert sorted(procfile_names()) == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_procfile_line_answers_as_a_plain_command(
        name: str, started: Callable[..., ProcfileProcess], redis_url: str,
        client: OcrClient) -> None:
    CHECKS[name](started, redis_url, client)
