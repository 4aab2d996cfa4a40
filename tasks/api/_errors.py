"""Errors only the HTTP API answers, each with its HTTP status beside code and retryable.

Runs in the `api` process. Job errors (tasks/errors.py) keep their codes; `http_status`
maps them: `input_too_large` 413, `unsupported_format` 415, `transient` and
`engine_unavailable` 503, `unknown_engine`, `unknown_language`, `language_unavailable`
and `invalid_pages` 422,
`page_quota_exceeded` 429, the rest 400.
"""

from __future__ import annotations

from tasks.errors import OcrError
from tasks.errors import QuotaExceeded as QuotaExceeded  # the gate's; answered 429


class ApiError(OcrError):
    """An error answered with `status` (and `headers`, e.g. Retry-After)."""

    status = 400

    def __init__(self, *args: object, headers: dict[str, str] | None = None) -> None:
        super().__init__(*args)
        self.headers = headers or {}


class Unauthorized(ApiError):
    code = "unauthorized"
    status = 401
    default_message = "a valid `Authorization: Bearer <token>` header is required"

    def __init__(self, *args: object) -> None:
        super().__init__(*args, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ApiError):
    code = "not_found"
    status = 404
    default_message = "no such job"


class RateLimited(ApiError):
    code = "rate_limited"
    status = 429
    retryable = True
    default_message = "too many requests; retry after the Retry-After seconds"


class BodyTimeout(ApiError):
    """The request's body did not arrive within OCR_API_BODY_TIMEOUT; nothing was kept."""

    code = "body_timeout"
    status = 408
    retryable = True
    default_message = "the request body did not arrive in time"


class CompareTooLarge(ApiError):
    """A compare past its bounds: a reading's lines or characters, or its running time.

    OCR_COMPARE_MAX_LINES, OCR_COMPARE_MAX_CHARS, OCR_COMPARE_TIMEOUT; nothing shown.
    """

    code = "compare_too_large"
    status = 422
    default_message = "the readings are too large to compare"


class Busy(ApiError):
    """Heavy work that found no turn within OCR_API_HEAVY_WAIT (tasks/api/_heavy.py)."""

    code = "busy"
    status = 503
    retryable = True
    default_message = "the API process is busy with other such requests; try again shortly"

    def __init__(self, *args: object) -> None:
        super().__init__(*args, headers={"Retry-After": "5"})


class NotFinished(ApiError):
    code = "not_finished"
    status = 409
    retryable = True
    default_message = "the job has not finished"


class IdempotencyKeyReused(ApiError):
    """An Idempotency-Key sent again with other options: a new job needs a new key."""

    code = "idempotency_key_reused"
    status = 409
    default_message = "this Idempotency-Key was used with other options"


class FormatUnavailable(ApiError):
    code = "format_unavailable"
    status = 409
    default_message = "the job did not produce this format"


class JobUnsuccessful(ApiError):
    """A result asked of a job that failed or was cancelled: its own error is the body."""

    status = 409

    def __init__(self, error: dict[str, object]) -> None:
        super().__init__(str(error.get("message", "the job did not succeed")))
        self.error = error


# Job errors refused at the door with their own status: options no worker could run
# are 422 (as invalid options are), an engine no live worker runs 503, a priority above
# the client's token's highest 403.
_STATUS_BY_CODE = {"input_too_large": 413, "unsupported_format": 415, "transient": 503,
                   "unknown_engine": 422, "unknown_language": 422,
                   "language_unavailable": 422,
                   "invalid_pages": 422, "engine_unavailable": 503,
                   "page_quota_exceeded": 429, "priority_not_allowed": 403,
                   "quota_exceeded": 429, "batch_quota_exceeded": 429}


def http_status(exc: OcrError) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    return _STATUS_BY_CODE.get(exc.code, 400)
