"""What a batch reads and where it writes: sources listed lazily, targets, manifest lines.

Runs where a batch's driver runs (a worker child taking `ocr.batch_step`; submit.py for
the local-folder form) and in the HTTP API (checking a batch before it is accepted).

A source is read a page at a time from a cursor (a string kept in the batch's record):
an `s3://bucket/prefix/` is listed in key order (ListObjectsV2 `StartAfter`: the cursor
is the last key handled), a manifest (JSONL: one `{"url": ..., "options": {...}}` a
line, or a plain URL a line) is read by byte ranges (the cursor is the offset of the
next line), a local folder (submit.py only) in sorted path order. A target is an
`s3://` prefix or a local folder: a document's output is `<target><name><suffix>`, its
manifest line one object of its own, `<target>.manifest/<sha256 of name>.json`, so
documents ending at once never write the same object (and a document's line is found
by its name); each step also writes the lines it settled as one part
(`<target>.manifest-parts/`), and `manifest.jsonl` is composed from the parts when the
batch ends (submit.py's local form composes it from the lines themselves).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tasks.errors import BadRequest, LineTooLong
from tasks.lifecycle import _s3
from tasks.lifecycle.url_inputs import check_input_url, locate, read_object
from tasks.lifecycle.url_policy import check_url
from tasks.records.formats import FORMATS

if TYPE_CHECKING:
    from tasks.settings import Settings

MANIFEST_DIR = ".manifest/"
PARTS_DIR = ".manifest-parts/"  # the lines each step settled, one object a step
SOURCE_COPY_DIR = ".batch-source/"  # an https manifest, copied once
MANIFEST_FILE = "manifest.jsonl"
MANIFEST_CHUNK = 256 * 1024  # bytes of a manifest read at a time
READERS = 16  # manifest objects read at once (composing manifest.jsonl)
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

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "name": self.name, "version": self.version,
                "options": self.options}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Document:
        return cls(str(raw["url"]), str(raw["name"]), dict(raw.get("version") or {}),
                   dict(raw.get("options") or {}))


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


def options_digest(options: dict[str, Any]) -> str:
    """The digest of a document's job options (a manifest line says which it was read with)."""
    given = {k: v for k, v in options.items() if v is not None}
    return hashlib.sha256(json.dumps(given, sort_keys=True).encode()).hexdigest()[:16]


def manifest_name(name: str) -> str:
    """Where a document's manifest line is, under the target."""
    return f"{MANIFEST_DIR}{hashlib.sha256(name.encode()).hexdigest()[:32]}.json"


def output_name(name: str, output: str) -> str:
    """Where a document's output is, under the target: its name and the format's suffix."""
    return name + FORMATS[output].suffix


def same_read(line: dict[str, Any] | None, document: Document, digest: str) -> bool:
    """Whether a manifest line shows this document's version read with these options."""
    return (line is not None and line.get("source_version") == document.version
            and line.get("options_digest") == digest)


def read_line(target: Target, name: str) -> dict[str, Any] | None:
    """The manifest line of the document named `name`, None when there is none."""
    raw = target.get(manifest_name(name))
    if raw is None:
        return None
    try:
        line = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # unreadable: read the document again
    return line if isinstance(line, dict) else None


def manifest_lines(target: Target, alive: Callable[[], object] | None = None
                   ) -> Iterator[dict[str, Any]]:
    """Every document's manifest line under the target, in the order of their objects.

    `alive` is called before each page of names (the step keeps its lock).
    """
    after = ""
    while True:
        if alive is not None:
            alive()
        names, more = target.names(MANIFEST_DIR, after, 1000)
        with ThreadPoolExecutor(READERS) as pool:  # one GET each: many at once
            for line in pool.map(lambda name: read_line_object(target, name), names):
                if line is not None:
                    yield line
        if not more or not names:
            return
        after = names[-1]


def read_line_object(target: Target, name: str) -> dict[str, Any] | None:
    raw = target.get(name)
    try:
        line = json.loads(raw) if raw is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return line if isinstance(line, dict) else None


def part_name() -> str:
    """A new part's name: time-ordered, unique across steps and hosts."""
    return f"{PARTS_DIR}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"


def write_part(target: Target, lines: list[dict[str, Any]]) -> None:
    """The lines one step settled, as one object (composing reads these, not each line)."""
    if lines:
        body = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
        target.put(part_name(), body.encode(), "application/jsonl")


def compose_from_parts(target: Target, alive: Callable[[], object] | None = None) -> int:
    """Write `manifest.jsonl` from the steps' parts: each document's latest line."""
    latest: dict[str, dict[str, Any]] = {}
    after = ""
    while True:
        if alive is not None:
            alive()
        names, more = target.names(PARTS_DIR, after, 1000)
        with ThreadPoolExecutor(READERS) as pool:
            bodies = list(pool.map(target.get, names))
        for body in bodies:  # in the parts' order: a later line of a name wins
            for raw in (body or b"").decode("utf-8", "replace").splitlines():
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                if isinstance(line, dict):
                    latest[str(line.get("name", ""))] = line
        if not more or not names:
            break
        after = names[-1]
    composed = "".join(json.dumps(latest[name], sort_keys=True) + "\n"
                       for name in sorted(latest))
    target.put(MANIFEST_FILE, composed.encode(), "application/jsonl")
    return len(latest)


