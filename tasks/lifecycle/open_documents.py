"""The one open-document cache: the PDF a thread renders pages of, kept open between tasks.

Runs in worker pool children and in a thread-pool worker's threads (page and chunk
tasks, tasks/queue/page_tasks.py, through `tasks.lifecycle.fanout`). Each thread has
its own open PyMuPDF document (`open_documents()`: no document is shared between
threads); the bytes it is opened on are shared by the process's threads (the last
few documents'), so a thread pool of 128 holds one copy of a PDF, not 128. A prefork
child has one thread, hence one open document and one copy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tasks.lifecycle import url_inputs
from tasks.lifecycle.url_inputs import ObjectInfo
from tasks.pipeline.pdf import open_pdf

if TYPE_CHECKING:
    from tasks.records.request import JobRequest
    from tasks.settings import Settings


class DocumentInput(Protocol):
    """Where a fanned-out document's input is: a `DocumentMeta` or a `PageDescriptor`."""

    @property
    def request(self) -> JobRequest: ...

    @property
    def input_object(self) -> dict[str, Any] | None: ...


class BytesSource(Protocol):
    """Where a document's bytes come from: the blob store, or this host's copy of a URL."""

    def get(self, key: str) -> bytes: ...


class _SharedBytes:
    """The bytes of the last few documents, shared by the threads of one process.

    Bytes never change and are safe to share.
    """

    KEEP = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes: dict[str, bytes] = {}

    def get(self, key: str, source: BytesSource) -> bytes:
        with self._lock:
            data = self._bytes.get(key)
        if data is None:
            data = source.get(key)
            self.keep(key, data)
        return data

    def keep(self, key: str, data: bytes) -> None:
        with self._lock:
            self._bytes.pop(key, None)
            self._bytes[key] = data
            while len(self._bytes) > self.KEEP:
                del self._bytes[next(iter(self._bytes))]


class OpenDocumentCache:
    """One thread's open PDF, opened on bytes the process's threads share."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._doc: Any = None

    def get(self, key: str, source: BytesSource, settings: Settings,
            password: str | None = None) -> Any:
        """The document of `key` (a blob key), opened on its bytes from `source`."""
        if key != self._key:
            self.close()
            self._doc = open_pdf(_shared.get(key, source), password, settings)
            self._key = key
        return self._doc

    def document(self, meta: DocumentInput, blobs: BytesSource, settings: Settings,
                 password: str | None = None) -> Any:
        """The fanned-out document, from the blob store or from its URL.

        A `url` input is read from this host's copy (fetched once per host if absent),
        decrypted here with `password` when it is encrypted.
        """
        key, source = _bytes_of(meta, blobs, settings)
        return self.get(key, source, settings, password)

    def data(self, meta: DocumentInput, blobs: BytesSource, settings: Settings) -> bytes:
        """The fanned-out document's bytes (an image's), as `document` opens them."""
        key, source = _bytes_of(meta, blobs, settings)
        return _shared.get(key, source)

    def close(self) -> None:
        if self._doc is not None:
            self._doc.close()
        self._key = self._doc = None


@dataclass(frozen=True)
class _SpooledObject:
    """The local copy of a fanned-out `url` input on this host, read as a blob is."""

    settings: Settings
    url: str
    info: ObjectInfo

    def get(self, key: str) -> bytes:
        return url_inputs.spooled(self.settings, self.url, self.info)


def _bytes_of(meta: DocumentInput, blobs: BytesSource,
              settings: Settings) -> tuple[str, BytesSource]:
    """Where a fanned-out document's bytes are: their key and their source."""
    request = meta.request
    if request.url is None or meta.input_object is None:
        return request.blob or "", blobs
    info = object_info(meta)
    return (f"url:{request.url}\0{info.version or info.etag or info.sha256}",
            _SpooledObject(settings, request.url, info))


def object_info(meta: DocumentInput) -> ObjectInfo:
    """The HEAD the document task saw of a fanned-out `url` input."""
    head = meta.input_object or {}
    return ObjectInfo(head.get("size"), head.get("etag"), head.get("version"),
                      head.get("sha256"))


_shared = _SharedBytes()
_per_thread = threading.local()


def share(key: str, data: bytes) -> None:
    """`data`, the bytes stored under blob `key`, for this process's threads to open.

    The task that fans a document out holds its bytes as it stores them: its process's
    page tasks of it need no read of them.
    """
    _shared.keep(key, data)


def open_documents() -> OpenDocumentCache:
    """The calling thread's open-document cache (a prefork child has one thread)."""
    docs: OpenDocumentCache | None = getattr(_per_thread, "docs", None)
    if docs is None:
        docs = _per_thread.docs = OpenDocumentCache()
    return docs
