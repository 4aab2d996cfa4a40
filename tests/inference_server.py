"""The Procfile's `vlm-server` process (mlx_vlm.server) for tests and benchmarks."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from tests.conftest import ROOT, VENV_BIN, free_port, procfile_command, stop_group

SERVER_ENV = {"MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1"}


class VlmServer:
    """`python scripts/run_vlm_server.py` from the Procfile, on a free loopback port.

    `env` are its settings (OCR_ENGINE=vlm-api, OCR_MODEL_DIR, OCR_MODEL, ...);
    OCR_VLM_SERVER_PORT is chosen here unless given.
    """

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.port = int(env.get("OCR_VLM_SERVER_PORT") or free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("OCR_", "REDIS_", "CELERY"))}
        self.env = {**inherited, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **SERVER_ENV, **env,
                    "OCR_VLM_SERVER_PORT": str(self.port)}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 300) -> VlmServer:
        """Start it and wait until /health names a loaded model."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", f"exec {procfile_command('vlm-server')}"], cwd=ROOT,
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vlm-server exited early:\n{self.log()[-3000:]}")
            health = self.health()
            if health and health.get("loaded_model"):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"vlm-server not up in {timeout} s:\n{self.log()[-3000:]}")

    def health(self) -> dict[str, Any] | None:
        try:
            answer = requests.get(f"{self.url}/health", timeout=2)
        except requests.RequestException:
            return None
        return dict(answer.json()) if answer.status_code == 200 else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM (as the supervisor stops it), then its whole group is killed."""
        stop_group(self.proc, grace=20)
