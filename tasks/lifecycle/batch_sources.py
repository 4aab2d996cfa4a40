"""What a batch reads and where it writes: sources listed lazily, targets, manifest lines.

Runs where a batch's driver runs (a worker child taking `ocr.batch_step`; submit.py for
the local-folder form) and in the HTTP API (checking a batch before it is accepted).

A source is read a page at a time from a cursor (a string kept in the batch's record):
an `s3://bucket/prefix/` is listed in key order (ListObjectsV2 `StartAfter`: the cursor
is the last key handled), a manifest (JSONL: one `{"url": ..., "options": {...}}` a
line, or a plain URL a line) is read by byte ranges (the cursor is the offset of the
next line), a local folder (submit.py only) in sorted path order. A target is an
`s3://` prefix or a local folder: a document's output is `<target><name><suffix>`; the
manifest's lines are written and read under it by tasks/lifecycle/batch_manifest.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tasks.errors import BadRequest, LineTooLong, NoUrl, UrlNotAllowed
from tasks.lifecycle.fetcher import Fetcher, S3Target
from tasks.lifecycle.url_policy import parse_url
from tasks.records.formats import FORMATS

if TYPE_CHECKING:
    from tasks.settings import Settings

SOURCE_COPY_DIR = ".batch-source/"  # an https manifest, copied once
MANIFEST_CHUNK = 256 * 1024  # bytes of a manifest read at a time
# The options a batch (or a manifest line) may give its documents' jobs.
DOCUMENT_OPTIONS = ("output", "lang", "engine", "mode", "pages")


@dataclass(frozen=True)
class Document:
    """One document of a batch: what its job reads and its name under the target."""

    url: str
    name: str
    version: dict[str, Any] = field(default_factory=dict)  # etag / version_id / size, mtime
    options: dict[str, Any] = field(default_factory=dict)  # its manifest line's own
    refused: str = ""  # an error code: its manifest line could not be read (too long)
    at: str = ""  # the byte offset of its manifest line ("" for a listed object)

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "name": self.name, "version": self.version,
                "options": self.options, **({"at": self.at} if self.at else {})}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Document:
        return cls(str(raw["url"]), str(raw["name"]), dict(raw.get("version") or {}),
                   dict(raw.get("options") or {}), at=str(raw.get("at") or ""))


class Source(Protocol):
    def page(self, cursor: str, count: int) -> tuple[list[tuple[Document, str]], bool]:
        """Up to `count` documents after `cursor`, each with the cursor past it, and done."""


class Target(Protocol):
    def put(self, name: str, data: bytes, content_type: str) -> str:
        """Write `data` as `<target><name>`; the object's URL (or path)."""

    def get(self, name: str) -> bytes | None:
        """`<target><name>`'s bytes, None when it does not exist."""

    def get_range(self, name: str, first: int, last: int) -> bytes | None:
        """Bytes `first` to `last` (included) of `<target><name>`; None: no such object."""

    def names(self, under: str, after: str, count: int) -> tuple[list[str], bool]:
        """Names under `under` after `after`, in order, and whether there are more."""


# Job options that change how, not what, a document is read: left out of the digest,
# so that a run with them skips what a run without them read.
NOT_DIGESTED = ("no_cache",)


def options_digest(options: dict[str, Any]) -> str:
    """The digest of a document's job options (a manifest line says which it was read with)."""
    given = {k: v for k, v in options.items() if v is not None and k not in NOT_DIGESTED}
    return hashlib.sha256(json.dumps(given, sort_keys=True).encode()).hexdigest()[:16]


def output_name(name: str, output: str) -> str:
    """Where a document's output is, under the target: its name and the format's suffix."""
    return name + FORMATS[output].suffix


def same_read(line: dict[str, Any] | None, document: Document, digest: str) -> bool:
    """Whether a manifest line shows this document's version read with these options."""
    return (line is not None and line.get("source_version") == document.version
            and line.get("options_digest") == digest)


# --- S3 -------------------------------------------------------------------------------

@dataclass(frozen=True)
class S3Prefix:
    """Every object under an `s3://bucket/prefix/`, but those under the batch's target."""

    url: str
    fetcher: Fetcher
    excluded: str = ""  # the target's prefix, when it is in the same bucket

    def page(self, cursor: str, count: int) -> tuple[list[tuple[Document, str]], bool]:
        parsed, found, more = self.fetcher.listing(self.url, cursor, count)
        out = []
        for key, info in found:
            if key.endswith("/") or (self.excluded and key.startswith(self.excluded)):
                continue
            version = {"etag": info.etag, "size": info.size}
            out.append((Document(f"s3://{parsed.bucket}/{key}", key[len(parsed.key):],
                                 version), key))
        if found and (not out or out[-1][1] != found[-1][0]):
            # the page ended on skipped keys: the cursor still passes them
            out.append((Document("", ""), found[-1][0]))
        return out, not more


