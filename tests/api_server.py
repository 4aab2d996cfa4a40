"""The Procfile's `api` process for tests and benchmarks, and clients made for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import ROOT, VENV_BIN, free_port, procfile_command, stop_group


class ApiServer:
    """The HTTP API started with the Procfile's `api:` command on a free port."""

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("OCR_", "REDIS_", "CELERY", "API_"))}
        self.env = {**inherited, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
                    "API_PORT": str(self.port), "LOG_LEVEL": "warning", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    def start(self, timeout: float = 60) -> ApiServer:
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", f"exec {procfile_command('api')}"], cwd=ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"api exited early:\n{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    self.startup_seconds = time.monotonic() - started
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"api not up in {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_group(self.proc, grace=15)


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
