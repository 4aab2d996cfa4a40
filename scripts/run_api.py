#!/usr/bin/env python3
"""Procfile `api` process: the HTTP API (tasks/api/) served by uvicorn.

Listens on API_ADDRESS:API_PORT (default 127.0.0.1:8000). Behind a proxy that ends
TLS, API_FORWARDED_ALLOW_IPS names the proxies (comma separated addresses or networks)
whose `X-Forwarded-Proto` and `X-Forwarded-For` it believes (uvicorn's proxy headers,
from those peers only); unset, it believes no proxy header. Only talks to Redis and
sends tasks by name: run as many as you like, anywhere that reaches Redis. SIGTERM
(or SIGINT) stops it within GRACEFUL_SECONDS, open Server-Sent Events streams
included, and it exits 0: a clean stop is not a death by signal. A connection whose
request line and headers are not in within OCR_API_HEADER_TIMEOUT is closed
(tasks/api/http_protocol.py: uvicorn's h11 protocol with that bound).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from tasks import console, tracing
from tasks.api.access_log import log_config
from tasks.api.app import create_api
from tasks.api.http_protocol import head_timed
from tasks.settings import Settings, SettingsError

GRACEFUL_SECONDS = 10


def _stopped(signum: int, frame: FrameType | None) -> None:
    """Exit 0 once uvicorn has stopped gracefully.

    uvicorn raises the signal it stopped on again, into the handler it found: this one.
    """
    raise SystemExit(0)


def _show_tracing_lines() -> None:
    """The tracing module's lines (`tracing on: ...`, or why it is off) on stdout.

    As a worker's log shows them; uvicorn's logging configuration covers its own
    loggers only.
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("api: %(message)s"))
    logger = logging.getLogger(tracing.__name__)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def serving_app(settings: Settings) -> FastAPI:
    """The API's app with the console mounted: the app this process serves.

    Also uvicorn's factory: `uvicorn --factory scripts.run_api:from_env`.
    """
    app = create_api(settings)
    console.install(app)
    return app


def from_env() -> FastAPI:
    """The uvicorn factory: the served app from the environment's settings."""
    return serving_app(Settings.from_env())


def main() -> int:
    try:
        settings = Settings.from_env()
        port = int(os.environ.get("API_PORT", "8000"))
    except (SettingsError, ValueError) as exc:
        print(f"api: {exc}", flush=True)
        return 2
    address = os.environ.get("API_ADDRESS", "127.0.0.1")
    # A request's scheme (the console cookie's Secure) and client address as a trusted
    # proxy forwarded them; no proxy is trusted unless named.
    proxies = os.environ.get("API_FORWARDED_ALLOW_IPS", "").strip()
    # Traces when an OTEL_* exporter is set: each request, and the job it sends.
    _show_tracing_lines()
    tracing.start("ocr-api")
    app = serving_app(settings)
    tracing.instrument_fastapi(app)
    print(f"api: serving http://{address}:{port} (docs at /docs)", flush=True)
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _stopped)  # uvicorn's own handlers take over while it runs
    uvicorn.run(app, host=address, port=port, log_level=os.environ.get(
        "LOG_LEVEL", "info").lower(), proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None, server_header=False,
        http=head_timed(settings.api_header_timeout),  # a request's head bounded
        log_config=log_config(),  # the access log without query-string credentials
        # On SIGTERM requests in flight get this long; then open event streams are
        # closed (their clients reconnect, to any replica) and the process exits, well
        # within a pod's grace period: uvicorn otherwise waits for every stream to end.
        timeout_graceful_shutdown=GRACEFUL_SECONDS)
    tracing.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
