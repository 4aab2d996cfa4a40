"""The Procfile's `api` process for tests and benchmarks, and clients made for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from devkit.harness import ROOT, ProcfileProcess, eventually, free_port

# The statuses a job ends in, as `GET /v1/jobs/{id}` says them.
FINAL = ("SUCCESS", "PARTIAL", "FAILURE", "CANCELLED")


class ApiServer(ProcfileProcess):
    """The HTTP API started with the Procfile's `api:` command on a free port."""

    stop_grace = 15.0

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("api", log_path, {"API_PORT": str(self.port), "LOG_LEVEL": "warning",
                                           **env}, drop=("API_",))
        self.startup_seconds = 0.0

    def start(self, timeout: float = 60) -> ApiServer:
        self.spawn()
        return self.wait_up(timeout)

    def wait_up(self, timeout: float = 60) -> ApiServer:
        """Wait for a spawned API to answer `/healthz` (several spawned first start together)."""
        spawned = self.spawned_at
        if spawned is None:
            raise RuntimeError("api: wait_up() before spawn()")
        self.wait_until(self.healthy, timeout, "up")
        self.startup_seconds = time.monotonic() - spawned
        return self

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            return False  # not listening yet, or still starting: a slow answer is not down


def create_token(redis_url: str, name: str, *options: str) -> str:
    """`submit.py tokens create NAME --json`, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "submit.py", "tokens", "create", name, "--json", *options],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["name"] == name
    return str(record["token"])


def session(token: str) -> requests.Session:
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token}"
    return http


def wait_end(http: requests.Session, api: ApiServer, job_id: str, timeout: float = 90,
             request_timeout: float = 10) -> dict[str, Any]:
    """The job's status once it has ended (one of FINAL), asked of the API until then."""

    def ended() -> dict[str, Any] | None:
        status = http.get(f"{api.url}/v1/jobs/{job_id}", timeout=request_timeout).json()
        return dict(status) if status["status"] in FINAL else None

    return eventually(ended, timeout, f"job {job_id} to end")