@dataclass(frozen=True)
class ManifestSource:
    """A JSONL manifest, read by byte ranges from a cursor (the next line's offset).

    An s3:// manifest is read where it is; an https:// one is read once, as the
    batch's first step asks for it, and copied under the target
    (`.batch-source/<batch id>.jsonl`): every later page reads ranges of that copy.
    A line longer than OCR_BATCH_MAX_LINE_BYTES is a refused document
    (`line_too_long`): the read skips to its end, a range at a time.
    """

    url: str
    settings: Settings
    fetcher: Fetcher  # the batch's client's: every read of the manifest goes through it
    target: Target | None = None  # where an https manifest is copied
    batch_id: str = ""

    @property
    def _chunk(self) -> int:
        return max(MANIFEST_CHUNK, self.settings.batch_max_line_bytes + 2)

    def _range(self, first: int, size: int) -> bytes:
        fetcher = self.fetcher
        if fetcher.check(self.url, "`source`").scheme == "s3":
            chunk = fetcher.range(self.url, first, first + size - 1)
        elif self.target is None:
            chunk = fetcher.read(fetcher.locate(self.url))[first:first + size]
        else:
            name = f"{SOURCE_COPY_DIR}{self.batch_id or 'manifest'}.jsonl"
            chunk = self.target.get_range(name, first, first + size - 1)
            if chunk is None:  # the first read: the whole manifest, once, copied
                whole = fetcher.read(fetcher.locate(self.url))
                self.target.put(name, whole, "application/jsonl")
                chunk = whole[first:first + size]
        if chunk is None:
            raise BadRequest("the batch's manifest does not exist")
        return chunk

    def page(self, cursor: str, count: int) -> tuple[list[tuple[Document, str]], bool]:
        offset = int(cursor or 0)
        size = self._chunk
        chunk = self._range(offset, size)
        last = len(chunk) < size
        longest = self.settings.batch_max_line_bytes
        out: list[tuple[Document, str]] = []
        position = offset
        for raw in chunk.splitlines(keepends=True):
            complete = raw.endswith(b"\n") or last
            if len(raw.rstrip(b"\r\n")) > longest:
                end = position + len(raw) if complete else self._line_end(position + len(raw))
                name = f"manifest line at byte {position}"
                out.append((Document("", name, refused=LineTooLong.code, at=str(position)),
                            str(end)))
                return out, self._at_end(end)
            if not complete:
                break  # cut by the range: read again from its start next time
            document = manifest_document(raw, position)
            position += len(raw)
            if document is None:
                continue  # a blank line: no document, and not counted
            out.append((document, str(position)))
            if len(out) >= count:
                return out, last and position >= offset + len(chunk)
        if position > offset and (not out or out[-1][1] != str(position)):
            out.append((Document("", ""), str(position)))  # the cursor passes the blanks
        return out, last

    def _line_end(self, start: int) -> int:
        """The offset past the end of the line that goes on at `start` (or the end)."""
        size = self._chunk * 4
        while True:
            chunk = self._range(start, size)
            newline = chunk.find(b"\n")
            if newline >= 0:
                return start + newline + 1
            if len(chunk) < size:
                return start + len(chunk)
            start += len(chunk)

    def _at_end(self, offset: int) -> bool:
        return not self._range(offset, 1)


def manifest_document(raw: bytes, at: int = 0) -> Document | None:
    """The document of the manifest line at byte `at`; None for a blank line.

    An object naming no `url` (`{}`) is a refused document (`no_url`).
    """
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return None
    options: dict[str, Any] = {}
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except json.JSONDecodeError:
            return Document(text[:200], text[:200], at=str(at))  # its job: bad_request
        url = str(entry.get("url") or "")
        if not url:
            return Document("", f"manifest line at byte {at}", refused=NoUrl.code,
                            at=str(at))
        given = entry.get("options") or {}
        options = {k: v for k, v in given.items() if k in DOCUMENT_OPTIONS} \
            if isinstance(given, dict) else {}
    else:
        url = text
    try:  # one spelling per URL before a line is matched with another (`first_seen`)
        url = parse_url(url).url
    except (BadRequest, UrlNotAllowed):
        pass  # the gate refuses its job with its code, as it would the line as written
    name = url.split("://", 1)[-1]
    return Document(url, name, {}, options, at=str(at))


def source_of(source: str, settings: Settings, fetcher: Fetcher, target: S3Target | None,
              batch_id: str = "") -> Source:
    """The source a batch's `source` names: a prefix (ending /) or a manifest.

    Read through `fetcher`, the batch's client's: the source, and every hop of it.
    """
    if source.startswith("s3://") and source.endswith("/"):
        parsed = fetcher.check(source, "`source`", prefix_ok=True)
        excluded = target.prefix if target is not None and \
            target.bucket == parsed.bucket else ""
        return S3Prefix(parsed.url, fetcher, excluded)
    fetcher.check(source, "`source`")
    return ManifestSource(source, settings, fetcher, target, batch_id)
