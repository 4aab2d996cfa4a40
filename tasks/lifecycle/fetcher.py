"""The one fetcher: every outbound read of a URL a client named, under that client's rules.

Runs in worker pool children (a job's `url` input, its pages' copies, its `result_url`
write; a batch's source, its manifest lines' HEADs and its target) and wherever a
batch is driven. A `Fetcher` is made for one client (`Fetcher.for_client`: what
`url_policy.readable` lets it read, from the client's own prefixes, which the caller
must name, None only for the operator's doors) and checks every URL against
that list before any request: the first URL, each redirect hop (HEAD and GET alike,
in tasks/lifecycle/_https_objects.py), a listed prefix, a ranged read, a target. A URL
or a hop outside the list is `url_not_allowed` and is never asked. A result write and a
batch's target are held to the client's result prefixes and the read-only prefixes
too (`url_policy.check_target`, the rule the gate applies at the door).

Each request it makes (a HEAD, a read, a ranged read, a listing, a write) has
OCR_URL_DEADLINE seconds in all, its redirects, headers and body together; each wait
within it has OCR_URL_TIMEOUT. One still going then is cut: `url_timeout`, which is
not retried (tasks/lifecycle/_deadline.py).

It is the only module that reads through the S3 adapter (tasks/lifecycle/_s3.py) and
the https reader (tasks/lifecycle/_https_objects.py); the operator's backup files
(tasks/lifecycle/backup_files.py) are the adapter's one other user, a path the
operator names, never a client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tasks.errors import BadRequest, InputNotFound, InputTooLarge, ObjectChanged
from tasks.lifecycle import _https_objects, _s3
from tasks.lifecycle._deadline import Deadline
from tasks.lifecycle._s3 import ObjectInfo
from tasks.lifecycle.url_policy import ObjectUrl, check_target, check_url, readable

if TYPE_CHECKING:
    from tasks.settings import Settings

__all__ = ["Fetcher", "LocatedObject", "ObjectInfo", "S3Target"]


@dataclass(frozen=True)
class LocatedObject:
    """An allowed object URL and what its HEAD said (size, ETag/version)."""

    url: ObjectUrl
    info: ObjectInfo
    # Pinned to the ETag its sender named, with no HEAD: the read checks it (IfMatch),
    # and an object changed since is `input_not_found` there.
    unheaded: bool = False

    @property
    def identity(self) -> str | None:
        """URL plus version or ETag: the object's identity.

        None when the store gave neither (the bytes themselves are then hashed).
        """
        tag = self.info.version or self.info.etag
        if tag is None and self.info.sha256:
            tag = f"sha256:{self.info.sha256}"
        return None if tag is None else f"{self.url.url}\0{tag}"

    def sized(self, data: bytes) -> LocatedObject:
        """With the size of its bytes, read, where no HEAD gave one (`unheaded`)."""
        if self.info.size is not None:
            return self
        return replace(self, info=replace(self.info, size=len(data)))

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


def preload(settings: Settings) -> None:
    """Ready the S3 adapter in a worker's parent when OCR_ALLOWED_URLS names a bucket.

    Its pool's children are forked with boto3 and S3's models loaded (_s3.preload).
    """
    if any(prefix.startswith("s3://") for prefix in settings.allowed_urls):
        _s3.preload()


@dataclass(frozen=True)
class Fetcher:
    """Reads under one client's rules: `allowed` is checked before every request.

    A write (a result, a batch's target) is checked against `results` and `readonly`
    as well.
    """

    allowed: tuple[str, ...]  # what the client reads (url_policy.readable)
    timeout: float  # OCR_URL_TIMEOUT: each wait
    deadline: float  # OCR_URL_DEADLINE: each request in all
    max_bytes: int
    max_mb: float
    results: tuple[str, ...] | None = None  # the client's result prefixes (None: no list)
    readonly: tuple[str, ...] = ()          # where no result is written, for any client

    @classmethod
    def for_client(cls, settings: Settings, prefixes: tuple[str, ...] | list[str] | None,
                   results: tuple[str, ...] | list[str] | None = None) -> Fetcher:
        """The fetcher of a client whose own prefixes are `prefixes`.

        It reads under `url_policy.readable`. None: the operator's doors (or
        `settings` already narrowed to the client's list), OCR_ALLOWED_URLS alone;
        empty: an HTTP API client without prefixes, OCR_SHARED_READ_URLS alone.
        `results`: where the client writes results (`ClientRules.result_urls`, a
        job's `result_prefixes`; empty: nowhere; None: no list of its own, the
        operator's doors). Settings' read-only prefixes hold for every client.
        """
        allowed = readable(settings.allowed_urls, settings.shared_read_urls, prefixes)
        return cls(allowed, settings.url_timeout, settings.url_deadline,
                   settings.max_input_bytes, settings.max_input_mb,
                   None if results is None else tuple(results), settings.readonly_prefixes)

    def _within(self) -> Deadline:
        """One request's deadline, starting now."""
        return Deadline(self.timeout, self.deadline)

    def check(self, url: str, what: str = "`url`", prefix_ok: bool = False) -> ObjectUrl:
        """The parsed, canonical URL when it lies under the list; UrlNotAllowed else."""
        return check_url(url, self.allowed, what, prefix_ok)

    def check_result(self, url: str) -> ObjectUrl:
        """The allowed `result_url` (s3:// only: an object, or a prefix ending /).

        Under the client's result prefixes and no read-only prefix (`check_target`).
        """
        parsed = check_target(self.check(url, "`result_url`", prefix_ok=True),
                              self.results, self.readonly)
        if parsed.scheme != "s3":
            raise BadRequest("`result_url` must be an s3:// URL (results are written to "
                             "a bucket)")
        return parsed

    def locate(self, url: str, version: str | None = None,
               etag: str | None = None) -> LocatedObject:
        """Check the URL and HEAD it; an object over OCR_MAX_INPUT_MB is refused here.

        `version` / `etag` pin the version an earlier job read (a retry: `url_version`,
        `url_etag`): an s3:// version is read as it was, even if the key was
        overwritten since (a versioned bucket); an object whose ETag is no longer the
        pinned one is `input_not_found` (that version is gone), never read as it is now.
        An s3:// object pinned by its ETag alone is not HEADed: its read checks the ETag.
        """
        parsed = self.check(url)
        if parsed.scheme == "s3" and version is None and etag is not None:
            # The ETag its sender saw (a batch's listing, a retried job's read): the GET
            # is pinned to it, so a HEAD would tell nothing more. Its size is counted
            # as it is read.
            return LocatedObject(parsed, ObjectInfo(None, etag), unheaded=True)
        with self._within() as deadline:
            if parsed.scheme == "s3":
                info = _s3.head(parsed.bucket, parsed.key, deadline, version)
            else:
                info = _https_objects.head(parsed, self.allowed, deadline)
        if version is None and etag is not None and info.etag != etag:
            raise InputNotFound(f"the object changed since the retried job read it (its "
                                f"ETag was {etag}, now {info.etag}); that version is gone")
        if info.size is not None and info.size > self.max_bytes:
            raise InputTooLarge(f"the object is {info.size / 2**20:.1f} MB, more than "
                                f"{self.max_mb} MB")
        return LocatedObject(parsed, info)

    def confirm(self, located: LocatedObject) -> None:
        """An unHEADed object that is answered without a read (a cached result) HEADed.

        InputNotFound when its ETag is no longer the pinned one.
        """
        if located.unheaded:
            with self._within() as deadline:
                info = _s3.head(located.url.bucket, located.url.key, deadline)
            if info.etag != located.info.etag:
                raise InputNotFound(f"the object changed since its sender saw it (its "
                                    f"ETag was {located.info.etag}, now {info.etag}); "
                                    "that version is gone")

    def _pieces(self, located: LocatedObject, deadline: Deadline) -> Iterator[bytes]:
        url = self.check(located.url.url)  # a located object of another client: refused
        if url.scheme == "s3":
            return _s3.stream(url.bucket, url.key, located.info, deadline)
        return _https_objects.stream(url, located.info, self.allowed, deadline,
                                     self.max_bytes)

    def read(self, located: LocatedObject) -> bytes:
        """The object's bytes, streamed and counted: over the limit ends the read at once."""
        with self._within() as deadline:
            return self._read(located, deadline)

    def _read(self, located: LocatedObject, deadline: Deadline) -> bytes:
        parts: list[bytes] = []
        count = 0
        pieces = self._pieces(located, deadline)
        try:
            for piece in pieces:
                count += len(piece)
                if count > self.max_bytes:
                    raise InputTooLarge(f"the object is larger than {self.max_mb} MB "
                                        "(counted while reading)")
                parts.append(piece)
        except ObjectChanged:
            if not located.unheaded:
                raise
            raise InputNotFound(f"the object changed since its sender saw it (its ETag "
                                f"was {located.info.etag}); that version is gone") from None
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        return b"".join(parts)

    def range(self, url: str, first: int, last: int) -> bytes | None:
        """Bytes `first` to `last` (included) of an s3:// object; None: no such object."""
        parsed = self.check(url)
        if parsed.scheme != "s3":
            raise BadRequest("only an s3:// object is read by ranges")
        with self._within() as deadline:
            return _s3.get(parsed.bucket, parsed.key, deadline, first, last)

    def listing(self, prefix: str, start_after: str, count: int
                ) -> tuple[ObjectUrl, list[tuple[str, ObjectInfo]], bool]:
        """Up to `count` objects under the s3:// `prefix` after the key `start_after`.

        The prefix parsed, each object as (key, ObjectInfo), and whether there are more.
        """
        parsed = self.check(prefix, "`source`", prefix_ok=True)
        if parsed.scheme != "s3":
            raise BadRequest("only an s3:// prefix is listed")
        with self._within() as deadline:
            found, more = _s3.listing(parsed.bucket, parsed.key, start_after, count,
                                      deadline)
        return parsed, found, more

    def put(self, url: str, data: bytes, content_type: str) -> str:
        """Write the s3:// object `url` (a result); its ETag."""
        parsed = self.check_result(url)
        with self._within() as deadline:
            return _s3.put(parsed.bucket, parsed.key, data, content_type, deadline)

    def target(self, url: str) -> S3Target:
        """A batch's target: an allowed s3:// prefix (ending /).

        Under the client's result prefixes, and neither under nor holding a read-only
        prefix (`check_target`): any name under it is written.
        """
        parsed = check_target(self.check(url, "`result_url`", prefix_ok=True),
                              self.results, self.readonly, whole_prefix=True)
        if parsed.scheme != "s3" or not parsed.url.endswith("/"):
            raise BadRequest("a batch's `result_url` must be an s3:// prefix ending in /")
        return S3Target(parsed.bucket, parsed.key, self.timeout, self.deadline)


@dataclass(frozen=True)
class S3Target:
    """A batch's target prefix, checked when it was made (`Fetcher.target`)."""

    bucket: str
    prefix: str
    timeout: float  # OCR_URL_TIMEOUT: each wait
    deadline: float  # OCR_URL_DEADLINE: each request in all

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _within(self) -> Deadline:
        return Deadline(self.timeout, self.deadline)

    def put(self, name: str, data: bytes, content_type: str) -> str:
        with self._within() as deadline:
            _s3.put(self.bucket, self.prefix + name, data, content_type, deadline)
        return f"{self.url}{name}"

    def get(self, name: str) -> bytes | None:
        with self._within() as deadline:
            return _s3.get(self.bucket, self.prefix + name, deadline)

    def get_range(self, name: str, first: int, last: int) -> bytes | None:
        with self._within() as deadline:
            return _s3.get(self.bucket, self.prefix + name, deadline, first, last)

    def names(self, under: str, after: str, count: int) -> tuple[list[str], bool]:
        start = self.prefix + after if after else ""
        with self._within() as deadline:
            found, more = _s3.listing(self.bucket, self.prefix + under, start, count,
                                      deadline)
        return [key[len(self.prefix):] for key, _ in found], more
