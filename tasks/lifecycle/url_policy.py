"""Which object URLs a job may name: `url` inputs and `result_url` (OCR_ALLOWED_URLS).

Pure code, no I/O. Runs wherever a URL is taken (submit.py and the HTTP API at submit,
worker children when they decode a job, and again at each https redirect). The
address side of an https fetch (no private, loopback or link-local address unless a
prefix names that address itself) is tasks/lifecycle/outbound.py's rule, applied by
tasks/lifecycle/url_inputs.py when it connects.

- `s3://bucket/key`: the bucket is a DNS-style bucket name; the key is taken as it is
  written (S3 keys are literal: no escape is decoded), without control characters,
  its `.` and `..` segments resolved as an http path's (`a/./b` and `a/c/../b` are
  `a/b`) before it is checked or asked, so no store or proxy resolves one later.
  A prefix matches the same bucket and a key under its key, segment by segment.
- What a client reads is decided here, by `readable`. OCR_ALLOWED_URLS is the
  service's outer bound, never a grant. An HTTP API client (its token's
  `--allowed-url`, carried by the job as its control hash's `prefixes`, empty when it
  has none) reads only under its own prefixes and OCR_SHARED_READ_URLS, within that
  bound: one without prefixes or shared ones reads no URL. The operator's doors
  (submit.py, `OcrClient`, a Celery client: no list of their own) read under the
  bound. The worker checks the first URL and each redirect hop against that list.
- A refusal is decided on the URL alone, before any request: a forbidden object is
  answered the same whether it exists or not.
- `http(s)://host/path`: normalised by `outbound.normalise_url` (case, IDNA, default
  port, no credentials, the path's canonical form: unreserved escapes decoded, dot
  segments removed, an encoded `/`, backslash or dot segment refused) and matched against
  the normalised prefix: the same scheme, host and port, and a path under the
  prefix's segment by segment (`outbound.path_under`): `https://h/b/` never admits
  `https://h/bb/x` nor `https://h.evil/`.

Every URL a job, a batch or a fetch names is checked here, by `check_url`: the API's
`url` and `result_url`, a batch's `source` and target, each manifest line and listed
object, and each redirect hop (tasks/lifecycle/fetcher.py).

Where a result may be written is decided here too, by `check_target`, on top of
`check_url`: the gate calls it for a job's `result_url` and a batch's target, the
fetcher for each result write and each batch target it makes.

- A client with result prefixes of its own (an HTTP API client: its token's
  `--allowed-url`, carried by the job as its control hash's `result_prefixes`) writes
  only under them; one with none writes nowhere. A client without such a list (the
  operator's own doors: submit.py, `OcrClient`, a Celery client, which hold Redis
  credentials) writes under OCR_ALLOWED_URLS.
- No client writes under a read-only prefix (OCR_READONLY_URLS, and OCR_GOLDEN_SET
  when it names a URL). A batch's target writes any name under it, so it may neither
  lie under nor hold one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.errors import BadRequest, UrlNotAllowed
from tasks.lifecycle.outbound import (
    Target,
    normalise_url,
    path_under,
    remove_dot_segments,
)

URL_SCHEMES = ("s3", "https", "http")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class ObjectUrl:
    """A parsed object URL: `s3` (bucket, key) or `http(s)` (the normalised target)."""

    url: str                   # normalised: what is checked, fetched and reported
    scheme: str
    bucket: str = ""           # s3 only
    key: str = ""              # s3 only (may be empty or end in / for a result prefix)
    target: Target | None = None  # http(s) only

    @property
    def is_prefix(self) -> bool:
        """A `result_url` that names a folder: the job's result goes under it."""
        return self.url.endswith("/")


def is_url(value: str) -> bool:
    """Whether a command-line input names a URL rather than a local file."""
    return value.split("://", 1)[0].lower() in URL_SCHEMES and "://" in value


def parse_url(url: str, what: str = "`url`", prefix_ok: bool = False) -> ObjectUrl:
    """The parsed, normalised URL, or BadRequest (`prefix_ok`: a key may be empty)."""
    if not isinstance(url, str) or not is_url(url):
        raise BadRequest(f"{what} must be an s3:// or https:// URL")
    scheme = url.split("://", 1)[0].lower()
    if scheme != "s3":
        target = normalise_url(url, ("https", "http"), what)
        return ObjectUrl(target.url, target.scheme, target=target)
    rest = url.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise BadRequest(f"{what} must name a bucket: s3://bucket/key")
    if _KEY_UNSAFE.search(key) or len(key.encode()) > MAX_KEY_BYTES:
        raise BadRequest(f"{what} has a key with control characters or over "
                         f"{MAX_KEY_BYTES} bytes")
    key = remove_dot_segments("/" + key)[1:]  # one spelling, as an http path's
    if not key and not prefix_ok:
        raise BadRequest(f"{what} must name an object: s3://bucket/key")
    if key.endswith("/") and not prefix_ok:
        raise BadRequest(f"{what} names a folder, not an object")
    return ObjectUrl(f"s3://{bucket}/{key}", "s3", bucket, key)