def compose_manifest(target: Target, alive: Callable[[], object] | None = None) -> int:
    """Write `manifest.jsonl` from the documents' lines (sorted by name); how many."""
    lines = sorted(manifest_lines(target, alive), key=lambda line: str(line.get("name", "")))
    body = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    target.put(MANIFEST_FILE, body.encode(), "application/jsonl")
    return len(lines)


# --- S3 -------------------------------------------------------------------------------

@dataclass(frozen=True)
class S3Target:
    bucket: str
    prefix: str
    timeout: float

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def put(self, name: str, data: bytes, content_type: str) -> str:
        _s3.put(self.bucket, self.prefix + name, data, content_type, self.timeout)
        return f"{self.url}{name}"

    def get(self, name: str) -> bytes | None:
        return _s3.get(self.bucket, self.prefix + name, self.timeout)

    def get_range(self, name: str, first: int, last: int) -> bytes | None:
        return _s3.get(self.bucket, self.prefix + name, self.timeout, first, last)

    def names(self, under: str, after: str, count: int) -> tuple[list[str], bool]:
        start = self.prefix + after if after else ""
        found, more = _s3.listing(self.bucket, self.prefix + under, start, count,
                                  self.timeout)
        return [key[len(self.prefix):] for key, _ in found], more


@dataclass(frozen=True)
class S3Prefix:
    """Every object under an `s3://bucket/prefix/`, but those under the batch's target."""

    bucket: str
    prefix: str
    timeout: float
    excluded: str = ""  # the target's prefix, when it is in the same bucket

    def page(self, cursor: str, count: int) -> tuple[list[tuple[Document, str]], bool]:
        found, more = _s3.listing(self.bucket, self.prefix, cursor, count, self.timeout)
        out = []
        for key, info in found:
            if key.endswith("/") or (self.excluded and key.startswith(self.excluded)):
                continue
            version = {"etag": info.etag, "size": info.size}
            out.append((Document(f"s3://{self.bucket}/{key}", key[len(self.prefix):],
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
    target: Target | None = None  # where an https manifest is copied
    batch_id: str = ""

    @property
    def _chunk(self) -> int:
        return max(MANIFEST_CHUNK, self.settings.batch_max_line_bytes + 2)

    def _range(self, first: int, size: int) -> bytes:
        parsed = check_input_url(self.url, self.settings)
        if parsed.scheme == "s3":
            chunk = _s3.get(parsed.bucket, parsed.key, self.settings.url_timeout, first,
                            first + size - 1)
        elif self.target is None:
            chunk = read_object(locate(self.url, self.settings), self.settings)[
                first:first + size]
        else:
            name = f"{SOURCE_COPY_DIR}{self.batch_id or 'manifest'}.jsonl"
            chunk = self.target.get_range(name, first, first + size - 1)
            if chunk is None:  # the first read: the whole manifest, once, copied
                whole = read_object(locate(self.url, self.settings), self.settings)
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
                out.append((Document("", name, refused=LineTooLong.code), str(end)))
                return out, self._at_end(end)
            if not complete:
                break  # cut by the range: read again from its start next time
            position += len(raw)
            document = manifest_document(raw)
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


def manifest_document(raw: bytes) -> Document | None:
    """A manifest line's document; None for a blank line."""
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return None
    options: dict[str, Any] = {}
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except json.JSONDecodeError:
            return Document(text[:200], text[:200])  # its job fails: bad_request
        url = str(entry.get("url", ""))
        given = entry.get("options") or {}
        options = {k: v for k, v in given.items() if k in DOCUMENT_OPTIONS} \
            if isinstance(given, dict) else {}
    else:
        url = text
    name = url.split("://", 1)[-1]
    return Document(url, name, {}, options)


def source_of(source: str, settings: Settings, target: S3Target | None,
              batch_id: str = "") -> Source:
    """The source a batch's `source` names: a prefix (ending /) or a manifest."""
    if source.startswith("s3://") and source.endswith("/"):
        parsed = check_url(source, settings.allowed_urls, "`source`", prefix_ok=True)
        excluded = target.prefix if target is not None and \
            target.bucket == parsed.bucket else ""
        return S3Prefix(parsed.bucket, parsed.key, settings.url_timeout, excluded)
    check_input_url(source, settings)
    return ManifestSource(source, settings, target, batch_id)


def target_of(url: str, settings: Settings) -> S3Target:
    """The batch's `result_url`: an allowed s3:// prefix (ending /)."""
    parsed = check_url(url, settings.allowed_urls, "`result_url`", prefix_ok=True)
    if parsed.scheme != "s3" or not parsed.url.endswith("/"):
        raise BadRequest("a batch's `result_url` must be an s3:// prefix ending in /")
    return S3Target(parsed.bucket, parsed.key, settings.url_timeout)
