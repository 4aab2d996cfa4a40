"""The HTTP API's application: `create_api(settings)` builds the FastAPI app.

The console (tasks/console/) sits a floor above it and is mounted into this app by
the `api` process (scripts/run_api.py: `serving_app`).

Runs in the `api` process (Procfile; `scripts/run_api.py` serves it with uvicorn). It
talks only to Redis and sends tasks by name, so it imports no engine, MLX or PyMuPDF
and starts in well under a second. The docs page (`/docs`) is served from files in
the fastapi-offline package: no CDN, no network.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from tasks.api._batches import router as batches_router
from tasks.api._endings import EndingWatcher
from tasks.api._errors import JobUnsuccessful, http_status
from tasks.api._heavy import HeavyWork
from tasks.api._json_bodies import JsonBodies
from tasks.api._listing import router as listing_router
from tasks.api._pages import router as pages_router
from tasks.api._routes import router
from tasks.api._service import JobService
from tasks.api._uploads import ENVELOPE_BYTES, DrainRefused
from tasks.api._usage import router as usage_router
from tasks.api.security_headers import DocsHeaders, SecurityHeaders
from tasks.api.sessions import Sessions
from tasks.client import OcrClient
from tasks.errors import OcrError
from tasks.queue.app import sending_app
from tasks.settings import Settings
from tasks.state.connection import connect

log = logging.getLogger(__name__)
DESCRIPTION = """OCR jobs over HTTP: send an image or PDF, follow its progress, fetch its
result. Every `/v1` call needs `Authorization: Bearer <token>` (a client's token from
`submit.py tokens create NAME`); a client sees only its own jobs. Errors are
`{"error": {"code", "message", "retryable"}}`."""


def create_api(settings: Settings, client: OcrClient | None = None) -> FastAPI:
    """The app, with its `JobService` in `app.state.service`."""
    app = FastAPIOffline(title="OCR service", version="1", description=DESCRIPTION)
    client = client or OcrClient(settings, app=sending_app(settings))
    app.state.service = JobService(settings, client, connect(settings.redis_target, patient=False))
    # requests that wait for a job's end share one blocking read (tasks/api/_endings.py)
    app.state.endings = EndingWatcher(connect(settings.redis_target, patient=False))
    app.router.add_event_handler("shutdown", app.state.endings.stop)
    app.include_router(router)
    app.include_router(listing_router)  # GET /v1/jobs
    app.include_router(usage_router)  # GET /v1/usage
    app.include_router(batches_router)  # /v1/batches
    app.include_router(pages_router)  # /v1/jobs/{id}/pages: lines, images, corrections
    # the console's sign-in sessions, which the routes above take in place of a bearer
    # token; the console itself is mounted where the app is served (scripts/run_api.py)
    app.state.sessions = Sessions(connect(settings.redis_target, patient=False))
    # work that grows with a stored object: a few requests at once (tasks/api/_heavy.py)
    app.state.heavy = HeavyWork.of(settings)
    readiness = app.state.service.readiness
    app.router.add_event_handler("startup", readiness.start)  # the snapshot /readyz reads
    app.router.add_event_handler("shutdown", readiness.stop)
    app.add_exception_handler(OcrError, _ocr_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(redis.RedisError, _redis_error)
    app.add_exception_handler(OperationalError, _redis_error)  # the broker, through kombu
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    # Bodies other than multipart uploads: at most 64 KB, and valid JSON when JSON.
    app.add_middleware(JsonBodies, timeout=settings.api_body_timeout)
    # Refusals read by every client: a refused body within twice the upload limit is
    # read and dropped before the answer (tasks/api/_uploads.py).
    app.add_middleware(DrainRefused, limit=2 * settings.max_input_bytes + ENVELOPE_BYTES,
                       timeout=settings.api_body_timeout)
    # A CSP and nosniff on every /v1 answer (hOCR is text/html): outermost, so refusals
    # made by the middlewares above carry them too.
    app.add_middleware(SecurityHeaders)  # /v1's CSP and nosniff
    app.add_middleware(DocsHeaders)  # /docs, /redoc, /openapi.json: a CSP, no framing
    return app


def _body(code: str, message: str, retryable: bool = False) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "retryable": retryable}}


async def _ocr_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OcrError)
    if isinstance(exc, JobUnsuccessful):
        return JSONResponse({"error": exc.error}, status_code=exc.status)
    headers = getattr(exc, "headers", None)
    return JSONResponse({"error": exc.to_dict()}, status_code=http_status(exc),
                        headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else
                     str(error.get("msg", "invalid")))
    # A body that is not JSON at all is 400, as every malformed request; options that
    # do not fit the schema are 422.
    malformed = any(error.get("type") == "json_invalid" for error in exc.errors())
    return JSONResponse(_body("bad_request", "; ".join(parts) or "invalid request"),
                        status_code=400 if malformed else 422)


async def _redis_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(_body("transient", f"Redis is unreachable ({type(exc).__name__})",
                              retryable=True), status_code=503)


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    """A client that hung up mid-request: one log line (what it sent is already gone)."""
    log.warning("client %s disconnected during %s %s", request.client.host if request.client
             else "?", request.method, request.url.path)
    return JSONResponse(_body("client_disconnected", "the client disconnected"),
                        status_code=400)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
        exc.status_code, "bad_request")
    return JSONResponse(_body(code, str(exc.detail)), status_code=exc.status_code,
                        headers=exc.headers)