def under(url: ObjectUrl, prefix: str) -> bool:
    """Whether `url` lies under the allow-list entry `prefix` (an invalid one: never)."""
    try:
        allowed = parse_url(prefix, prefix_ok=True)
    except (BadRequest, UrlNotAllowed):
        return False
    if url.scheme != allowed.scheme:
        return False
    if url.scheme == "s3":
        return url.bucket == allowed.bucket and \
            (not allowed.key or path_under(url.key, allowed.key))
    mine, theirs = url.target, allowed.target
    assert mine is not None and theirs is not None
    if (mine.host, mine.port) != (theirs.host, theirs.port):
        return False
    path, _, query = mine.target.partition("?")
    prefix, _, prefix_query = theirs.target.partition("?")
    if prefix_query:  # a prefix with a query names one URL
        return mine.target == theirs.target
    return path_under(path, prefix)


def overlap(first: str, second: str) -> bool:
    """Whether one of two canonical URLs (objects or prefixes) lies under the other."""
    try:
        one, other = parse_url(first, prefix_ok=True), parse_url(second, prefix_ok=True)
    except (BadRequest, UrlNotAllowed):
        return False
    return under(one, other.url) or under(other, one.url)


def check_url(url: str, allowed: Sequence[str], what: str = "`url`",
              prefix_ok: bool = False) -> ObjectUrl:
    """The parsed URL when it lies under one of `allowed`; else UrlNotAllowed.

    Empty `allowed` refuses every URL: nothing is fetched. The answer depends on the
    URL alone, never on whether its object exists.
    """
    parsed = parse_url(url, what, prefix_ok)
    if not allowed:
        raise UrlNotAllowed(f"{what}: this client reads no URL (its own prefixes, "
                            "`tokens create --allowed-url`, and OCR_SHARED_READ_URLS "
                            "name none within OCR_ALLOWED_URLS)")
    if not any(under(parsed, prefix) for prefix in allowed):
        raise UrlNotAllowed(f"{what} is not under a prefix this client reads (its own, "
                            "OCR_SHARED_READ_URLS, within OCR_ALLOWED_URLS)")
    return parsed


def check_target(url: ObjectUrl, writable: Sequence[str] | None, readonly: Sequence[str],
                 what: str = "`result_url`", whole_prefix: bool = False) -> ObjectUrl:
    """`url`, already allowed by `check_url`, when a result may be written there.

    `writable`: the client's own result prefixes (None: it has no such list, the
    operator's doors; empty: it writes nowhere). `readonly`: prefixes no result is
    written under. `whole_prefix`: any name under `url` may be written (a batch's
    target), so it must not hold a read-only prefix either. Else UrlNotAllowed.
    """
    if writable is not None and not any(under(url, prefix) for prefix in writable):
        if not writable:
            raise UrlNotAllowed(f"{what}: this client has no URL prefixes of its own, so "
                                "it writes results nowhere (`tokens create --allowed-url`)")
        raise UrlNotAllowed(f"{what} is not under this client's own prefixes, the only "
                            "places it writes results")
    for prefix in readonly:
        if under(url, prefix) or (whole_prefix and overlap(url.url, prefix)):
            raise UrlNotAllowed(f"{what} reaches a read-only prefix (OCR_READONLY_URLS, "
                                "OCR_GOLDEN_SET): no result is written there")
    return url


def narrow(allowed: Sequence[str], client: Sequence[str] | None) -> tuple[str, ...]:
    """The prefixes of the URLs under both `allowed` and `client` (None: `allowed`).

    Two prefixes of one URL are prefixes of each other, so a URL lies under both
    lists exactly when it lies under the longer of some matching pair: the list of
    those. An empty result allows no URL.
    """
    if client is None:
        return tuple(allowed)
    out: list[str] = []
    for wide in allowed:
        for own in client:
            try:
                wide_url = parse_url(wide, prefix_ok=True)
                own_url = parse_url(own, prefix_ok=True)
            except (BadRequest, UrlNotAllowed):
                continue
            if under(own_url, wide):
                out.append(own)
            elif under(wide_url, own):
                out.append(wide)
    return tuple(dict.fromkeys(out))


def readable(bound: Sequence[str], shared: Sequence[str],
             own: Sequence[str] | None) -> tuple[str, ...]:
    """The prefixes a client reads URLs under: the one rule, at every door.

    `bound`: OCR_ALLOWED_URLS. `own`: the client's own prefixes (an HTTP API client's
    `--allowed-url`, empty when it has none; None: the operator's doors, which read
    under the bound). `shared`: OCR_SHARED_READ_URLS, read by every client with a
    list of its own. Only what lies under `bound` is ever read.
    """
    if own is None:
        return tuple(bound)
    return narrow(bound, (*own, *shared))
