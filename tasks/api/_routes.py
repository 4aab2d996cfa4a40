"""The HTTP routes of `/v1/jobs` and the health checks.

Runs in the `api` process (uvicorn's event loop): every Redis or broker call goes
through `run_in_threadpool` into `JobService`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from tasks.api._errors import Unauthorized
from tasks.api._heavy import heavy_of, read_stored
from tasks.api._json_bodies import MAX_JSON_BYTES, parse_json
from tasks.api._results import MEDIA_TYPES, links
from tasks.api._schemas import (
    FINAL_STATUSES,
    ErrorBody,
    Health,
    JobAccepted,
    JobInfo,
    JobOptions,
    Readiness,
    RetryOptions,
)
from tasks.api._service import JobService
from tasks.api._uploads import body_chunks, receive_multipart
from tasks.api.sessions import COOKIE, CSRF_HEADER, SAFE_METHODS, Sessions
from tasks.api.tokens import ApiClient
from tasks.errors import BadRequest, EmptyInput
from tasks.queue.routing import DEFAULT_QUEUE
from tasks.records.status import WaitStatus

EVENT_POLL_SECONDS = 1.0  # an events stream's look at the progress marks
MAX_WAIT_SECONDS = 60.0  # the longest `GET /v1/jobs/{id}?wait=`
KEEPALIVE_SECONDS = 15.0

bearer = HTTPBearer(auto_error=False, description="a client token from "
                    "`submit.py tokens create NAME`")
router = APIRouter()


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    meaning = {400: "invalid request", 401: "missing, unknown or revoked token",
               404: "no such job (or not this client's)", 409: "see the error code",
               408: "the body did not arrive within OCR_API_BODY_TIMEOUT; nothing was kept",
               413: "the upload is larger than OCR_MAX_INPUT_MB; nothing was stored",
               415: "not multipart/form-data or JSON",
               422: "invalid options (and unknown_engine, invalid_pages)",
               429: "a limit or quota was reached (rate_limited, quota_exceeded, "
               "page_quota_exceeded); see Retry-After",
               503: "Redis or the broker is unreachable, no live worker runs the "
               "engine (engine_unavailable), or the process's turns for heavy work "
               "stayed taken (busy; see Retry-After)"}
    return {code: {"model": ErrorBody, "description": meaning[code]} for code in codes}


COMMON = (401, 422, 429, 503)


def service_of(request: Request) -> JobService:
    service: JobService = request.app.state.service
    return service


async def current_client(request: Request, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ApiClient:
    """The client whose token the request carries (401 otherwise), counted for limits.

    Without a bearer token, the console's session cookie (tasks/api/sessions.py) names
    the client; a state-changing request with it also carries the session's CSRF token.
    """
    service = service_of(request)
    header = None if credentials is None else f"{credentials.scheme} {credentials.credentials}"
    cookie = request.cookies.get(COOKIE) if credentials is None else None

    def check() -> ApiClient:
        if cookie is None:
            caller = service.access.authenticate(header)
        else:
            sessions: Sessions = request.app.state.sessions
            session = sessions.find(cookie)
            if session is None:
                raise Unauthorized("the console session is unknown or has ended")
            if request.method not in SAFE_METHODS:
                session.check_csrf(request.headers.get(CSRF_HEADER))
            caller = session.client
        service.access.count_request(caller)
        return caller

    return await run_in_threadpool(check)


Caller = Annotated[ApiClient, Depends(current_client)]
IdempotencyKey = Annotated[str | None, Header(
    max_length=255, description="the same key from the same client (within OCR_RESULT_TTL) "
    "returns the same job instead of sending a second one")]


def _upload_schema() -> dict[str, Any]:
    options = JobOptions.model_json_schema()
    properties = {k: v for k, v in options["properties"].items() if k != "path"}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary",
                                        "description": "the image or PDF"}, **properties}}},
            "application/json": {"schema": {**options, "required": ["path"]}},
        }}


@router.post("/v1/jobs", status_code=202, response_model=JobAccepted,
             summary="Send a job: upload a file (multipart) or name a path (JSON)",
             responses=_errors(400, 408, 409, 413, 415, *COMMON),
             openapi_extra={"requestBody": _upload_schema()})
async def create_job(request: Request, response: Response, caller: Caller,
                     idempotency_key: IdempotencyKey = None) -> JobAccepted:
    service = service_of(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload: str | None = None
    filename = ""
    if content_type == "multipart/form-data":
        received = await receive_multipart(request, service, caller)
        upload, filename, fields = received.upload, received.filename, received.fields
        if upload is None:
            raise BadRequest("send the input as the form field `file`")
        if received.size == 0:
            await run_in_threadpool(service.discard, caller, upload)
            raise EmptyInput("the uploaded file is empty")
        if "path" in fields:
            await run_in_threadpool(service.discard, caller, upload)
            raise BadRequest("send either a file or a `path`, not both")
        body: Any = fields
    elif content_type == "application/json":
        raw = b""
        async for chunk in body_chunks(request, service.settings.api_body_timeout):
            raw += chunk
            if len(raw) > MAX_JSON_BYTES:
                raise BadRequest("the JSON body is too large (upload files as multipart)")
        body = parse_json(raw)
    else:
        return JSONResponse(status_code=415, content={"error": {  # type: ignore[return-value]
            "code": "unsupported_media_type", "retryable": False,
            "message": "send multipart/form-data (a file) or application/json (a path)"}})
    try:
        options = JobOptions.model_validate(body)
    except ValidationError as exc:
        await run_in_threadpool(service.discard, caller, upload)
        raise RequestValidationError(exc.errors()) from None
    submitted = await run_in_threadpool(service.submit, caller, options, upload, filename,
                                        idempotency_key, request.headers.get("traceparent"))
    response.headers["Location"] = links(submitted.id).self
    if submitted.replayed:  # the job the key made, as it stands now
        response.headers["Idempotent-Replayed"] = "true"
        status = await run_in_threadpool(service.current_status, caller, submitted.id)
        return JobAccepted(id=submitted.id, status=status,  # type: ignore[arg-type]
                           links=links(submitted.id))
    return JobAccepted(id=submitted.id, status=WaitStatus.QUEUED, links=links(submitted.id))


@router.post("/v1/jobs/{job_id}/retry", status_code=202, response_model=JobAccepted,
             summary="Re-read the failed pages of a PARTIAL job (a new, complete job)",
             responses=_errors(400, 404, *COMMON))
def retry_job(request: Request, response: Response, job_id: str, caller: Caller,
              options: RetryOptions | None = None) -> JobAccepted:
    new_id = service_of(request).retry(caller, job_id, options or RetryOptions.model_validate({}))
    response.headers["Location"] = links(new_id).self
    return JobAccepted(id=new_id, status=WaitStatus.QUEUED, links=links(new_id))


@router.get("/v1/jobs/{job_id}", response_model=JobInfo, summary="A job's status",
            responses=_errors(404, *COMMON))
async def get_job(request: Request, job_id: str, caller: Caller, wait: float = Query(
        0, ge=0, le=MAX_WAIT_SECONDS, description="seconds to wait for the job to end "
        "before answering (it answers at once when it ends; 0: at once)")) -> JobInfo:
    service = service_of(request)
    status = await run_in_threadpool(service.status, caller, job_id)
    if wait and status.status not in FINAL_STATUSES:
        # one blocking read the process shares, not repeated polls
        await request.app.state.endings.wait(job_id, wait)
        status = await run_in_threadpool(service.status, caller, job_id)
    return status


def _result_schema(fmt: str) -> dict[str, str]:
    if fmt == "json":
        return {"type": "object"}
    return {"type": "string", "format": "binary"} if fmt == "pdf" else {"type": "string"}


@router.get("/v1/jobs/{job_id}/result", summary="A finished job's result in one format",
            response_class=Response, responses={
                200: {"description": "the result", "content": {
                    media: {"schema": _result_schema(fmt)} for fmt, media in MEDIA_TYPES.items()}},
                **_errors(404, 409, *COMMON)})
async def get_result(
        request: Request, job_id: str, caller: Caller,
        format: Literal["text", "json", "markdown", "hocr", "alto", "pdf"] = Query(
            "text", description="text for any job; markdown, hocr, alto and pdf when the "
            "job was sent with that output; json: the whole result"),
        original: bool = Query(False, description="the engine's own text, without the "
                               "client's line corrections")) -> Response:
    service = service_of(request)
    _, summary = await run_in_threadpool(service.summary, caller, job_id)
    # decoded whole to draw any format
    body = await read_stored(heavy_of(request), caller.name, summary, service.result, caller,
                             job_id, format, original)
    content = body.content
    if body.correct is not None:  # a stored document made again: heavy work
        content = await heavy_of(request).run(caller.name, body.correct, content)
    return Response(content, media_type=body.media_type, headers={
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(body.filename)}"})


@router.delete("/v1/jobs/{job_id}", response_model=JobInfo, status_code=202,
               summary="Cancel a job (202); a job that had ended answers 200",
               responses={200: {"model": JobInfo, "description": "the job had ended"},
                          **_errors(404, *COMMON)})
def cancel_job(request: Request, response: Response, job_id: str, caller: Caller) -> JobInfo:
    status, sent = service_of(request).cancel(caller, job_id)
    if not sent:
        response.status_code = 200
    return status


@router.get("/v1/jobs/{job_id}/events", summary="Server-Sent Events: progress, then the end",
            response_class=StreamingResponse, responses={
                200: {"description": "`event: progress` with the job's status whenever it "
                      "changes, then one `event: end` with the final status; `: keepalive` "
                      "comments every 15 s", "content": {"text/event-stream": {
                          "schema": {"type": "string"}}}},
                **_errors(404, *COMMON)})
async def job_events(request: Request, job_id: str, caller: Caller) -> StreamingResponse:
    service = service_of(request)
    first = await run_in_threadpool(service.status, caller, job_id)  # 404 before streaming
    return StreamingResponse(_events(request, service, caller, first),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(request: Request, service: JobService, caller: ApiClient,
                  status: JobInfo) -> AsyncIterator[str]:
    """Progress events; the end is learnt from the job's ending notice at once.

    Between changes the stream waits on the notice (the process's one blocking read,
    tasks/api/_endings.py) up to EVENT_POLL_SECONDS, then reads the job's state marks
    (one round trip); the status is built again when the marks moved or the job
    ended. Marks are read before the status they stand for, so a change while it is
    built shows at the next look.
    """
    last = None
    quiet = 0.0
    marks = await run_in_threadpool(service.progress_marks, status.id)
    status = await run_in_threadpool(service.status, caller, status.id)
    while True:
        seen = status.model_dump_json(exclude={"created", "links"})
        if status.status in FINAL_STATUSES:
            yield f"event: end\ndata: {status.model_dump_json()}\n\n"
            return
        if seen != last:
            yield f"event: progress\ndata: {status.model_dump_json()}\n\n"
            last, quiet = seen, 0.0
        elif quiet >= KEEPALIVE_SECONDS:
            yield ": keepalive\n\n"
            quiet = 0.0
        while True:
            started = anyio.current_time()
            ended = await request.app.state.endings.wait(status.id, EVENT_POLL_SECONDS)
            quiet += anyio.current_time() - started
            if await request.is_disconnected():
                return
            now = await run_in_threadpool(service.progress_marks, status.id)
            if ended or now != marks or quiet >= KEEPALIVE_SECONDS:
                break
        marks = now
        status = await run_in_threadpool(service.status, caller, status.id)


@router.get("/healthz", response_model=Health, summary="The API process is up (no auth)")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness,
            summary="Redis answers and a worker consumes the queue (and, for vlm-api "
                    "workers, their inference server answers; no auth; a client's token "
                    "adds the workers' names and queues)",
            responses={503: {"model": Readiness, "description": "not ready"}})
async def readyz(request: Request, response: Response, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
        queue: str = Query(DEFAULT_QUEUE, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$",
                           description="ocr, or an engine's queue (ocr-tesseract, ...)")
        ) -> Readiness:
    # Answered from the readiness snapshot in memory (tasks/api/_readiness.py): no
    # Redis call, no lock, nothing kept per queue. Only a token costs a lookup.
    service = service_of(request)
    detailed = False
    if credentials is not None:
        header = f"{credentials.scheme} {credentials.credentials}"
        detailed = await run_in_threadpool(service.access.is_client, header)
    ready = service.readiness(queue, detailed)
    if not ready.ready:
        response.status_code = 503
    return ready
