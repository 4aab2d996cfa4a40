"""Every public error code and its class, and the public error of any exception.

Runs wherever a job's failure is told (worker children, the worker parent, clients):
`error_info()` turns whatever a job ended with into its `{"code", "message",
"retryable"}`; billiard's time-limit and worker-lost exceptions get their codes here,
and an exception that is none of the service's tells its type, never its text.
`ERROR_CLASSES` reads the classes of tasks/errors.py once they are all defined.
"""

from __future__ import annotations

from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

from tasks import errors
from tasks.errors import InternalError, OcrError, Timeout, WorkerLost

# Every public error code and its class (docs/tasks.md lists them); a class that only
# narrows its parent's meaning (ReplicaMissing) keeps its parent's code and is not listed.
ERROR_CLASSES: dict[str, type[OcrError]] = {
    value.code: value for value in vars(errors).values()
    if isinstance(value, type) and issubclass(value, OcrError) and "code" in vars(value)}


def error_info(exc: BaseException) -> dict[str, Any]:
    """The public `error` object for any exception a job ended with."""
    if isinstance(exc, OcrError):
        return exc.to_dict()
    if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)):
        return Timeout().to_dict()
    if isinstance(exc, WorkerLostError):
        return WorkerLost().to_dict()
    # Unknown failures: never echo their text, it may hold input content.
    return InternalError(f"unexpected {type(exc).__name__}").to_dict()
