"""`/v1/batches`: OCR a whole collection (an s3:// prefix or a manifest) into a target.

Runs in the `api` process (the routes are plain functions: FastAPI runs them in worker
threads, as every call here blocks on Redis). A batch is accepted after the same checks
as a job's (OCR_ALLOWED_URLS and the client's own prefixes, its engine and options),
recorded (tasks/state/batch_store.py) and its driver's first step sent
(`ocr.batch_step`, tasks/batch_worker.py); the workers do the rest. A batch is
its client's: another client asking about it gets 404, as for one that does not exist.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from tasks.admission import check_job_url, check_result_target
from tasks.api._errors import NotFound
from tasks.api._routes import COMMON, Caller, _errors, service_of
from tasks.api._schemas import ENGINE_NAME, ENGINE_NAME_MAX, Mode, Output, Priority
from tasks.api._service import JobService
from tasks.api.tokens import ApiClient
from tasks.errors import BadRequest, BatchQuotaExceeded, TargetInSource
from tasks.lifecycle.callback_urls import callback_target
from tasks.lifecycle.url_policy import overlap
from tasks.queue.batch_steps import batch_store, start_chain
from tasks.records.batches import RETRYABLE_STATES, BatchRecord, BatchState
from tasks.records.clients import ClientRules
from tasks.state.batch_store import BatchStore, progress_of

router = APIRouter()
# A batch whose driver took no step for this long (its workers all restarted while its
# step's message was held) gets a new chain of steps when it is read.
STALE_SECONDS = 60.0
EVENT_POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0


class BatchRequest(BaseModel):
    """A batch: where its documents are, where their outputs go, how they are read."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(..., max_length=2000, description=(
        "an s3://bucket/prefix/ (every object under it, listed page by page), or the URL "
        "(s3:// or https://) of a manifest: JSONL, one {\"url\": ..., \"options\": {...}} "
        "or one plain URL a line"))
    result_url: str = Field(..., max_length=2000, description=(
        "s3://bucket/prefix/ the outputs and the manifest are written under"))
    output: Output = "text"
    lang: str | None = Field(None, max_length=100,
                             pattern=r"^[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*$")
    engine: str | None = Field(None, max_length=ENGINE_NAME_MAX, pattern=ENGINE_NAME)
    mode: Mode | None = None
    pages: str | None = Field(None, max_length=200, pattern=r"^[0-9 ,-]+$")
    priority: Priority | None = Field(None, description=(
        "the documents' jobs' priority (default: batch); above the token's highest: 403"))
    overwrite: bool = Field(False, description=(
        "read every document, also those whose manifest line shows the same source "
        "version and options"))
    callback_url: str | None = Field(None, max_length=2000, description=(
        "POSTed the batch's summary when it ends (signed as a job's callback)"))
    document_callbacks: bool = Field(False, description=(
        "also POST each document's job summary to `callback_url` as it ends"))

    def job_options(self) -> dict[str, Any]:
        given = {"output": self.output, "lang": self.lang, "engine": self.engine,
                 "mode": self.mode, "pages": self.pages}
        return {k: v for k, v in given.items() if v is not None}


class BatchAccepted(BaseModel):
    id: str
    state: BatchState


class Counts(BaseModel):
    total: int | None = Field(description="documents in the source (null until listed)")
    listed: int
    done: int = Field(description="documents read completely")
    failed: int = Field(description="documents that failed or were read in part")
    skipped: int = Field(description="documents whose manifest line showed the same "
                         "source version and options")
    skipped_failed: int = Field(0, description="of the skipped, those whose line shows "
                                "a failure: they count as failed for the batch's state")
    running: int


class PageCounts(BaseModel):
    done: int
    failed: int


class BatchInfo(BaseModel):
    id: str
    client: str = Field("", description="whose batch it is, whichever door sent it")
    state: BatchState
    source: str
    result_url: str
    manifest: str = Field(description="the manifest's URL (written when the batch ends)")
    documents: Counts
    pages: PageCounts
    pages_per_second: float
    documents_per_second: float
    eta_seconds: float | None = Field(description="null until the listing is done")
    created: float
    ended: float | None
    cancel_requested: bool
    error: dict[str, Any] | None = Field(None, description=(
        "why a batch ended FAILURE before reading its documents (its source or target "
        "refused): code, message, retryable"))


