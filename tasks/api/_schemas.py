"""Request and response bodies of the HTTP API (pydantic models: the OpenAPI schema).

Runs in the `api` process. Options mirror `ocr.document`'s kwargs (docs/tasks.md);
the workers validate them again, fully (page ranges, engines, languages).
"""

from __future__ import annotations

from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field

from tasks.records.status import JobStatus, ShownState, WaitStatus

# An engine's name as a job may give it (the multipart reader checks an `engine` field
# that matches before the rest of the body arrives; others get this schema's 422).
ENGINE_NAME = r"^[A-Za-z0-9_.-]+$"
ENGINE_NAME_MAX = 64
# A job's ground truth: a document of a few hundred pages of text.
GROUND_TRUTH_MAX = 2_000_000

# The output formats of tasks/records/formats.py, spelled out for the schema (a test
# holds them equal).
Output = Literal["text", "markdown", "json", "pdf", "hocr", "alto"]
Mode = Literal["auto", "ocr", "text"]
Priority = Literal["interactive", "normal", "batch"]


def shown_priority(name: str) -> Priority | None:
    """A job's recorded priority as the API shows it (None: not recorded)."""
    return cast(Priority, name) if name in get_args(Priority) else None


# What the API shows of a job (tasks/records/status.py): waiting, then how it ended.
Status = Literal[WaitStatus.QUEUED, WaitStatus.RUNNING, JobStatus.SUCCESS, JobStatus.PARTIAL,
                 JobStatus.FAILURE, JobStatus.CANCELLED]
FINAL_STATUSES = tuple(JobStatus)


class JobOptions(BaseModel):
    """Options of one job: `ocr.document`'s kwargs, plus `path` for JSON requests."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, max_length=2000, description=(
        "JSON requests only: an s3://bucket/key or https:// URL the workers read the "
        "input from themselves, under OCR_ALLOWED_URLS (and the client's own prefixes); "
        "the bytes never pass through the API or Redis"))
    result_url: str | None = Field(None, max_length=2000, description=(
        "s3://bucket/prefix/ (or an object key) the workers write the result to, in the "
        "job's `output` format; the result's `result_object` names the object"))
    path: str | None = Field(None, max_length=4096, description=(
        "JSON requests only: absolute path of the input as the workers see it, under "
        "OCR_ALLOWED_ROOTS (multipart requests upload a `file` instead)."))
    filename: str | None = Field(None, max_length=255,
                                 description="name reported back in the result")
    pages: str | None = Field(None, max_length=200, pattern=r"^[0-9 ,-]+$",
                              description='pages to read, 1-based: "1-3,7", "4-"')
    password: str | None = Field(None, max_length=1024,
                                 description="opens an encrypted PDF")
    output: Output = Field("text", description="what the job produces")
    mode: Mode | None = Field(None, description="PDFs: auto (default), ocr or text")
    lang: str | None = Field(None, max_length=100, pattern=r"^[A-Za-z0-9_]+(\+[A-Za-z0-9_]+)*$",
                             description="tesseract languages, e.g. vie or ell+eng, or "
                                         "auto (each page in its own script's languages; "
                                         "the default of a job without lang)")
    engine: str | None = Field(None, max_length=ENGINE_NAME_MAX, pattern=ENGINE_NAME,
                               description="tesseract, mlx-vlm, rapidocr (default: any "
                               "worker's, or by `lang` as OCR_LANG_ENGINES says)")
    escalate: str | None = Field(None, max_length=ENGINE_NAME_MAX, pattern=ENGINE_NAME,
                                 description=(
        "vlm-api or mlx-vlm: the engine that reads again the pages the job's engine is "
        "unsure of (default: the fleet's OCR_ESCALATE_ENGINE; docs/escalation.md)"))
    escalate_below: float | None = Field(None, ge=0, le=1, description=(
        "a page whose mean word confidence (0 to 1) is below this, or that has no text "
        "and is not blank, is escalated; 0: none, 1: every OCR'd page (default: "
        "OCR_ESCALATE_BELOW)"))
    priority: Priority | None = Field(None, description=(
        "interactive jobs go first, batch last (default: normal, or the token's highest "
        "priority when that is lower)"))
    deadline: float | None = Field(None, gt=0, lt=1e11, description=(
        "seconds since the epoch: a job not started by then never starts; a running "
        "one stops reading pages (deadline_exceeded)"))
    callback_url: str | None = Field(None, max_length=2000, description=(
        "http(s) URL the result summary is POSTed to when the job ends"))
    no_cache: bool | None = Field(None, description=(
        "true: read afresh, not answered from the result cache (the new result replaces "
        "the cached one)"))
    ground_truth: str | None = Field(None, max_length=GROUND_TRUTH_MAX, description=(
        "the document's text as it should read, pages split by form feeds: the result "
        "then carries `scores` (CER, WER, characters, words) of the document and its "
        "pages (docs/accuracy.md)"))

    def task_kwargs(self) -> dict[str, Any]:
        """The `ocr.document` kwargs besides the input, priority and deadline."""
        names = ("filename", "pages", "password", "output", "mode", "lang", "engine",
                 "escalate", "escalate_below", "callback_url", "result_url", "no_cache",
                 "ground_truth")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class RetryOptions(BaseModel):
    """Options of a retry: the earlier job's options are kept."""

    model_config = ConfigDict(extra="forbid")

    password: str | None = Field(None, max_length=1024,
                                 description="opens an encrypted PDF")
    priority: Priority | None = Field(None, description=(
        "interactive jobs go first, batch last (default: normal, or the token's highest "
        "priority when that is lower)"))


