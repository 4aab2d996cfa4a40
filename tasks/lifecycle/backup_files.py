"""Where a backup file is kept: a local path, or an `s3://bucket/key` object.

Runs in the operator's process (`ocr_admin.py backup` and `restore`). S3 goes through
the boto3 adapter (tasks/lifecycle/_s3.py), with the standard AWS environment
(AWS_ENDPOINT_URL, keys or a role, region). A local file is written beside its final
name and renamed into place once whole and synced, so a path never holds half a backup.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from tasks.errors import BadRequest
from tasks.lifecycle import _s3
from tasks.lifecycle._deadline import Deadline

# Seconds each call to the object store may take (a multi-part upload: each part). A
# backup has no total deadline: the operator names its store, and a large one takes long.
TIMEOUT = 120.0


def is_object(where: str) -> bool:
    """Whether `where` names an object in S3 (`s3://bucket/key`) rather than a file."""
    return where.startswith("s3://")


def _bucket_key(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    key = parts.path.lstrip("/")
    if not parts.netloc or not key or key.endswith("/"):
        raise BadRequest(f"{url!r}: an s3:// backup is s3://bucket/key (a key, not a prefix)")
    return parts.netloc, key


def partial_path(target: str) -> Path:
    """Where a local backup is written before it is renamed to `target`."""
    return Path(f"{target}.part")


def keep(written: Path, target: str) -> None:
    """Put the whole file `written` where `target` says (rename, or upload and remove)."""
    if is_object(target):
        bucket, key = _bucket_key(target)
        _s3.upload(bucket, key, str(written), TIMEOUT)
        return
    with open(written, "rb") as done:
        os.fsync(done.fileno())
    os.replace(written, target)


def fetch(source: str, into: Path) -> Path:
    """A local path holding the backup `source` (an object is downloaded into `into`)."""
    if not is_object(source):
        path = Path(source)
        if not path.is_file():
            raise BadRequest(f"no backup file at {source}")
        return path
    bucket, key = _bucket_key(source)
    with Deadline(TIMEOUT, None) as waits:
        info = _s3.head(bucket, key, waits)
        with open(into, "wb") as out:
            for piece in _s3.stream(bucket, key, info, waits):
                out.write(piece)
    return into