class BatchService:
    """The API's batch operations for an authenticated client."""

    def __init__(self, service: JobService) -> None:
        self.service = service
        self.store: BatchStore = batch_store(service.settings, service.redis)

    def create(self, caller: ApiClient, request: BatchRequest) -> str:
        """Admit and record a batch, and send its first step; its id.

        The gate's checks for the batch as a whole (priority, `source` and `result_url`
        under the allow-lists, the target where the client writes results and clear of
        read-only prefixes, a target apart from its source (`target_in_source`),
        options, engine); then the client's running batches (`batch_quota_exceeded`),
        counted as the batch is recorded (one script). Each document is admitted again
        as it is sent.
        """
        settings = self.service.settings
        rules = caller.rules(settings)
        source = self._allowed(request.source, rules, "`source`")
        target = check_result_target(request.result_url, rules, settings, batch=True).url
        if not target.startswith("s3://") or not target.endswith("/"):
            raise BadRequest("`result_url` must be an s3:// prefix ending in /")
        if overlap(source, target):
            raise TargetInSource("the batch's `result_url` lies inside its `source` or "
                                 "holds it: its outputs would be read as documents, or "
                                 "its documents taken for outputs")
        options = request.job_options()
        priority = self.service.client.admit(options, priority=request.priority or "batch",
                                             rules=rules, service=True).priority
        callback_url = ""
        if request.callback_url:
            callback_url = callback_target(request.callback_url, settings).url
        elif request.document_callbacks:
            raise BadRequest("`document_callbacks` needs a `callback_url`")
        record = self.store.create_within(BatchRecord(
            id="", source=source, target=target, options=options, priority=priority,
            client=caller.name, owner=f"api:{caller.name}", api_client=caller.name,
            overwrite=request.overwrite, callback_url=callback_url,
            document_callbacks=bool(callback_url) and request.document_callbacks),
            rules.batches)  # counted and recorded in one step
        if record is None:
            raise BatchQuotaExceeded(f"client {caller.name!r} runs {rules.batches} batches, "
                                     "as many as its token allows; one must end first")
        start_chain(self.service.client.app, self.store, record.id)
        return record.id

    def _allowed(self, raw: str, rules: ClientRules, what: str) -> str:
        prefix_ok = raw.endswith("/")
        parsed = check_job_url(raw, rules, self.service.settings, what, prefix_ok)
        if prefix_ok and parsed.scheme != "s3":
            raise BadRequest(f"{what} must be an s3:// prefix when it ends in /")
        return parsed.url

    def record(self, caller: ApiClient, batch_id: str) -> BatchRecord:
        """The caller's batch: one whose client is the caller, whichever door sent it.

        As a job is its client's: an API batch its token's, a `submit.py batch` its
        `--client` (else the login name), a local folder's included.
        """
        if len(batch_id) > 64:
            raise NotFound("no such batch")
        record = self.store.get(batch_id)
        if not record.exists or record.client != caller.name:
            raise NotFound("no such batch")
        return record

    def info(self, caller: ApiClient, batch_id: str) -> BatchInfo:
        record = self.record(caller, batch_id)
        stepped = record.stepped or record.created
        if record.state is BatchState.RUNNING and time.time() - stepped > STALE_SECONDS:
            start_chain(self.service.client.app, self.store, batch_id)
        return shown(record, self.store.in_flight(batch_id))

    def cancel(self, caller: ApiClient, batch_id: str) -> BatchInfo:
        record = self.record(caller, batch_id)
        if not record.state.final:
            self.store.update(batch_id, cancel=True)
            start_chain(self.service.client.app, self.store, batch_id)
        return self.info(caller, batch_id)

    def retry(self, caller: ApiClient, batch_id: str) -> BatchInfo:
        record = self.record(caller, batch_id)
        if record.state not in RETRYABLE_STATES:
            raise BadRequest("only a PARTIAL or FAILURE batch can be retried; this one is "
                             f"{record.state}")
        if record.local:
            raise BadRequest("a local folder's batch is retried where it runs: "
                             "submit.py batch FOLDER --result-url TARGET --retry-failed")
        self.store.reopen(batch_id, "retry")
        start_chain(self.service.client.app, self.store, batch_id)
        return self.info(caller, batch_id)


