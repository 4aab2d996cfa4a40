"""Shared fixtures: real redis-server, Procfile-started workers, clients, corpus."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tasks.client import OcrClient
from worker_config import Settings

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
VENV_BIN = Path(sys.executable).parent
FAKE_PLUGINS = ",".join(f"{name}=tests.fake_engines:{cls}" for name, cls in (
    ("fake", "FakeEngine"), ("broken", "BrokenEngine"), ("fake-model", "FakeModelEngine"),
    ("slow-on-dark", "SlowOnDarkEngine"), ("stuck-on-dark", "StuckOnDarkEngine"),
    ("killer", "KillerEngine"), ("flaky-on-dark", "FlakyOnDarkEngine"),
    ("raising-on-dark", "RaisingOnDarkEngine")))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def procfile_command(name: str) -> str:
    """The command line of one Procfile process, as honcho would run it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            return command.strip()
    raise KeyError(name)


class RedisServer:
    """A redis-server of the tests' own, on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


class Worker:
    """A real worker process, started with a Procfile line (`worker:` or `control:`)."""

    def __init__(self, log_path: Path, env: dict[str, str], process: str = "worker") -> None:
        self.process = process
        self.name = f"test-{uuid.uuid4().hex[:8]}"
        self.log_path = log_path
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("OCR_", "REDIS_", "CELERY"))}
        self.env = {**inherited, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONPATH": str(ROOT), "WORKER_NAME": self.name,
                    "PYTHONUNBUFFERED": "1", **env}
        if "OCR_ENGINE_PLUGINS" in env:
            # Fake-engine tests feed uniform pages (fault triggers) that are blank pages:
            # they must reach the engine. Tests of blank pages set it to 1 themselves.
            self.env.setdefault("OCR_SKIP_BLANK_PAGES", "0")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> Worker:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", f"exec {procfile_command(self.process)}"], cwd=ROOT,
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(r"@\S+ ready\.", self.log()):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready in {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Warm shutdown (SIGTERM to the main process, as honcho does), then kill."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


_next_db = iter(range(1, 16))


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    """A Redis database of this test module's own, so its workers see only its jobs."""
    return redis_server.url(next(_next_db))


@pytest.fixture(scope="module")
def start_worker(tmp_path_factory: pytest.TempPathFactory,
                 redis_url: str) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def factory(process: str = "worker", **env: str) -> Worker:
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        worker = Worker(log, {"REDIS_URL": redis_url, **env}, process)
        started.append(worker)
        return worker.start()

    yield factory
    for worker in started:
        worker.stop()


def make_client(redis_url: str, **env: str) -> OcrClient:
    return OcrClient(Settings.from_env({"REDIS_URL": redis_url, **env}))


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[OcrClient]:
    ocr = make_client(redis_url)
    yield ocr
    ocr.close()


def corpus(name: str) -> Path:
    path = CORPUS / name
    if not path.exists():
        pytest.fail(f"corpus file missing: {path}")
    return path


def ground_truth(name: str) -> str:
    return corpus(name.rsplit(".", 1)[0] + ".gt.txt").read_text()
