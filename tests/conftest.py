"""Shared fixtures: real redis-server, RabbitMQ vhosts, Procfile-started workers, clients.

Also the corpus.
"""

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
from tasks.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
VENV_BIN = Path(sys.executable).parent
FAKE_PLUGINS = ",".join(f"{name}=tests.fake_engines:{cls}" for name, cls in (
    ("fake", "FakeEngine"), ("broken", "BrokenEngine"), ("fake-model", "FakeModelEngine"),
    ("slow-on-dark", "SlowOnDarkEngine"), ("stuck-on-dark", "StuckOnDarkEngine"),
    ("killer", "KillerEngine"), ("flaky-on-dark", "FlakyOnDarkEngine"),
    ("raising-on-dark", "RaisingOnDarkEngine")))
# PDFs rendered small and unturned: fake engines describe pages, they do not read them.
FAST_PAGES = {"OCR_PDF_DPI": "72", "OCR_DESKEW": "0"}


def fake_env(*engines: str, cache: bool = False, **extra: str) -> dict[str, str]:
    """A worker's settings with the fake engines (tests/fake_engines.py), `fake` its own.

    Results are not cached unless `cache`; `engines` are other fake engines whose
    queues (`ocr-<name>`) the worker serves beside `ocr` (jobs that name them go there).
    """
    env = {"OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS}
    if not cache:
        env["OCR_CACHE_RESULTS"] = "0"
    if engines:
        env["OCR_QUEUES"] = ",".join(["ocr", *(f"ocr-{e}" for e in engines)])
    return {**env, **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM `proc` (a session leader), then SIGKILL its process group after `grace` s.

    No child of a stopped service outlives the test that started it.
    """
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def procfile_command(name: str) -> str:
    """The command line of one Procfile process, as honcho would run it."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            return command.strip()
    raise KeyError(name)


class ProcfileProcess:
    """One Procfile line run as any Procfile runner runs it: `sh -c` from the repository root.

    In a session of its own, logging to a file. Its environment is the test runner's
    with the venv's `bin` first on PATH, without the service's settings (`OCR_*`,
    `REDIS_*`, `CELERY*` and the prefixes in `drop`) and without `PYTHONPATH` (which
    only `make` sets), plus `env`.
    """

    stop_grace = 30.0

    def __init__(self, process: str, log_path: Path, env: dict[str, str],
                 drop: tuple[str, ...] = ()) -> None:
        self.process = process
        self.log_path = log_path
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("OCR_", "REDIS_", "CELERY", "PYTHONPATH", *drop))}
        self.env = {**inherited, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONUNBUFFERED": "1", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["sh", "-c", f"exec {procfile_command(self.process)}"], cwd=ROOT,
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.proc

    def failed(self, why: str) -> RuntimeError:
        return RuntimeError(f"{self.process} {why}:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (as the supervisor stops it), then its whole group is killed."""
        stop_group(self.proc, grace=self.stop_grace)


# Each test module gets a database of its own (more modules than Redis's default 16).
DATABASES = 128


class RedisServer:
    """A redis-server of the tests' own, on a free loopback port."""

    def __init__(self, workdir: Path, appendonly: bool = False,
                 max_bulk_bytes: int | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly  # an append-only file, fsynced: data survives restarts
        # proto-max-bulk-len as the project's Redis sets it (scripts/run_redis.py): from
        # the default settings unless a test gives its own
        self.max_bulk_bytes = max_bulk_bytes or Settings.from_env({}).redis_max_bulk_bytes
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", "",
             "--databases", str(DATABASES), "--proto-max-bulk-len", str(self.max_bulk_bytes),
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly
               else ["--appendonly", "no"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def restart(self, down_seconds: float = 1.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672


def rabbitmq_missing() -> str | None:
    """Why the local RabbitMQ cannot be used, or None when it can."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed (make test installs rabbitmq-server as root)"
    try:
        socket.create_connection((RABBITMQ_HOST, RABBITMQ_PORT), timeout=2).close()
    except OSError:
        return f"no RabbitMQ listening on {RABBITMQ_HOST}:{RABBITMQ_PORT}"
    return None


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class RabbitVhost:
    """A vhost of the tests' own on the local RabbitMQ (guest/guest), deleted after."""

    def __init__(self) -> None:
        self.name = f"ocr-test-{uuid.uuid4().hex[:8]}"

    def url(self) -> str:
        return f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{self.name}"

    def create(self, consumer_timeout_ms: int | None = None) -> None:
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        if consumer_timeout_ms is not None:
            set_consumer_timeout(consumer_timeout_ms)

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)

    def restart(self, down_seconds: float = 1.0) -> None:
        """Restart the RabbitMQ application (every vhost: durable queues survive)."""
        rabbitmqctl("stop_app")
        time.sleep(down_seconds)
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


def set_consumer_timeout(milliseconds: int) -> None:
    """The node-wide delivery-ack timeout, for RabbitMQ before 3.11.15 (no per-queue one).

    Runtime only, like `consumer_timeout` in rabbitmq.conf but without a restart.
    """
    rabbitmqctl("eval", f"application:set_env(rabbit, consumer_timeout, {milliseconds}).")


class Broker:
    """The broker of a test: `redis` (REDIS_URL itself) or `amqp` (a vhost of its own)."""

    def __init__(self, kind: str, redis_server: RedisServer,
                 vhost: RabbitVhost | None = None) -> None:
        self.kind = kind
        self.redis_server = redis_server
        self.vhost = vhost

    @property
    def env(self) -> dict[str, str]:
        """Extra environment of workers and clients: BROKER_URL for RabbitMQ."""
        return {"BROKER_URL": self.vhost.url()} if self.vhost is not None else {}

    def restart(self, down_seconds: float = 1.0) -> None:
        if self.vhost is not None:
            self.vhost.restart(down_seconds)
        else:
            self.redis_server.restart(down_seconds)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own that keeps an append-only file, like the project's."""
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest, aof_redis: RedisServer) -> Iterator[Broker]:
    """Each broker in turn; Redis (`aof_redis`) is result backend and blob store of both.

    RabbitMQ tests skip, with the reason, where no RabbitMQ runs.
    """
    if request.param == "redis":
        yield Broker("redis", aof_redis)
        return
    reason = rabbitmq_missing()
    if reason is not None:
        pytest.skip(reason)
    vhost = RabbitVhost()
    vhost.create(consumer_timeout_ms=3_600_000)
    try:
        yield Broker("amqp", aof_redis, vhost)
    finally:
        vhost.delete()


class Worker(ProcfileProcess):
    """A real worker process, started with a Procfile line (`worker:` or `control:`)."""

    def __init__(self, log_path: Path, env: dict[str, str], process: str = "worker") -> None:
        self.name = f"test-{uuid.uuid4().hex[:8]}"
        super().__init__(process, log_path, {"WORKER_NAME": self.name, **env})
        if "OCR_ENGINE_PLUGINS" in env:
            # A plugin's module must be importable, as for any Python plugin (installed,
            # or on PYTHONPATH): the fake engines are in tests/, outside the service.
            self.env.setdefault("PYTHONPATH", str(ROOT))
            # Fake-engine tests feed uniform pages (fault triggers) that are blank pages:
            # they must reach the engine. Tests of blank pages set it to 1 themselves.
            self.env.setdefault("OCR_SKIP_BLANK_PAGES", "0")

    def start(self, timeout: float = 90) -> Worker:
        proc = self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(r"@\S+ ready\.", self.log()):
                return self
            if proc.poll() is not None:
                raise self.failed("exited early")
            time.sleep(0.1)
        raise self.failed(f"not ready in {timeout} s")

    def kill(self) -> None:
        """SIGKILL the parent and its children at once, as when the host dies."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)



@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


_next_db = iter(range(1, DATABASES))


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