def shown(record: BatchRecord, running: int) -> BatchInfo:
    """A batch's record as the API shows it: counts, rates, an ETA."""
    return BatchInfo.model_validate(progress_of(record, running))


def batches_of(request: Request) -> BatchService:
    service = service_of(request)
    made = getattr(request.app.state, "batches", None)
    if made is None:
        made = request.app.state.batches = BatchService(service)
    return made


@router.post("/v1/batches", status_code=202, response_model=BatchAccepted,
             summary="OCR every document of an s3:// prefix or a manifest into a target",
             responses=_errors(400, *COMMON))
def create_batch(request: Request, response: Response, body: BatchRequest,
                 caller: Caller) -> BatchAccepted:
    batch_id = batches_of(request).create(caller, body)
    response.headers["Location"] = f"/v1/batches/{batch_id}"
    return BatchAccepted(id=batch_id, state=BatchState.RUNNING)


@router.get("/v1/batches/{batch_id}", response_model=BatchInfo,
            summary="A batch's progress: documents and pages, rates, an ETA",
            responses=_errors(404, *COMMON))
def get_batch(request: Request, batch_id: str, caller: Caller) -> BatchInfo:
    return batches_of(request).info(caller, batch_id)


@router.post("/v1/batches/{batch_id}/cancel", response_model=BatchInfo,
             summary="Cancel a batch: its running documents are cancelled, no more start",
             responses=_errors(404, *COMMON))
def cancel_batch(request: Request, batch_id: str, caller: Caller) -> BatchInfo:
    return batches_of(request).cancel(caller, batch_id)


@router.post("/v1/batches/{batch_id}/retry", status_code=202, response_model=BatchInfo,
             summary="Read again the documents of a batch that failed (only those)",
             responses=_errors(400, 404, *COMMON))
def retry_batch(request: Request, batch_id: str, caller: Caller) -> BatchInfo:
    return batches_of(request).retry(caller, batch_id)


@router.get("/v1/batches/{batch_id}/events",
            summary="Server-sent events: the batch's progress as it changes, then its end",
            responses={200: {"description": "`event: progress` with the batch's status each "
                             "time it changes, then one `event: end`; `: keepalive` "
                             "comments every 15 s", "content": {"text/event-stream": {
                                 "schema": {"type": "string"}}}},
                       **_errors(404, *COMMON)})
async def batch_events(request: Request, batch_id: str, caller: Caller) -> StreamingResponse:
    batches = batches_of(request)
    first = await run_in_threadpool(batches.info, caller, batch_id)  # 404 before streaming
    return StreamingResponse(_events(request, batches, caller, first),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(request: Request, batches: BatchService, caller: ApiClient,
                  shown_now: BatchInfo) -> AsyncIterator[str]:
    """The batch's status each time its counts change; one Redis read a second."""
    last = None
    quiet = 0.0
    while True:
        seen = shown_now.model_dump_json(include={"state", "documents", "pages"})
        if shown_now.state is not BatchState.RUNNING:
            yield f"event: end\ndata: {shown_now.model_dump_json()}\n\n"
            return
        if seen != last:
            yield f"event: progress\ndata: {shown_now.model_dump_json()}\n\n"
            last, quiet = seen, 0.0
        elif quiet >= KEEPALIVE_SECONDS:
            yield ": keepalive\n\n"
            quiet = 0.0
        await anyio.sleep(EVENT_POLL_SECONDS)
        quiet += EVENT_POLL_SECONDS
        if await request.is_disconnected():
            return
        shown_now = await run_in_threadpool(batches.info, caller, shown_now.id)
