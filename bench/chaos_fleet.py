"""The chaos soak's fleet: every process of a real deployment on this machine.

Runs in the soak's own process (bench/chaos.py), which starts and stops each part and
injects the faults: Redis as a primary with two replicas and three Sentinels, each
server with its append-only file (devkit/ha.py), every process reaching it through the
Sentinels (`sentinel://`, so each job is accepted once a replica holds it), a prefork
tesseract worker and a
thread-pool `vlm-api` worker (each a Procfile `worker:` line, its own host name and
temporary folder), the simulated inference server (devkit/inference_server.py), two
HTTP API processes (the Procfile's `api:` line), a webhook receiver that verifies each
callback's signature, and moto's S3 emulator for documents by URL. With
`broker="rabbitmq"` the broker is a three-node RabbitMQ cluster of quorum queues
(devkit/rabbit_cluster.py; each process lists the nodes from a different first one),
and Redis stays result backend and store.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from redis import Redis

from devkit.api_server import ApiServer
from devkit.ha import RedisHA
from devkit.harness import ROOT, Worker
from devkit.inference_server import SimulatedInferenceServer
from devkit.moto_s3 import MotoS3
from devkit.rabbit_cluster import RabbitCluster
from tasks.lifecycle.callbacks import EVENT_ID_HEADER, verify

BUCKET = "chaos"
# Short limits, so that a job lost with a killed worker comes back within the soak: the
# broker redelivers after the visibility timeout, which every limit must stay under.
LIMITS = {"OCR_VISIBILITY_TIMEOUT": "60", "OCR_SOFT_TIME_LIMIT": "40",
          "OCR_HARD_TIME_LIMIT": "50", "OCR_PAGE_SOFT_TIME_LIMIT": "30",
          "OCR_PAGE_HARD_TIME_LIMIT": "40", "OCR_VLM_API_PAGE_TIME_LIMIT": "25"}
# What the direct read and the prefork worker share (bench/chaos.py reads each input
# directly with these settings).
READ_ENV = {"OCR_ENGINE": "tesseract", "OCR_PDF_DPI": "150", "OCR_TESSERACT_THREADS": "1",
            "OCR_CACHE_RESULTS": "0"}
VLM_ENV = {"OCR_ENGINE": "vlm-api", "OCR_VLM_API_MODEL": "simulated-vlm",
           "OCR_QUEUES": "ocr-vlm-api", "OCR_VLM_API_IN_FLIGHT": "8", "OCR_AUTO_ROTATE": "0",
           "OCR_DESKEW": "0", "OCR_VLM_API_RETRY_SECONDS": "150", "OCR_CACHE_RESULTS": "0",
           "OCR_PDF_DPI": "150"}
SIMULATED_TEXT = "Page read by the simulated server."
SENTINEL_DOWN_AFTER_MS = 5000


@dataclass
class Delivery:
    """One POST the receiver answered (or refused while failing)."""

    at: float
    job_id: str
    event_id: str
    status: str
    verified: bool
    answered: int


class Receiver:
    """A webhook receiver on loopback: verifies signatures, records each POST.

    While `failing_until` (monotonic) lies ahead it answers 503 to every POST (which the
    service retries) and records it as refused.
    """

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets  # client name -> signing secret
        self.deliveries: list[Delivery] = []
        self.failing_until = 0.0
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver._take(dict(self.headers.items()), body, self)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, tag: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{tag}"

    def _take(self, headers: dict[str, str], body: bytes,
              handler: http.server.BaseHTTPRequestHandler) -> None:
        answer = 503 if time.monotonic() < self.failing_until else 204
        try:
            summary = json.loads(body)
        except ValueError:
            summary = {}
        client = handler.path.rsplit("/", 1)[-1]
        verified = verify(body, self.secrets.get(client, ""),
                          headers.get("X-OCR-Timestamp", ""),
                          headers.get("X-OCR-Signature", ""))
        event = str(summary.get("event_id", ""))
        if headers.get(EVENT_ID_HEADER) != event:
            verified = False  # the header and the signed body must name one event
        with self._lock:
            self.deliveries.append(Delivery(time.time(), str(summary.get("id", "")), event,
                                            str(summary.get("status", "")), verified, answer))
        handler.send_response(answer)
        handler.end_headers()

    def stop(self) -> None:
        self.server.shutdown()


@dataclass
class Host:
    """One worker host: its settings, its temporary folder, the worker now running."""

    name: str
    env: dict[str, str]
    tmp: Path
    logs: Path
    worker: Worker | None = None
    starts: int = 0

    def start(self) -> Worker:
        self.starts += 1
        worker = Worker(self.logs / f"{self.name}-{self.starts}.log",
                        {**self.env, "WORKER_NAME": self.name, "TMPDIR": str(self.tmp)})
        self.worker = worker.start(timeout=240)
        return self.worker

    def parent(self) -> psutil.Process | None:
        if self.worker is None or self.worker.proc is None:
            return None
        try:
            return psutil.Process(self.worker.proc.pid)
        except psutil.NoSuchProcess:
            return None

    def processes(self) -> list[psutil.Process]:
        main = self.parent()
        if main is None:
            return []
        try:
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill_group(self) -> None:
        """What is left of the host's processes is killed (a host that died)."""
        if self.worker is not None and self.worker.proc is not None:
            try:
                os.killpg(self.worker.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.worker.proc.wait(30)


@dataclass
class Fleet:
    """Every process of the soak, started in `start` and stopped in `stop`."""

    workdir: Path
    broker: str = "redis"  # or "rabbitmq": a three-node cluster of quorum queues
    rabbit: RabbitCluster | None = None
    vhost: str = "ocr-chaos"
    redis: RedisHA = field(init=False)
    s3: MotoS3 = field(init=False)
    inference: SimulatedInferenceServer = field(init=False)
    receiver: Receiver = field(init=False)
    hosts: dict[str, Host] = field(default_factory=dict)
    control: Worker | None = None  # the control worker: cancels, the callback outbox
    apis: list[ApiServer] = field(default_factory=list)
    api_env: dict[str, str] = field(default_factory=dict)
    token: str = ""
    client_name: str = "soak"

    def start(self) -> Fleet:
        for part in ("redis", "logs", "tmp/cpu", "tmp/vlm", "tmp/api"):
            (self.workdir / part).mkdir(parents=True, exist_ok=True)
        # Sentinel's down-after (5 s) outlasts a restart (1 s down): `restart_redis`
        # stays a restart of the primary, `failover_redis` is a failover.
        self.redis = RedisHA(self.workdir / "redis", down_after_ms=SENTINEL_DOWN_AFTER_MS,
                             appendonly=True)
        self.redis.start()
        self.s3 = MotoS3(self.workdir / "logs" / "moto.log").start()
        self.s3.client().create_bucket(Bucket=BUCKET)
        self.inference = SimulatedInferenceServer(text=SIMULATED_TEXT).start()
        self.token, secret = self.make_client()
        self.receiver = Receiver({self.client_name: secret})
        shared = {**self.redis.env(), **LIMITS, **self.s3.env(),
                  "OCR_ALLOWED_URLS": f"s3://{BUCKET}/",
                  "OCR_CALLBACK_ALLOWED_HOSTS": f"127.0.0.1:{self.receiver.port}"}
        if self.broker == "rabbitmq":
            self.rabbit = RabbitCluster(self.workdir / "rabbit").start()
            self.rabbit.add_vhost(self.vhost)
        logs = self.workdir / "logs"
        self.hosts = {
            "cpu": Host("chaos-cpu", {**shared, **self.broker_env(0), **READ_ENV,
                                      "OCR_CONCURRENCY": "2"},
                        self.workdir / "tmp" / "cpu", logs),
            "vlm": Host("chaos-vlm", {**shared, **self.broker_env(1), **VLM_ENV,
                                      "OCR_VLM_API_URL": self.inference.url},
                        self.workdir / "tmp" / "vlm", logs)}
        for host in self.hosts.values():
            host.start()
        self.control = Worker(logs / "chaos-control.log", {
            **shared, **self.broker_env(0), "TMPDIR": str(self.workdir / "tmp" / "cpu")},
            "control").start(timeout=240)
        self.api_env = {**shared, **self.broker_env(2),
                        "TMPDIR": str(self.workdir / "tmp" / "api")}
        self.apis = [self._api(i) for i in range(2)]
        return self

    def broker_env(self, first: int) -> dict[str, str]:
        """BROKER_URL of the RabbitMQ fleet, listing the nodes from node `first`; Redis: {}."""
        if self.rabbit is None:
            return {}
        nodes = self.rabbit.nodes[first:] + self.rabbit.nodes[:first]
        return {"BROKER_URL": ";".join(n.url(self.vhost) for n in nodes),
                "OCR_RABBITMQ_QUEUE_TYPE": "quorum"}

    def make_client(self) -> tuple[str, str]:
        """`submit.py tokens create soak --json`: the client's token and signing secret."""
        done = subprocess.run(
            [sys.executable, "submit.py", "tokens", "create", self.client_name, "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
            env={**os.environ, **self.redis.env(), "PYTHONPATH": str(ROOT)})
        record = json.loads(done.stdout)
        return str(record["token"]), str(record["webhook_secret"])

    def _api(self, index: int) -> ApiServer:
        return ApiServer(self.workdir / "logs" / f"api-{index}-{time.time():.0f}.log",
                         self.api_env).start()

    def restart_api(self, index: int) -> None:
        self.apis[index].stop()
        self.apis[index] = self._api(index)

    def stop(self) -> None:
        for api in self.apis:
            api.stop()
        for host in self.hosts.values():
            if host.worker is not None:
                host.worker.stop()
        if self.control is not None:
            self.control.stop()
        self.inference.stop()
        self.receiver.stop()
        self.s3.stop()
        self.redis.stop()
        if self.rabbit is not None:
            self.rabbit.stop()

    def worker_rss_mb(self) -> dict[str, float]:
        """Each live worker process's RSS (MB), by host and pid."""
        sizes = {}
        for name, host in self.hosts.items():
            for process in host.processes():
                try:
                    sizes[f"{name}:{process.pid}"] = process.memory_info().rss / 2**20
                except psutil.Error:
                    continue
        return sizes

    def redis_client(self) -> Redis:
        """The primary the Sentinels name now."""
        return Redis.from_url(self.redis.current().url(), socket_timeout=10)

    def leftover_files(self) -> dict[str, list[str]]:
        """Files left in each host's temporary folder (its URL spool included)."""
        found: dict[str, list[str]] = {}
        for path in sorted((self.workdir / "tmp").rglob("*")):
            if path.is_file():
                found.setdefault(path.relative_to(self.workdir / "tmp").parts[0], []).append(
                    str(path.relative_to(self.workdir / "tmp")))
        return found


def describe(fleet: Fleet) -> dict[str, Any]:
    return {"redis": fleet.redis.sentinel_url(), "apis": [a.url for a in fleet.apis],
            "inference": fleet.inference.url, "receiver": fleet.receiver.port,
            "s3": fleet.s3.endpoint}
