"""The Procfile's `vlm-server` process (mlx_vlm.server) for tests and benchmarks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from tests.conftest import ProcfileProcess, free_port

SERVER_ENV = {"MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1"}


class VlmServer(ProcfileProcess):
    """`python scripts/run_vlm_server.py` from the Procfile, on a free loopback port.

    `env` are its settings (OCR_ENGINE=vlm-api, OCR_MODEL_DIR, OCR_MODEL, ...);
    OCR_VLM_SERVER_PORT is chosen here unless given.
    """

    stop_grace = 20.0

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.port = int(env.get("OCR_VLM_SERVER_PORT") or free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("vlm-server", log_path, {
            **SERVER_ENV, **env, "OCR_VLM_SERVER_PORT": str(self.port)})

    def start(self, timeout: float = 300) -> VlmServer:
        """Start it and wait until /health names a loaded model."""
        proc = self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self.failed("exited early")
            health = self.health()
            if health and health.get("loaded_model"):
                return self
            time.sleep(0.2)
        raise self.failed(f"not up in {timeout} s")

    def health(self) -> dict[str, Any] | None:
        try:
            answer = requests.get(f"{self.url}/health", timeout=2)
        except requests.RequestException:
            return None
        return dict(answer.json()) if answer.status_code == 200 else None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid
