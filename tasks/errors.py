"""Errors of the OCR service: each class carries a stable `code` and a `retryable` flag.

Raised in worker children by domain code; Celery stores them as the task's FAILURE
(JSON: `exc_type`, `exc_message` = [code, message], `exc_module`), and clients turn
them back into `{"code", "message", "retryable"}` with `error_info()` (tasks/error_codes.py,
with every public code's class). Messages never include file contents or secrets.
"""

from __future__ import annotations

from typing import Any


class OcrError(Exception):
    """Base class. Subclasses only set `code`, `retryable` and `default_message`."""

    code = "internal_error"
    retryable = False
    default_message = "internal error"

    def __init__(self, *args: Any) -> None:
        # Celery rebuilds exceptions from their args, so both (message,) and
        # (code, message) must construct the same error.
        message = args[-1] if args else self.default_message
        super().__init__(self.code, str(message))

    @property
    def message(self) -> str:
        return str(self.args[1])

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class InternalError(OcrError):
    """An unexpected failure inside the service (its type is logged, never its text)."""

    code = "internal_error"


class BadRequest(OcrError):
    code = "bad_request"
    default_message = "the job's arguments are invalid"


class MalformedMessage(OcrError):
    """A broker message that is not a task message at all; it is dead-lettered."""

    code = "malformed_message"
    default_message = "the broker message could not be decoded"


class ContentRefused(OcrError):
    """A broker message in a serialization the service does not accept (pickle)."""

    code = "content_refused"
    default_message = "the message's content type is not accepted (JSON only)"


class CallbackNotAllowed(OcrError):
    code = "callback_not_allowed"
    default_message = "the callback URL is not allowed"


class AddressNotAllowed(OcrError):
    """An outbound request's address is refused by the policy (tasks/lifecycle/outbound.py)."""

    code = "address_not_allowed"
    default_message = "the address is not allowed (private, loopback or link-local)"


class InvalidPages(OcrError):
    code = "invalid_pages"
    default_message = "the page selection is invalid"


class InputNotFound(OcrError):
    code = "input_not_found"
    default_message = "the input does not exist or has expired"


class PathNotAllowed(OcrError):
    code = "path_not_allowed"
    default_message = "the path is outside the allowed roots"


class UrlNotAllowed(OcrError):
    """A URL input or `result_url` outside the allowed prefixes; nothing was fetched.

    OCR_ALLOWED_URLS, or the API client's own prefixes; also a redirect that leaves them.
    """

    code = "url_not_allowed"
    default_message = "the URL is not under an allowed prefix (OCR_ALLOWED_URLS)"


class UrlTimeout(OcrError):
    """A read of a URL that took longer than OCR_URL_DEADLINE in all.

    Its headers, body and redirects together. Not retried: an origin that slow would
    hold a pool child as long again on every try.
    """

    code = "url_timeout"
    default_message = "the read took longer than its deadline (OCR_URL_DEADLINE)"


class InputDenied(OcrError):
    """The object store (or https server) refused to give the object (403/401)."""

    code = "input_denied"
    default_message = "the store denied access to the object"


class ResultWriteFailed(OcrError):
    """The result could not be written to `result_url`; it stays in the result store."""

    code = "result_write_failed"
    default_message = "the result could not be written to result_url"


class EmptyInput(OcrError):
    code = "empty_input"
    default_message = "the input is empty"


class InputTooLarge(OcrError):
    code = "input_too_large"
    default_message = "the input is larger than the configured limit"


class UnsupportedFormat(OcrError):
    code = "unsupported_format"
    default_message = "the input is not a supported image or PDF"


class CorruptInput(OcrError):
    code = "corrupt_input"
    default_message = "the input could not be decoded"


class ImageTooLarge(OcrError):
    code = "image_too_large"
    default_message = "the image has more pixels than the configured limit"


class TooManyPages(OcrError):
    code = "too_many_pages"
    default_message = "the document has more pages than the configured limit"


class NoPages(OcrError):
    code = "no_pages"
    default_message = "the document has no pages"


class PdfEncrypted(OcrError):
    code = "pdf_encrypted"
    default_message = "the PDF is encrypted and no valid password was given"


class UnknownEngine(OcrError):
    code = "unknown_engine"
    default_message = "no such engine"


class EngineUnavailable(OcrError):
    code = "engine_unavailable"
    default_message = "the OCR engine could not be loaded in this worker"


class LanguageUnavailable(OcrError):
    """The job's `lang` names a language whose traineddata this worker does not have."""

    code = "language_unavailable"
    default_message = "the requested language is not installed on the worker"


class UnknownLanguage(OcrError):
    """The job's `lang` names a code that is no tesseract language and no live worker reads.

    Refused by the command line before anything is sent (a language that exists but a
    worker lacks is that worker's `language_unavailable`, naming how to install it).
    """

    code = "unknown_language"
    default_message = "the requested language is not a tesseract language code"


class OutputUnsupported(OcrError):
    """The job's `output` needs word boxes the engine does not give (pdf, hocr, alto)."""

    code = "output_unsupported"
    default_message = "the engine cannot produce the requested output"


class EngineFailed(OcrError):
    code = "engine_failed"
    default_message = "the OCR engine failed on this input"


class LayoutFailed(OcrError):
    """PyMuPDF's layout analysis failed on a page: a page warning, never a failure.

    The page keeps its plain text; the result lists it under `warnings` with this code.
    """

    code = "layout_failed"
    default_message = "the page's layout could not be analysed; its text is given plain"


class VlmIncomplete(OcrError):
    code = "vlm_incomplete"
    default_message = ("the vision-language model did not finish this page (token limit or "
                       "repetition loop) and no fallback engine read it")


class VlmApiError(OcrError):
    """The inference server refused a page (4xx: unknown model, prompt too long, ...)."""

    code = "vlm_api_error"
    default_message = "the inference server refused the page"


class Timeout(OcrError):
    code = "timeout"
    default_message = "the job ran past its time limit"


class PagesFailed(OcrError):
    code = "pages_failed"
    default_message = "every page of the document failed"


class OutputTooLarge(OcrError):
    code = "output_too_large"
    default_message = "the output is larger than the configured limit"


class DeadlineExceeded(OcrError):
    code = "deadline_exceeded"
    default_message = "the job's deadline passed"


class WorkerLost(OcrError):
    code = "worker_lost"
    default_message = "the worker running the job died"


class ModelDirMissing(OcrError):
    code = "model_dir_missing"
    default_message = "the model directory does not exist on the worker that audited it"


class PruneLocked(OcrError):
    """Another audit holds the prune lock; run again later."""

    code = "prune_locked"
    retryable = True
    default_message = "another audit is pruning the model directory; nothing was pruned"


class PruneFailed(OcrError):
    code = "prune_failed"
    default_message = "a model-directory entry could not be removed"


class TransientError(OcrError):
    """A failure that may pass: the broker or the blob store was briefly unreachable."""

    code = "transient"
    retryable = True
    default_message = "a temporary failure; the job is retried"


class ReplicaMissing(TransientError):
    """A write the primary took that no replica confirmed in time (Redis WAIT).

    Its code is `transient`: sent again, it may be kept. Raised where a job is
    accepted (OCR_REDIS_MIN_REPLICAS); the job it names was withdrawn.
    """

    default_message = "no Redis replica confirmed the write in time; try again"


class ObjectChanged(TransientError):
    """An object whose ETag is no longer the one its read was pinned to (HTTP 412).

    Its code is `transient`: read again from a new HEAD. A read pinned by its sender
    (`url_etag`) has no HEAD to read again from: there it is `input_not_found`.
    """

    default_message = "the object changed while it was read; it is read again"


class PrimaryReplaced(TransientError):
    """Writes a failover took: made on a Redis primary since replaced, or lost with it.

    Its code is `transient`: the task that made them is retried, and its retry goes out
    on a new broker connection (this process's may still be on the replaced primary,
    which takes writes until the Sentinels demote it, and then throws them away).
    """

    default_message = "a Redis failover took this process's writes; the job is retried"


class ServiceUnreachable(OcrError):
    """Client side: the broker (Redis at REDIS_URL) did not answer."""

    code = "service_unreachable"
    retryable = True
    default_message = "Redis did not answer at REDIS_URL"


class NoWorker(OcrError):
    """Client side: no live worker consumes the queue a job waits in."""

    code = "no_worker"
    retryable = True
    default_message = "no live worker consumes the job's queue"


class ScalingFromZero(OcrError):
    """Client side: a job waits for an engine whose pool scales from zero.

    No live worker consumes its queue yet; the engine is in OCR_ENGINES_FROM_ZERO, so
    the queue's depth starts its pool (docs/deploy.md). The job stays queued.
    """

    code = "scaling_from_zero"
    retryable = True
    default_message = "the engine's pool is scaling from zero; the job stays queued"


class SnapshotFailed(OcrError):
    """Operator side (`ocr_admin.py backup`): Redis gave no complete snapshot."""

    code = "snapshot_failed"
    retryable = True
    default_message = "Redis gave no complete snapshot"


class RestoreRefused(OcrError):
    """Operator side (`ocr_admin.py restore`): the backup cannot go into that Redis."""

    code = "restore_refused"
    default_message = "the backup cannot be restored into this Redis"


class PageQuotaExceeded(OcrError):
    """The job would pass its client's page cap (`tokens create --pages-per-day`/month).

    Refused before any page is read: at the HTTP API (429) or when the job is planned.
    `quota`, in the error's JSON: `period` (day or month), `cap`, `used`, `pages` (the
    job's), `resets` (ISO 8601, UTC), `retry_after` (seconds until then). It is the
    exception's last argument too, so that Celery's copy of a FAILURE keeps it.
    """

    code = "page_quota_exceeded"
    default_message = "the job would pass its client's page cap"

    def __init__(self, *args: Any, quota: dict[str, Any] | None = None) -> None:
        if args and isinstance(args[-1], dict):
            quota, args = args[-1], args[:-1]
        super().__init__(*args)
        self.quota = dict(quota or {})
        if self.quota:
            self.args = (*self.args, self.quota)
        # The HTTP API answers it with these (429).
        self.headers = ({"Retry-After": str(self.quota["retry_after"])}
                        if "retry_after" in self.quota else {})

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **self.quota}


class PriorityNotAllowed(OcrError):
    """A job sent with a higher priority than its API client's token allows (403)."""

    code = "priority_not_allowed"
    default_message = "this client may not send jobs with that priority"


class QuotaExceeded(OcrError):
    """Over one of the client's quotas: its jobs in flight, or its inputs' bytes (429).

    `headers` (Retry-After) are what the HTTP API answers it with. A batch's driver
    that meets it for a document waits for room and sends it later.
    """

    code = "quota_exceeded"
    retryable = True
    default_message = "over the client's quota; retry after the Retry-After seconds"

    def __init__(self, *args: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(*args)
        self.headers = dict(headers or {})


class BatchQuotaExceeded(OcrError):
    """The client runs as many batches as its token allows (`tokens create --batches`)."""

    code = "batch_quota_exceeded"
    retryable = True
    default_message = "the client runs as many batches as it may"


class LineTooLong(OcrError):
    """A manifest line longer than OCR_BATCH_MAX_LINE_BYTES: that document fails."""

    code = "line_too_long"
    default_message = "the manifest line is too long"


class JobNotFound(OcrError):
    """A job id no record names: never sent, or its records expired."""

    code = "not_found"
    default_message = "no such job: it was never sent, or its records expired"


class AmbiguousId(OcrError):
    """A short job id (a prefix of 8 or more characters) that begins several jobs."""

    code = "ambiguous_id"
    default_message = "the short id begins several jobs: give more of it"


# The codes of a batch's manifest lines and of its door.


class NoUrl(OcrError):
    """A manifest line that is a JSON object naming no `url` (`{}`): that line fails."""

    code = "no_url"
    default_message = "the manifest line names no url"


class DuplicateLine(OcrError):
    """A manifest line naming a document and options an earlier line named: read once."""

    code = "duplicate"
    default_message = "an earlier manifest line names the same document and options"


class TargetInSource(OcrError):
    """A batch whose `result_url` lies inside its `source`, or holds it: refused."""

    code = "target_in_source"
    default_message = "the batch's result_url and its source overlap"
