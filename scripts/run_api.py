#!/usr/bin/env python3
"""Procfile `api` process: the HTTP API (tasks/api/) served by uvicorn.

Listens on API_ADDRESS:API_PORT (default 127.0.0.1:8000). Only talks to Redis and
sends tasks by name: run as many as you like, anywhere that reaches Redis. SIGTERM
(or SIGINT) stops it within GRACEFUL_SECONDS, open Server-Sent Events streams
included, and it exits 0: a clean stop is not a death by signal.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

import uvicorn

from tasks import tracing
from tasks.api._access_log import log_config
from tasks.api.app import create_api
from tasks.settings import Settings, SettingsError

GRACEFUL_SECONDS = 10


def _stopped(signum: int, frame: FrameType | None) -> None:
    """Exit 0 once uvicorn has stopped gracefully.

    uvicorn raises the signal it stopped on again, into the handler it found: this one.
    """
    raise SystemExit(0)


def main() -> int:
    try:
        settings = Settings.from_env()
        port = int(os.environ.get("API_PORT", "8000"))
    except (SettingsError, ValueError) as exc:
        print(f"api: {exc}", flush=True)
        return 2
    address = os.environ.get("API_ADDRESS", "127.0.0.1")
    # Traces when an OTEL_* exporter is set: each request, and the job it sends.
    tracing.start("ocr-api")
    app = create_api(settings)
    tracing.instrument_fastapi(app)
    print(f"api: serving http://{address}:{port} (docs at /docs)", flush=True)
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _stopped)  # uvicorn's own handlers take over while it runs
    uvicorn.run(app, host=address, port=port, log_level=os.environ.get(
        "LOG_LEVEL", "info").lower(), proxy_headers=False, server_header=False,
        log_config=log_config(),  # the access log without query-string credentials
        # On SIGTERM requests in flight get this long; then open event streams are
        # closed (their clients reconnect, to any replica) and the process exits, well
        # within a pod's grace period: uvicorn otherwise waits for every stream to end.
        timeout_graceful_shutdown=GRACEFUL_SECONDS)
    tracing.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
