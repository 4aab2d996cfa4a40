"""The S3 adapter: the only module that imports boto3/botocore (imported lazily).

Runs in worker pool children: reading `s3://` inputs (HEAD, then a streamed GET of the
whole object or of a byte range, pinned to the ETag the HEAD saw) and writing results to
`result_url`; and in the operator's `ocr_admin.py backup` / `restore`
(tasks/lifecycle/backup_files.py), which write and read a backup file. The endpoint,
credentials and region come from the standard AWS environment, read by botocore itself:
AWS_ENDPOINT_URL (MinIO, R2, moto's S3 emulator...), AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or AWS_PROFILE, AWS_DEFAULT_REGION (AWS_REGION
is taken when that is unset, as the other AWS SDKs do), AWS_CA_BUNDLE. Nothing of them
is ever put in a message, a result or a log: errors carry the store's error code and
HTTP status only.

Errors become the service's own (tasks/errors.py): a missing bucket or key is
`input_not_found`, a refusal (401/403, no credentials) `input_denied`, an unreachable
or overloaded store (connection refused, timeouts, 5xx, SlowDown) `transient`, which
the document task retries with backoff. Reads use one attempt per call (the task
owns the retries); writes let botocore retry three times (re-running OCR to retry a
write would waste the work), then end `result_write_failed`.

Each call runs within a `Deadline` (tasks/lifecycle/_deadline.py): none starts once it
is up, and a body being read is cut when it is (`url_timeout`). botocore gives no hold
of a request's socket before its answer: each wait for an answer is bounded by
OCR_URL_TIMEOUT (connect and read timeouts), and the store is the operator's, never a
client's.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tasks.errors import (
    InputDenied,
    InputNotFound,
    ObjectChanged,
    OcrError,
    ResultWriteFailed,
    TransientError,
)
from tasks.lifecycle._deadline import Deadline

log = logging.getLogger(__name__)
CHUNK = 1 << 20
POOL_CONNECTIONS = 32  # one client's connections kept open to the store
_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchVersion"}
_DENIED = {"401", "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
           "AllAccessDisabled", "AccountProblem", "InvalidToken", "ExpiredToken"}
_CHANGED = {"412", "PreconditionFailed"}  # the object changed after the HEAD: read again


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD says about an object: its size and its identity (ETag, version)."""

    size: int | None
    etag: str | None
    version: str | None = None
    # The bytes' sha256, for an object its store names no identity for (an https server
    # without an ETag or Last-Modified): taken by the job's first read, checked by every
    # later one (the page tasks on other hosts).
    sha256: str | None = None


_creating = threading.Lock()


def _client(timeout: float, writes: bool) -> Any:
    """One S3 client per process and use (its connection pool is reused).

    Made once, also when several threads ask at once (a manifest's part readers): the
    first one made loads botocore's service model (a tenth of a second of CPU or more),
    which the others share through the process's one session.
    """
    with _creating:
        return _made(timeout, writes)


@functools.lru_cache(maxsize=1)
def _session() -> Any:
    """The process's one boto3 session: its clients share the service model it loaded."""
    import boto3

    return boto3.session.Session()


def preload() -> None:
    """Import boto3 and read every model an S3 client needs into the process's session.

    A worker's parent calls it before its pool forks (tasks/queue/signals.py): each
    child, one that replaces a recycled child too, then makes its first client in a
    tenth of the time (about 60 ms here, not 550). The client made here is dropped
    unused: its placeholder region, endpoint and keys keep it from looking anything
    up, and it never connects.
    """
    from botocore.exceptions import BotoCoreError

    try:
        _session().client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                          aws_access_key_id="preload", aws_secret_access_key="preload")
    except BotoCoreError as exc:  # AWS_PROFILE naming no profile, say: a job reports it
        log.warning("the S3 client was not prepared (%s); each child makes its own",
                    type(exc).__name__)


@functools.lru_cache(maxsize=4)
def _made(timeout: float, writes: bool) -> Any:
    from botocore.config import Config

    # POOL_CONNECTIONS: a manifest's parts are read by 16 threads at once through one
    # client; botocore's 10 would drop and reopen a connection per read past them.
    config = Config(connect_timeout=timeout, read_timeout=timeout,
                    retries={"mode": "standard", "max_attempts": 3 if writes else 1},
                    max_pool_connections=POOL_CONNECTIONS, user_agent_extra="ocr-service")
    region = None if os.environ.get("AWS_DEFAULT_REGION") else os.environ.get("AWS_REGION")
    return _session().client("s3", region_name=region or None, config=config)


def reset_clients() -> None:
    """Forget the cached clients and their session (a pool child after fork, tests)."""
    _made.cache_clear()
    _session.cache_clear()


def head(bucket: str, key: str, deadline: Deadline,
         version: str | None = None) -> ObjectInfo:
    """The object's (or its `version`'s) size, ETag and version id; the service's errors."""
    args = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
    deadline.check()
    try:
        answer = _client(deadline.per_read, False).head_object(**args)
    except _caught() as exc:
        raise _mapped(exc, "read") from None
    return ObjectInfo(int(answer.get("ContentLength", 0)), answer.get("ETag"),
                      answer.get("VersionId"))


