"""The vlm-api engine's inference server: whether it answers, whether `vlm-server` runs it.

Where it is and what it serves are `Settings.vlm_api_base` and
`tasks.models.locate.served_model`.

Light on purpose (the standard library and tasks.settings only): the API server's
`/readyz` and the CLI (submit.py) call `check_server` in client processes, which must
not import numpy, PIL or openai. The check itself is the vlm-api engine's own probe
(tasks/server_probe.py), one for both. The `vlm-server` process
(scripts/run_vlm_server.py) calls `server_plan`. The server, not the worker's pool
children, holds the model: the model lifecycle's idle and unload releases do not reach
it (docs/vlm-servers.md, "Model lifecycle").
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.queue.routing import queue_for_engine
from tasks.server_probe import CHECK_TIMEOUT, ServerCheck, check_server

if TYPE_CHECKING:
    from tasks.settings import Settings

QUEUE = queue_for_engine("vlm-api")
__all__ = ["CHECK_TIMEOUT", "QUEUE", "ServerCheck", "ServerPlan", "ServerWatch",
           "check_server", "offline_env", "server_plan"]


class ServerWatch:
    """`check_server`, answered from a cache of `cache_seconds` (thread-safe).

    The API's /readyz may be polled often, the server must not be.
    """

    def __init__(self, settings: Settings, cache_seconds: float = 5.0,
                 timeout: float = CHECK_TIMEOUT) -> None:
        self._settings = settings
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._lock = threading.Lock()
        self._last: tuple[float, ServerCheck] | None = None

    def check(self) -> ServerCheck:
        with self._lock:
            if self._last is None or time.monotonic() - self._last[0] > self._cache_seconds:
                self._last = (time.monotonic(), check_server(self._settings, self._timeout))
            return self._last[1]


@dataclass(frozen=True)
class ServerPlan:
    """What the `vlm-server` process does: `serve` (exec `argv`), `idle` or `fail`.

    `reason` is the one line it prints (for `fail`, `code: message`).
    """

    action: str
    reason: str
    argv: tuple[str, ...] = ()


MODEL_MISSING = "vlm_server_model_missing"


def server_plan(settings: Settings, python: str = sys.executable) -> ServerPlan:
    """Decide, from the settings alone, whether this host runs mlx_vlm.server.

    Serve only when OCR_ENGINE=vlm-api and OCR_VLM_API_URL is empty, with OCR_MODEL
    resolved in OCR_MODEL_DIR (never downloaded); a model that is not there fails with
    a coded line, so `make run` stops at once instead of queueing pages that no server
    will read.
    """
    if settings.engine != "vlm-api":
        return ServerPlan("idle", f"idle: OCR_ENGINE is {settings.engine!r}, not vlm-api "
                                  "(this host's workers need no inference server)")
    if settings.vlm_api_url:
        return ServerPlan("idle", f"idle: the vlm-api workers use OCR_VLM_API_URL="
                                  f"{settings.vlm_api_url} (a server run elsewhere)")
    from tasks.models.locate import loadable_model, model_missing

    if not settings.model:
        return ServerPlan("fail", f"{MODEL_MISSING}: OCR_ENGINE=vlm-api without "
                                  "OCR_VLM_API_URL needs OCR_MODEL, the model this host's "
                                  "mlx_vlm.server serves")
    path = loadable_model(settings)
    if path is None:
        return ServerPlan("fail", f"{MODEL_MISSING}: {model_missing(settings)}")
    argv = (python, "-m", "mlx_vlm.server", "--model", str(path), "--host", "127.0.0.1",
            "--port", str(settings.vlm_server_port))
    return ServerPlan("serve", f"serving {settings.model} ({path}) on "
                               f"http://127.0.0.1:{settings.vlm_server_port}/v1", argv)


def offline_env() -> dict[str, str]:
    """The server's environment: the hub and transformers never go online."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
