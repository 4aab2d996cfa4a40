"""Typed records of a job's life, as they cross Redis and process boundaries.

`DocumentMeta` is what a fanned-out PDF keeps in its join while its pages run (JSON in
Redis, read by the merge in any worker child); `PageDescriptor` is what one of its page
tasks reads with, sent in the task's message; `Outcome` is how a job ended, handed to
the one exit (`tasks.lifecycle.job_exit`), with its `JobStatus` (owned by
`tasks.records.status`, re-exported here). Built in worker pool children, and in the
worker parent for the endings only it sees (hard kills, expiries). `ResultRecord` is a
job's record in Celery's result backend, built by the queue layer and written by the
state store with the job's start or end claim.
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
__all__ = ["DocumentMeta", "JobStatus", "Outcome", "PageDescriptor", "ResultRecord"]


@dataclass(frozen=True)
class DocumentMeta:
    """A fanned-out PDF while its page tasks run (`ocr:doc:<id>:meta`, and its escalation).

    The request's input is in the blob store by then (`request.blob`), decrypted when
    the PDF was encrypted: the password is never stored (`request.password` is None);
    or, for a `url` input that is not encrypted, it stays at its URL (`input_object`).
    """

    job_id: str
    request: JobRequest
    engine: str
    model: str | None
    cache_key: str | None
    started: float
    total: int
    ocr_pages: list[int]
    page_tasks: list[str]
    reply_queue: str
    base: DocumentResult
    previous: DocumentResult | None = None
    encrypted: bool = False
    # A `url` input that fans out (not copied into Redis): its HEAD ({size, etag,
    # version}), so that every page task reads the same version of the object.
    input_object: dict[str, Any] | None = None
    # output=markdown/json: the text-layer pages analysed in chunk tasks (one list of
    # page numbers each, `documents.structure_chunks`) and those tasks' ids.
    text_chunks: list[list[int]] = field(default_factory=list)
    chunk_tasks: list[str] = field(default_factory=list)
    # The sending client's own URL prefixes (its control hash's `prefixes`): page tasks
    # and the merge hold the job's URLs to them as well as to OCR_ALLOWED_URLS.
    url_prefixes: list[str] | None = None
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
        request = replace(self.request, ground_truth=None)  # only the merge scores
        return PageDescriptor(self.job_id, tuple(pages), request, self.engine,
                              self.started, self.total, self.reply_queue,
                              self.base.format or "", self.input_object, self.url_prefixes)

    def to_json(self) -> str:
        """The meta as stored in Redis (`ocr:doc:<id>:meta`): the previous release's shape.

        The previous release reads it too: its workers take this release's page tasks
        in a rolling upgrade, and refuse a field they do not know. So the escalation
        (the request's `escalate` and `escalate_below`, and `escalated`) is kept
        apart (`escalation_json`), and the request's fields at their default are left out.
        """
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)
                                if f.name not in ("request", "base", "previous", "escalated")}
        data["request"] = _set_fields(replace(self.request, escalate=None,
                                              escalate_below=None))
        data["base"] = self.base.to_json()
        if self.previous is not None:
            data["previous"] = self.previous.to_json()
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
        data["request"] = JobRequest.from_json(data["request"])
        data["base"] = DocumentResult.from_json(data["base"])
        if data.get("previous") is not None:
            data["previous"] = DocumentResult.from_json(data["previous"])
        if escalation is not None:
            apart = json.loads(escalation)
            data["request"] = replace(data["request"], escalate=apart["escalate"],
                                      escalate_below=apart["escalate_below"])
            data["escalated"] = apart["escalated"]
        return cls(**data)


def escalation_task(job_id: str, number: int) -> str:
    """The id of page `number`'s `ocr.escalate_page`: derived, so a cancel names it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ocr:escalate:{job_id}:{number}"))


def _set_fields(request: JobRequest) -> dict[str, Any]:
    """A request as the meta and a page descriptor carry it: its fields not at their default."""
    unset = _UNSET_REQUEST.to_json()
    return {name: value for name, value in request.to_json().items()
            if name == "source" or value != unset[name]}


_UNSET_REQUEST = JobRequest(source="")


@dataclass(frozen=True)
class PageDescriptor(JsonRecord):
    """What a page task of a fanned-out document reads with: sent in its message.

    Built once for each task by the task that fans the document out
    (`DocumentMeta.describe`), and carried in the message's `ocr_page` header
    (tasks/queue/message_headers.py). The page task then reads no meta. The record of
    the page reads nothing of it either. The merge reads the meta: it needs what only
    the meta holds (the text-layer pages' result, the cache key, the model).
    """

    job_id: str
    # The pages the task reads: one for `ocr.pdf_page` and `ocr.escalate_page`, a
    # chunk's for `ocr.pdf_text_chunk`.
    pages: tuple[int, ...]
    # The job's request, without its ground truth (the meta keeps it for the merge).
    request: JobRequest = field(metadata=json_spec(encode=_set_fields,
                                                   decode=JobRequest.from_json))
    engine: str
    started: float
    total: int
    reply_queue: str
    format: str  # the document's: "pdf", or an image's (its pages are its frames)
    input_object: dict[str, Any] | None = None  # as `DocumentMeta.input_object`
    url_prefixes: list[str] | None = None  # as `DocumentMeta.url_prefixes`

    @property
    def number(self) -> int:
        """The page of a page task (its only one)."""
        return self.pages[0]

    def of_pages(self, *pages: int) -> PageDescriptor:
        """The descriptor of another task of the same document, which reads `pages`."""
        return replace(self, pages=pages)

    def failed(self, error: OcrError) -> Outcome:
        """The job's outcome when it fails in this task."""
        return Outcome.failed(self.job_id, error, self.request, engine=self.engine,
                              started=self.started, reply_queue=self.reply_queue)


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
    reply_queue: str | None = None  # the queue of the job's engine (HTTP callbacks)
    extra_blobs: tuple[str, ...] = field(default=())  # inputs to free besides the request's
    # Who sent the job when its request could not be decoded (else `request.client`).
    sender: str = ""
    trace_id: str | None = None  # the job's trace (32 hex digits), where it is traced

    @classmethod
    def failed(cls, job_id: str, error: OcrError, request: JobRequest | None, *,
               engine: str = "", started: float | None = None,
               reply_queue: str | None = None) -> Outcome:
        return cls(job_id, JobStatus.FAILURE, request, error=error, engine=engine,
                   started=started, reply_queue=reply_queue)

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
