"""Typed records of a job's life, as they cross Redis and process boundaries.

`Job` is one job from its door to its worker; `DocumentMeta` is what a fanned-out PDF
keeps in its join while its pages run (JSON in Redis, read by the merge in any worker
child); `PageDescriptor` is what one of its page tasks reads with, sent in the task's
message; `Outcome` is how a job ended, handed to the one exit (`tasks.lifecycle.job_exit`),
with its `JobStatus` (owned by `tasks.records.status`, re-exported here). Built in
worker pool children, and in the worker parent for the endings only it sees (hard
kills, expiries). `ResultRecord` is a job's record in Celery's result backend, built by
the queue layer and written by the state store with the job's start or end claim.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from tasks.errors import OcrError
from tasks.records._codec import JsonRecord, json_spec
from tasks.records.request import JobRequest
from tasks.records.results import DocumentResult
from tasks.records.status import JobStatus

# JobStatus: owned by tasks.records.status
__all__ = ["DocumentMeta", "Job", "JobStatus", "Outcome", "PageDescriptor", "Reservation",
           "ResultRecord"]


@dataclass
class Reservation:
    """What the gate took for one job, and the sender commits or releases.

    `queue`: where the job is sent (`routing.job_queue`); `priority`: a name of
    `PRIORITIES`; `in_flight`: a place among the client's jobs in flight is taken;
    `pages`: the pages held against its caps (0: none). `committed`: the job was sent,
    so a release leaves both in place.
    """

    job_id: str
    client: str
    queue: str
    priority: str
    in_flight: bool = False
    pages: int = 0
    committed: bool = False


@dataclass(frozen=True)
class Job:
    """One job, from the door that builds it to the worker that rebuilds it once.

    Its request holds what the job asks, with its client and deadline. A door builds
    the job once; the gate takes it and gives its reservation (its queue, priority,
    place in flight and page hold); the sender writes and sends it
    (tasks/queue/sender.py): its control hash takes the door's fields, its message the
    request. The worker rebuilds it once from the message (`ocr.document`), with the
    engine that reads it, when its task started, the result of the job it completes (`merge_from`:
    a retry's), and, once known, the engine's model and the result's cache key. A
    fanned-out document's meta holds it (`DocumentMeta.job`), and its page tasks'
    descriptors are views of it (`DocumentMeta.describe`).
    """

    id: str
    request: JobRequest
    # the worker's
    engine: str = ""
    started: float = 0.0
    previous: DocumentResult | None = None
    # The sending client's own URL prefixes (its control hash's `prefixes`): the job's
    # URLs are held to them as well as to OCR_ALLOWED_URLS. None: OCR_ALLOWED_URLS alone.
    url_prefixes: tuple[str, ...] | None = None
    model: str | None = None
    cache_key: str | None = None
    # the door's: what the gate took, and what the sender writes beside the message.
    reservation: Reservation | None = None
    owner: str = ""  # `api:<client>` for an API client's job: whose cache and records
    batch: str = ""
    created: float | None = None  # the time it is listed under (its sender's clock)
    traceparent: str | None = None
    # Where it writes results (`ClientRules.result_urls`; None: under
    # OCR_ALLOWED_URLS, empty: nowhere).
    result_prefixes: tuple[str, ...] | None = None
    extra: dict[str, str] = field(default_factory=dict)  # more control-hash fields
    input: bytes | None = field(default=None, repr=False)  # stored under request.blob

    @property
    def priority(self) -> str:
        """The priority the gate gave it (a name of `PRIORITIES`)."""
        return self.reservation.priority if self.reservation is not None else ""

    def failed(self, error: OcrError) -> Outcome:
        """The job's outcome when it fails with `error`."""
        return Outcome.failed(self.id, error, self.request, engine=self.engine,
                              started=self.started)


class _OfJob:
    """A record that holds a job, read through it: its id and its request."""

    job: Job

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def request(self) -> JobRequest:
        return self.job.request


@dataclass(frozen=True)
class DocumentMeta(_OfJob):
    """A fanned-out PDF while its page tasks run (`ocr:doc:<id>:meta`, and its escalation).

    The job (`job`), and how it was split. The request's input is in the blob store by
    then (`request.blob`), decrypted when the PDF was encrypted: the password is never
    stored (`request.password` is None); or a `url` input stays at its URL
    (`input_object`), and an encrypted one is opened on each host with the password its
    sealed arguments hold (`request.sealed`).
    """

    job: Job
    total: int
    ocr_pages: list[int]
    page_tasks: list[str]
    reply_queue: str
    base: DocumentResult
    encrypted: bool = False
    # A `url` input that fans out (not copied into Redis): its HEAD ({size, etag,
    # version}), so that every page task reads the same version of the object. Stored,
    # an encrypted one's also names its password's sealed arguments (`sealed`), which
    # its tasks open their host's copy with: no page message carries the password.
    input_object: dict[str, Any] | None = None
    # output=markdown/json: the text-layer pages analysed in chunk tasks (one list of
    # page numbers each, `documents.structure_chunks`) and those tasks' ids.
    text_chunks: list[list[int]] = field(default_factory=list)
    chunk_tasks: list[str] = field(default_factory=list)
    # An image's pages its task sent to the escalation engine (an image fans out only
    # for them); a PDF's escalate from its `ocr_pages`.
    escalated: list[int] = field(default_factory=list)

    def escalation_tasks(self) -> list[str]:
        """The ids of every escalation task the document may have sent."""
        if self.request.escalate is None:
            return []
        return [escalation_task(self.job_id, n) for n in (*self.ocr_pages, *self.escalated)]

    def describe(self, pages: Iterable[int] = ()) -> PageDescriptor:
        """The descriptor of the page task that reads `pages` of this document."""
        job = self.job
        viewed = Job(job.id, replace(job.request, ground_truth=None),  # the merge scores
                     job.engine, job.started, url_prefixes=job.url_prefixes)
        return PageDescriptor(viewed, tuple(pages), self.total, self.reply_queue,
                              self.base.format or "", self.input_object)

    def to_json(self) -> str:
        """The meta as stored in Redis (`ocr:doc:<id>:meta`): the previous release's shape.

        The previous release reads it too: its workers take this release's page tasks
        in a rolling upgrade, and refuse a field they do not know. So the job's fields
        lie flat beside the split's, the escalation (the request's `escalate` and
        `escalate_below`, and `escalated`) is kept apart (`escalation_json`), and the
        request's fields at their default are left out.
        """
        job = self.job
        data: dict[str, Any] = {
            "job_id": job.id, "engine": job.engine, "model": job.model,
            "cache_key": job.cache_key, "started": job.started,
            "url_prefixes": _listed(job.url_prefixes),
            **{f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("job", "base", "escalated")}}
        data["request"] = _set_fields(replace(job.request, escalate=None,
                                              escalate_below=None, sealed=None))
        if job.request.sealed and self.input_object is not None:  # read with .get()
            data["input_object"] = {**self.input_object, "sealed": job.request.sealed}
        data["base"] = self.base.to_json()
        if job.previous is not None:
            data["previous"] = job.previous.to_json()
        return json.dumps(data)

    def escalation_json(self) -> str | None:
        """The escalation, kept beside the meta (`ocr:doc:<id>:escalation`).

        The request's `escalate` and `escalate_below`, and `escalated`. None for a job
        that escalates nothing: no key is kept.
        """
        if self.request.escalate is None and self.request.escalate_below is None \
                and not self.escalated:
            return None
        return json.dumps({"escalate": self.request.escalate,
                           "escalate_below": self.request.escalate_below,
                           "escalated": self.escalated})

    @classmethod
    def from_json(cls, raw: str | bytes,
                  escalation: str | bytes | None = None) -> DocumentMeta:
        """The meta stored (`to_json`), its `escalation` (`escalation_json`) put back."""
        data = json.loads(raw)
        request = JobRequest.from_json(data.pop("request"))
        sealed = (data.get("input_object") or {}).pop("sealed", None)
        if sealed is not None:
            request = replace(request, sealed=sealed)
        data["base"] = DocumentResult.from_json(data["base"])
        previous = data.pop("previous", None)
        if escalation is not None:
            apart = json.loads(escalation)
            request = replace(request, escalate=apart["escalate"],
                              escalate_below=apart["escalate_below"])
            data["escalated"] = apart["escalated"]
        prefixes = data.pop("url_prefixes", None)
        job = Job(data.pop("job_id"), request, data.pop("engine"), data.pop("started"),
                  None if previous is None else DocumentResult.from_json(previous),
                  None if prefixes is None else tuple(prefixes), data.pop("model"),
                  data.pop("cache_key"))
        return cls(job, **data)


def _listed(prefixes: tuple[str, ...] | None) -> list[str] | None:
    return None if prefixes is None else list(prefixes)


def escalation_task(job_id: str, number: int) -> str:
    """The id of page `number`'s `ocr.escalate_page`: derived, so a cancel names it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ocr:escalate:{job_id}:{number}"))


def _set_fields(request: JobRequest) -> dict[str, Any]:
    """A request as the meta and a page descriptor carry it: its fields not at their default."""
    unset = _UNSET_REQUEST.to_json()
    return {name: value for name, value in request.to_json().items()
            if name == "source" or value != unset[name]}


_UNSET_REQUEST = JobRequest(source="")


def _viewed_job(job: Job) -> dict[str, Any]:
    """A page descriptor's job, as keys of its own object (the shape it always had)."""
    shown = {"job_id": job.id, "request": _set_fields(job.request), "engine": job.engine,
             "started": job.started}
    return shown if job.url_prefixes is None else \
        {**shown, "url_prefixes": _listed(job.url_prefixes)}


def _job_viewed(data: dict[str, Any]) -> Job:
    prefixes = data.get("url_prefixes")
    return Job(data["job_id"], JobRequest.from_json(data["request"]), data["engine"],
               data["started"], url_prefixes=None if prefixes is None else tuple(prefixes))


@dataclass(frozen=True)
class PageDescriptor(_OfJob, JsonRecord):
    """What a page task of a fanned-out document reads with: sent in its message.

    A view of the document's job (`DocumentMeta.describe`): its request without its
    ground truth (the meta keeps it for the merge), its engine, start and URL prefixes;
    with the pages the task reads and what the split decided. Built once for each task
    by the task that fans the document out, and carried in the message's `ocr_page`
    header (tasks/queue/message_headers.py). The page task then reads no meta. The
    record of the page reads nothing of it either. The merge reads the meta: it needs
    what only the meta holds (the text-layer pages' result, the cache key, the model).
    """

    job: Job = field(metadata=json_spec(inline=True, encode=_viewed_job,
                                        decode=_job_viewed))
    # The pages the task reads: one for `ocr.pdf_page` and `ocr.escalate_page`, a
    # chunk's for `ocr.pdf_text_chunk`.
    pages: tuple[int, ...]
    total: int
    reply_queue: str
    format: str  # the document's: "pdf", or an image's (its pages are its frames)
    input_object: dict[str, Any] | None = None  # as `DocumentMeta.input_object`

    @property
    def number(self) -> int:
        """The page of a page task (its only one)."""
        return self.pages[0]

    def of_pages(self, *pages: int) -> PageDescriptor:
        """The descriptor of another task of the same document, which reads `pages`."""
        return replace(self, pages=pages)

    def failed(self, error: OcrError) -> Outcome:
        """The job's outcome when it fails in this task."""
        return self.job.failed(error)


@dataclass(frozen=True)
class ResultRecord:
    """A job's record as Celery's result backend stores it: key, JSON text, TTL (s).

    `ttl` None: kept without one. Stored by `JobControl` in the round trip of the job's
    start or end claim (tasks/state/job_control.py), published on `key` when it ends.
    """

    key: str
    text: str | bytes
    ttl: int | None


@dataclass(frozen=True)
class Broadcast:
    """A PUB/SUB message as it is published: its channel and its text.

    A job's ending event for monitors (Flower), made by the queue layer for the end
    claim's step to publish with the result (tasks/state/job_control.py).
    """

    topic: str
    message: str


@dataclass
class Outcome:
    """A finished job: its status and either its result or its error.

    `request` is None only when the job's arguments could not be decoded; `filename`
    and `engine` then come from whatever could be read.
    """

    job_id: str
    status: JobStatus
    request: JobRequest | None = None
    result: DocumentResult | None = None
    error: OcrError | None = None
    engine: str = ""
    started: float | None = None  # epoch seconds the job started, when known
    extra_blobs: tuple[str, ...] = field(default=())  # inputs to free besides the request's
    # Who sent the job when its request could not be decoded (else `request.client`).
    sender: str = ""
    trace_id: str | None = None  # the job's trace (32 hex digits), where it is traced
    # A cache hit's: the job that read the document, whose stored pages it shows.
    source: str = ""

    @classmethod
    def failed(cls, job_id: str, error: OcrError, request: JobRequest | None, *,
               engine: str = "", started: float | None = None) -> Outcome:
        return cls(job_id, JobStatus.FAILURE, request, error=error, engine=engine,
                   started=started)

    @property
    def filename(self) -> str:
        if self.result is not None and self.result.filename:
            return self.result.filename
        return self.request.filename if self.request is not None else ""

    @property
    def client(self) -> str:
        """Who sent the job ("" for the anonymous client)."""
        return self.request.client if self.request is not None else self.sender

    @property
    def seconds(self) -> float | None:
        return None if self.started is None else round(time.time() - self.started, 3)

    @property
    def keeps_input(self) -> bool:
        """A PARTIAL result keeps its input, so that its failed pages can be retried."""
        return self.status is JobStatus.PARTIAL

    def brief(self) -> dict[str, Any]:
        """What the job's `ocr.job` line reads of its public result, its pages not encoded.

        The keys of `public()` that `tasks/queue/job_samples.job_record` reads: status,
        pages (counted, with their `vlm` reads and `fallback`s), engine, cached,
        failed_pages (not for a cancelled result).
        """
        if self.result is None:
            return self.public()
        pages = [{key: value.to_json() for key, value in (("vlm", p.vlm), ("fallback", p.fallback))
                  if value is not None} for p in self.result.pages]
        brief: dict[str, Any] = {"status": self.status.value, "pages": pages,
                                 "engine": self.result.engine, "cached": self.result.cached}
        if self.result.status is not JobStatus.CANCELLED:
            brief["failed_pages"] = [p.number for p in self.result.pages
                                     if p.error is not None]
        return brief

    def public(self) -> dict[str, Any]:
        """The result a client reads (and a callback task receives)."""
        traced = {"trace_id": self.trace_id} if self.trace_id else {}
        if self.result is not None:
            return {**self.result.to_json(), "id": self.job_id, "status": self.status.value,
                    "client": self.client, **traced}
        error = self.error or OcrError()
        return {"id": self.job_id, "status": self.status.value, "filename": self.filename,
                "client": self.client, "error": error.to_dict(), **traced}

    def stored(self) -> dict[str, Any]:
        """The result as stored: a cache hit's refers to its source's pages (`referring`)."""
        public = self.public()
        return referring(public, self.source) if self.source and self.result else public


# What a cache hit's stored result takes from its source's, by reference: the pages
# and the text made of them, the bulk of a result. The rest is the job's own.
SHARED_FIELDS = ("pages", "text")
SOURCE_FIELD = "result_of"


def referring(public: dict[str, Any], source: str) -> dict[str, Any]:
    """`public` without its SHARED_FIELDS, naming the job whose stored result has them."""
    return {**{k: v for k, v in public.items() if k not in SHARED_FIELDS},
            SOURCE_FIELD: source}


def resolved(stored: dict[str, Any], source: dict[str, Any] | None) -> dict[str, Any]:
    """A stored result whole: a reference's SHARED_FIELDS from its `source`'s result.

    A source gone (never, while its references live: they keep it) leaves no pages.
    """
    shared = {k: (source or {}).get(k, [] if k == "pages" else "") for k in SHARED_FIELDS}
    own = {k: v for k, v in stored.items() if k != SOURCE_FIELD}
    return {**own, **shared}


# What a job's summary copies of its public result as it is.
_SUMMARY_COPIED = ("id", "status", "filename", "client", "format", "output", "mode",
                   "page_count", "error", "engine", "warnings", "timings", "cached",
                   "retry_of", "trace_id", "languages")


def job_summary(public: dict[str, Any], stored_bytes: int) -> dict[str, Any]:
    """A job's summary: what status reads, job lists and the console show of its ending.

    Small whatever the result: no page text, no lines. The numbers of the pages it
    holds (`read_pages`), how many read without error (`done`), the failed ones
    (`failed_pages`), how many it covers (`covered`), the escalations without their
    first readings,
    and the sizes of the stored result and its files (`bytes`). Written beside the
    result by the one exit (`tasks.lifecycle.job_exit`); read by `JobStateReader`.
    """
    out = {key: public[key] for key in _SUMMARY_COPIED if key in public}
    pages = [p for p in public.get("pages") or [] if isinstance(p, dict)]
    out["read_pages"] = [p.get("number") for p in pages]
    out["done"] = sum(1 for p in pages if "error" not in p)
    out["failed_pages"] = sorted(
        {p.get("number") for p in [*pages, *(public.get("failed_pages") or [])]
         if isinstance(p, dict) and "error" in p})
    out["covered"] = len({p.get("number") for p in [*pages,
                                                     *(public.get("failed_pages") or [])]
                          if isinstance(p, dict)})
    out["escalations"] = {str(p["number"]): {k: v for k, v in p["escalation"].items()
                                             if k != "first_text"}
                          for p in pages if isinstance(p.get("escalation"), dict)}
    out["bytes"] = {"result": stored_bytes, **{
        kind: stored["bytes"] for kind in ("pdf", "hocr", "alto")
        if isinstance(stored := public.get(kind), dict) and "bytes" in stored}}
    return out