class ErrorInfo(BaseModel):
    """An error (`page_quota_exceeded` adds the page cap's figures).

    Those are `period`, `cap`, `used`, `pages`, `resets` (ISO 8601, UTC) and
    `retry_after` (seconds).
    """

    model_config = ConfigDict(extra="allow")

    code: str = Field(description="stable code (docs/tasks.md lists the job codes)")
    message: str = Field(description="safe to show")
    retryable: bool


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"code", "message", "retryable"}}`."""

    error: ErrorInfo


class Links(BaseModel):
    self: str
    result: str
    events: str


class Progress(BaseModel):
    done: int = Field(description="pages finished")
    total: int | None = Field(description="pages to read; null until the job has "
                              "planned them (a PDF's page count is known once a worker "
                              "has opened it)")


class JobAccepted(BaseModel):
    id: str
    status: Status
    links: Links


class JobInfo(BaseModel):
    id: str
    status: Status = Field(description=(
        "QUEUED, RUNNING, then SUCCESS, PARTIAL (some pages failed), FAILURE or CANCELLED"))
    state: ShownState = Field(description=(
        "Celery's state in the service's words: PENDING, STARTED, PROGRESS, RETRY, "
        "SUCCESS, FAILURE, or CANCELLED for a cancelled job (never Celery's REVOKED; a "
        "job whose deadline passed before it started is FAILURE, deadline_exceeded)"))
    progress: Progress
    error: ErrorInfo | None = None
    client: str = Field("", description="the client the job was sent under (the token's "
                        "name)")
    priority: Priority | None = Field(None, description=(
        "the priority the job runs at: the one asked for, else normal, or the token's "
        "--max-priority when that is lower; priorities outrank weights"))
    filename: str = ""
    output: str = "text"
    created: float = Field(description="seconds since the epoch")
    links: Links


class JobList(BaseModel):
    """A page of the client's jobs, newest first."""

    jobs: list[JobInfo]
    next_cursor: str | None = Field(description=(
        "pass as `cursor` for the next page (older jobs); null: no more"))


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    redis: bool
    queue: str
    workers: list[str] = Field(description="workers consuming the queue (node names; "
                               "empty unless the request carries a client's token)")
    worker_count: int = Field(default=0, description="how many live workers consume the queue")
    queues: list[str] | None = Field(default=None, description="every queue a live worker consumes "
                                     "(only with a client's token)")
    message: str = ""
    engines: list[str] = Field(default_factory=list,
                               description="engines live workers run (each with a queue)")
    engines_from_zero: list[str] = Field(
        default_factory=list, description="engines served by a pool that may have no "
        "worker now (OCR_ENGINES_FROM_ZERO): their jobs wait, and their queue's depth "
        "wakes the pool")
    inference_server: bool | None = Field(
        default=None, description="whether the inference server of the vlm-api workers consuming "
        "the queue answers (checked from the API's host); null: no such worker")


class UsageDay(BaseModel):
    date: str = Field(description="a UTC date, YYYY-MM-DD")
    pages: int = Field(description="pages read that day")
    engines: dict[str, int] = Field(
        default_factory=dict, description="pages read that day by engine: an escalated "
        "page counts for both engines that read it, a text-layer or blank page under its "
        "source (`text-layer`, `blank`)")


class Usage(BaseModel):
    """A client's own pages read, by day (GET /v1/usage)."""

    client: str
    from_: str = Field(alias="from", description="first day (UTC)")
    to: str = Field(description="last day (UTC)")
    days: list[UsageDay] = Field(description="every day of the range, oldest first")
    total: int = Field(description="pages read over the range")
    engines: dict[str, int] = Field(
        default_factory=dict, description="pages read over the range by engine (as `days`' "
        "`engines`): they add up to more than `total` where pages escalated")
    today: int = Field(description="pages read today (UTC)")
    this_month: int = Field(description="pages read this month (UTC)")
    pages_per_day: int | None = Field(description="the token's cap a day; null: none")
    pages_per_month: int | None = Field(description="the token's cap a month; null: none")
    engines_today: dict[str, int] = Field(
        default_factory=dict, description="pages read today (UTC) by engine")
    engine_pages_per_day: dict[str, int] = Field(
        default_factory=dict, description="the token's caps a day by engine (`tokens "
        "create --engine-pages-per-day`); an engine not named has none")

    model_config = ConfigDict(populate_by_name=True)