def stream(bucket: str, key: str, info: ObjectInfo, deadline: Deadline,
           first: int | None = None, last: int | None = None) -> Iterator[bytes]:
    """The object's bytes in pieces of up to 1 MiB, from the version the HEAD saw.

    `first`/`last` (inclusive) read a byte range only. A version id pins the read to
    that version; otherwise `IfMatch` the ETag, so an object replaced after the HEAD
    is read again from its new HEAD (`transient`) rather than mixed.
    """
    args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if info.version:
        args["VersionId"] = info.version
    elif info.etag:
        args["IfMatch"] = info.etag
    if first is not None:
        args["Range"] = f"bytes={first}-{'' if last is None else last}"
    deadline.check()
    try:
        body = _client(deadline.per_read, False).get_object(**args)["Body"]
    except _caught() as exc:
        raise _read_error(exc, deadline) from None
    deadline.watch(functools.partial(_cut, body))
    try:
        while True:
            try:
                piece = body.read(CHUNK)
            except _caught() as exc:
                raise _read_error(exc, deadline) from None
            if not piece:
                deadline.check()  # an end the deadline's cut made is no end
                return
            yield piece
    finally:
        body.close()


def _cut(body: Any) -> None:
    """End the waits on a body being read; nothing once it is closed.

    urllib3's own shutdown of the response's socket (`HTTPResponse.shutdown`), made
    for a read blocked in another thread; botocore's body holds it as `_raw_stream`.
    """
    try:
        body._raw_stream.shutdown()
    except (ValueError, RuntimeError, OSError):  # released or closed by its reader first
        return


def _read_error(exc: Exception, deadline: Deadline) -> OcrError:
    """A failed read as the service's error: `url_timeout` when the deadline cut it."""
    return deadline.error() if deadline.expired else _mapped(exc, "read")


def put(bucket: str, key: str, data: bytes, content_type: str, deadline: Deadline) -> str:
    """Write one object; its ETag. Any failure is `result_write_failed`."""
    deadline.check()
    try:
        answer = _client(deadline.per_read, True).put_object(
            Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    except _caught() as exc:
        mapped = _mapped(exc, "write")
        raise ResultWriteFailed(f"the result could not be written to s3://{bucket}/{key} "
                                f"({mapped.message})") from None
    return str(answer.get("ETag", ""))


def listing(bucket: str, prefix: str, start_after: str, count: int,
            deadline: Deadline) -> tuple[list[tuple[str, ObjectInfo]], bool]:
    """Up to `count` objects under `prefix` after the key `start_after`, in key order.

    Each as (key, ObjectInfo); True when the listing has more. One ListObjectsV2 call.
    """
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": count}
    if start_after:
        args["StartAfter"] = start_after
    deadline.check()
    try:
        answer = _client(deadline.per_read, False).list_objects_v2(**args)
    except _caught() as exc:
        raise _mapped(exc, "read") from None
    found = [(str(o["Key"]), ObjectInfo(int(o.get("Size", 0)), o.get("ETag")))
             for o in answer.get("Contents", [])]
    return found, bool(answer.get("IsTruncated"))


def get(bucket: str, key: str, deadline: Deadline, first: int | None = None,
        last: int | None = None) -> bytes | None:
    """A small object's bytes (or a byte range of it); None when it does not exist."""
    args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if first is not None:
        args["Range"] = f"bytes={first}-{'' if last is None else last}"
    deadline.check()
    try:
        body = _client(deadline.per_read, False).get_object(**args)["Body"]
    except _caught() as exc:
        mapped = _read_error(exc, deadline)
        if isinstance(mapped, InputNotFound):
            return None
        if _status(exc) == 416:  # a range past the end: nothing more
            return b""
        raise mapped from None
    deadline.watch(functools.partial(_cut, body))
    try:
        data = bytes(body.read())
    except _caught() as exc:
        raise _read_error(exc, deadline) from None
    finally:
        body.close()
    deadline.check()  # an end the deadline's cut made is no end
    return data


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def upload(bucket: str, key: str, path: str, timeout: float) -> None:
    """Write one object from a local file, in parts when it is large (a backup)."""
    try:
        _client(timeout, True).upload_file(path, bucket, key)
    except _caught() as exc:
        raise _mapped(exc, "write") from None


def _caught() -> tuple[type[Exception], ...]:
    """What a call into botocore may raise: its own errors and socket errors."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError, OSError)


def _mapped(exc: Exception, doing: str) -> OcrError:
    """A botocore/urllib3 exception as the service's error.

    Never its text: it may hold a presigned URL or the endpoint's address.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        HTTPClientError,
        IncompleteReadError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        what = f"{code or 'error'}, HTTP {status}"
        if code in _NOT_FOUND or status == 404:
            return InputNotFound(f"the object does not exist ({what})")
        if code in _DENIED or status in (401, 403):
            return InputDenied(f"the store denied the {doing} ({what})")
        if code in _CHANGED or status == 412:
            return ObjectChanged()
        if status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout"):
            return TransientError(f"the object store is unavailable ({what})")
        return InputDenied(f"the store refused the {doing} ({what})")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return InputDenied("no usable AWS credentials in the worker's environment")
    if isinstance(exc, (ConnectionError, HTTPClientError, ReadTimeoutError,
                        ResponseStreamingError, IncompleteReadError)):  # a body cut short
        return TransientError(f"the object store did not answer ({type(exc).__name__})")
    if isinstance(exc, BotoCoreError):
        return InputDenied(f"the S3 client refused the {doing} ({type(exc).__name__})")
    return TransientError(f"the object store did not answer ({type(exc).__name__})")
