"""Jobs whose input is named by URL (`url`) and results written to a bucket (`result_url`).

Runs in worker pool children (tasks/lifecycle/jobs.py and fanout.py call it). The job
message carries the URL only, never the bytes: the child reads it through the one
fetcher (tasks/lifecycle/fetcher.py) made for the job's client, which checks it
against OCR_ALLOWED_URLS and the client's prefixes, asks the object's size and
identity first (`Fetcher.locate`: S3 HEAD, or an https HEAD), refuses one over
OCR_MAX_INPUT_MB there (`input_too_large`, nothing read), then streams the object in
1 MiB pieces, counting, and stops as soon as the count passes the limit.

A PDF whose pages fan out is not copied into Redis: the document task leaves one
local copy per host in OCR_URL_SPOOL_DIR, named after the object's identity, and a
page task on another host (or after the copy was pruned) fetches its own copy once,
under a file lock, pinned to the same ETag/version. Copies untouched for
OCR_BLOB_TTL are pruned when a new one is written.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import InputNotFound
from tasks.lifecycle.fetcher import Fetcher, LocatedObject, ObjectInfo
from tasks.lifecycle.url_policy import ObjectUrl, readable
from tasks.records.formats import FORMATS

__all__ = ["LocatedObject", "ObjectInfo", "for_client", "check_input_url", "check_result_url",
           "spool", "spooled", "drop_spool", "write_result"]

if TYPE_CHECKING:
    from tasks.settings import Settings


def for_client(settings: Settings, prefixes: tuple[str, ...] | list[str] | None) -> Settings:
    """The settings a job's URLs are checked by: what its client reads (`readable`).

    `prefixes` are those of the client that sent the job (`JobControl.url_prefixes`;
    None: the global list alone).

    Every check of the job's own URLs goes through these: its fetcher
    (`Fetcher.for_client(settings, prefixes)`: the first URL, each redirect hop, a
    fanned-out page's fetch) and the `result_url` write.
    """
    if prefixes is None:
        return settings
    return replace(settings, allowed_urls=readable(settings.allowed_urls,
                                                   settings.shared_read_urls, prefixes))


def check_input_url(url: str, settings: Settings) -> ObjectUrl:
    """The allowed, parsed input URL under `settings`' list; BadRequest or UrlNotAllowed."""
    return Fetcher.for_client(settings, None).check(url)


def check_result_url(url: str, settings: Settings) -> ObjectUrl:
    """The allowed, parsed `result_url` (s3:// only: an object, or a prefix ending /)."""
    return Fetcher.for_client(settings, None).check_result(url)


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

    `settings` are the job's (`for_client`): the fetch is its client's. A file lock
    makes the pool children of one host wait for the first one's fetch instead of
    each fetching the object.
    """
    fetcher = Fetcher.for_client(settings, None)
    located = LocatedObject(fetcher.check(url), info)
    identity = located.identity or located.url.url
    path = spool_path(settings, identity)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.exists():
                data = fetcher.read(located)
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
                 settings: Settings, results: tuple[str, ...] | None) -> dict[str, Any]:
    """Write the job's result; the record naming the object. ResultWriteFailed else.

    `results`: where the job's client writes results (`JobControl.result_prefixes`);
    a target outside them, or under a read-only prefix, is `url_not_allowed`.
    """
    # `settings` are the job's (`for_client`)
    fetcher = Fetcher.for_client(settings, None, results)
    target = fetcher.check_result(result_url)
    url = f"s3://{target.bucket}/{result_key(target, job_id, output)}"
    etag = fetcher.put(url, content, FORMATS[output].media_type)
    return {"url": url, "bytes": len(content), "etag": etag}


def write_previews(result_object: str, previews: dict[int, bytes], settings: Settings,
                   results: tuple[str, ...] | None) -> str:
    """The job's page previews written beside its result object; the folder they are in.

    `result_object` is the result's `s3://bucket/key`; page N's is `<key>.pages/N.webp`.
    ResultWriteFailed when one cannot be written; each is held to `results` as the
    result was (`write_result`).
    """
    fetcher = Fetcher.for_client(settings, None, results)  # `settings`: the job's
    for number, data in sorted(previews.items()):
        fetcher.put(f"{result_object}.pages/{number}.webp", data, "image/webp")
    return f"{result_object}.pages/"


