"""Jobs whose input is named by URL (`url`) and results written to a bucket (`result_url`).

Runs in worker pool children (tasks/lifecycle/jobs.py and fanout.py call it). The job
message carries the URL only, never the bytes: the child checks it against
OCR_ALLOWED_URLS, asks the object's size and identity first (`locate`: S3 HEAD, or an
https HEAD), refuses one over OCR_MAX_INPUT_MB there (`input_too_large`, nothing
read), then streams the object in 1 MiB pieces, counting, and stops as soon as the
count passes the limit. S3 goes through the boto3 adapter (tasks/lifecycle/_s3.py),
http(s) through the outbound address policy (tasks/lifecycle/_https_objects.py).

A PDF whose pages fan out is not copied into Redis: the document task leaves one
local copy per host in OCR_URL_SPOOL_DIR, named after the object's identity, and a
page task on another host (or after the copy was pruned) fetches its own copy once,
under a file lock, pinned to the same ETag/version. Copies untouched for
OCR_BLOB_TTL are pruned when a new one is written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import BadRequest, InputNotFound, InputTooLarge
from tasks.lifecycle import _https_objects, _s3
from tasks.lifecycle._s3 import ObjectInfo
from tasks.lifecycle.url_policy import ObjectUrl, check_url, narrow
from tasks.records.formats import FORMATS

__all__ = ["LocatedObject", "ObjectInfo", "for_client", "check_input_url", "check_result_url",
           "locate", "read_object", "spool", "spooled", "drop_spool", "write_result",
           "result_content"]

if TYPE_CHECKING:
    from tasks.settings import Settings



@dataclass(frozen=True)
class LocatedObject:
    """An allowed object URL and what its HEAD said (size, ETag/version)."""

    url: ObjectUrl
    info: ObjectInfo

    @property
    def identity(self) -> str | None:
        """URL plus version or ETag: the object's identity.

        None when the store gave neither (the bytes themselves are then hashed).
        """
        tag = self.info.version or self.info.etag
        if tag is None and self.info.sha256:
            tag = f"sha256:{self.info.sha256}"
        return None if tag is None else f"{self.url.url}\0{tag}"

    def pinned(self, data: bytes) -> LocatedObject:
        """The object pinned by the hash of `data` when its store named no identity for it."""
        if self.identity is not None:
            return self
        return LocatedObject(self.url, replace(self.info,
                                               sha256=hashlib.sha256(data).hexdigest()))

    def to_json(self) -> dict[str, Any]:
        out = {"url": self.url.url, "size": self.info.size, "etag": self.info.etag,
               "version": self.info.version}
        if self.info.sha256:
            out["sha256"] = self.info.sha256
        return out


def for_client(settings: Settings, prefixes: tuple[str, ...] | list[str] | None) -> Settings:
    """The settings a job's URLs are checked by: OCR_ALLOWED_URLS narrowed to its client's.

    `prefixes` are those of the client that sent the job (`JobControl.url_prefixes`;
    None: the global list alone).

    Every check of the job's own URLs goes through these: the first URL, each https
    redirect hop (`_https_objects`), a fanned-out page's fetch and the `result_url` write.
    """
    if prefixes is None:
        return settings
    return replace(settings, allowed_urls=narrow(settings.allowed_urls, prefixes))


def check_input_url(url: str, settings: Settings) -> ObjectUrl:
    """The allowed, parsed input URL; BadRequest or UrlNotAllowed."""
    return check_url(url, settings.allowed_urls, "`url`")


def check_result_url(url: str, settings: Settings) -> ObjectUrl:
    """The allowed, parsed `result_url` (s3:// only: an object, or a prefix ending /)."""
    parsed = check_url(url, settings.allowed_urls, "`result_url`", prefix_ok=True)
    if parsed.scheme != "s3":
        raise BadRequest("`result_url` must be an s3:// URL (results are written to a bucket)")
    return parsed


def locate(url: str, settings: Settings, version: str | None = None,
           etag: str | None = None) -> LocatedObject:
    """Check the URL and HEAD it; an object over OCR_MAX_INPUT_MB is refused here.

    `version` / `etag` pin the version an earlier job read (a retry: `url_version`,
    `url_etag`): an s3:// version is read as it was, even if the key was overwritten
    since (a versioned bucket); an object whose ETag is no longer the pinned one is
    `input_not_found` (that version is gone), never read as it is now.
    """
    parsed = check_input_url(url, settings)
    if parsed.scheme == "s3":
        info = _s3.head(parsed.bucket, parsed.key, settings.url_timeout, version)
    else:
        info = _https_objects.head(parsed, settings.allowed_urls, settings.url_timeout)
    if version is None and etag is not None and info.etag != etag:
        raise InputNotFound(f"the object changed since the retried job read it (its ETag "
                            f"was {etag}, now {info.etag}); that version is gone")
    if info.size is not None and info.size > settings.max_input_bytes:
        raise InputTooLarge(f"the object is {info.size / 2**20:.1f} MB, more than "
                            f"{settings.max_input_mb} MB")
    return LocatedObject(parsed, info)


def _pieces(located: LocatedObject, settings: Settings) -> Iterator[bytes]:
    url, info = located.url, located.info
    if url.scheme == "s3":
        return _s3.stream(url.bucket, url.key, info, settings.url_timeout)
    return _https_objects.stream(url, info, settings.allowed_urls, settings.url_timeout,
                                 settings.max_input_bytes)


def read_object(located: LocatedObject, settings: Settings) -> bytes:
    """The object's bytes, streamed and counted: over the limit ends the read at once."""
    limit = settings.max_input_bytes
    parts: list[bytes] = []
    count = 0
    pieces = _pieces(located, settings)
    try:
        for piece in pieces:
            count += len(piece)
            if count > limit:
                raise InputTooLarge(f"the object is larger than {settings.max_input_mb} MB "
                                    "(counted while reading)")
            parts.append(piece)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    return b"".join(parts)


# --- one local copy per host for fanned-out PDFs -------------------------------------

def spool_path(settings: Settings, identity: str) -> Path:
    return settings.spool_dir / (hashlib.sha256(identity.encode()).hexdigest() + ".pdf")


def spool(settings: Settings, identity: str, data: bytes) -> Path:
    """Leave `data` as this host's copy of the object (atomic: written, then renamed)."""
    path = spool_path(settings, identity)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        _prune(settings)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def spooled(settings: Settings, url: str, info: ObjectInfo) -> bytes:
    """The bytes of this host's copy of the object; fetched once per host when absent.

    A file lock makes the pool children of one host wait for the first one's fetch
    instead of each fetching the object.
    """
    located = LocatedObject(check_input_url(url, settings), info)
    identity = located.identity or located.url.url
    path = spool_path(settings, identity)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.exists():
                data = read_object(located, settings)
                if info.sha256 and hashlib.sha256(data).hexdigest() != info.sha256:
                    # No ETag to pin it by: the bytes the job read are gone.
                    raise InputNotFound("the object changed since the job read it (its "
                                        "server names no version; its content differs)")
                spool(settings, identity, data)
            os.utime(path)
            return path.read_bytes()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def drop_spool(settings: Settings, url: str, info: ObjectInfo) -> None:
    """Remove this host's copy (the document is merged)."""
    located = LocatedObject(check_input_url(url, settings), info)
    path = spool_path(settings, located.identity or located.url.url)
    path.unlink(missing_ok=True)
    Path(f"{path}.lock").unlink(missing_ok=True)


def _prune(settings: Settings) -> None:
    """Remove copies untouched for OCR_BLOB_TTL (their jobs ended on another host)."""
    cutoff = time.time() - settings.blob_ttl
    for entry in settings.spool_dir.iterdir():
        try:
            if entry.stat().st_mtime < cutoff:
                entry.unlink()
        except FileNotFoundError:
            continue  # another child pruned it first


# --- results to a bucket ---------------------------------------------------------------

def result_key(target: ObjectUrl, job_id: str, output: str) -> str:
    """The object a job's result goes to: `result_url` itself, or `<prefix><id><suffix>`."""
    return target.key + job_id + FORMATS[output].suffix if target.is_prefix else target.key


def write_result(result_url: str, job_id: str, output: str, content: bytes,
                 settings: Settings) -> dict[str, Any]:
    """Write the job's result; the record naming the object. ResultWriteFailed else."""
    target = check_result_url(result_url, settings)
    key = result_key(target, job_id, output)
    etag = _s3.put(target.bucket, key, content, FORMATS[output].media_type,
                   settings.url_timeout)
    return {"url": f"s3://{target.bucket}/{key}", "bytes": len(content), "etag": etag}


def result_content(result_json: dict[str, Any], output: str,
                   stored: bytes | None) -> bytes:
    """What is written for `output`.

    The text, the whole JSON result (without storage keys), or the stored document
    (pdf, hocr, alto).
    """
    if output in ("text", "markdown"):
        return str(result_json.get("text", "")).encode()
    if output == "json":
        public = {k: v for k, v in result_json.items() if k != "input_blob"}
        for kind in ("pdf", "hocr", "alto"):
            if isinstance(public.get(kind), dict):
                public[kind] = {k: v for k, v in public[kind].items() if k != "key"}
        return json.dumps(public).encode()
    return stored or b""
