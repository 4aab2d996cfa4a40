"""State of a PDF fanned out into page tasks, kept in Redis: its meta and its pages.

The splitting task writes the document's meta and its text-layer pages; each page task
(in any worker child, on any machine) records its page. Recording is atomic (MULTI:
HSET then HLEN), so exactly one record sees the document complete — or several, when a
page is delivered twice: who merges is then decided by the job's end claim
(`JobEnder.claim`), never here.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tasks.errors import InputNotFound
from tasks.records.jobs import DocumentMeta
from tasks.records.results import PageRecord
from tasks.state.boundary import transient_methods
from tasks.state.keys import DOC_PREFIX

if TYPE_CHECKING:
    import redis



@transient_methods("the fan-out join (Redis)")
class DocumentJoin:
    """Per-document keys: `<id>:meta` (JSON `DocumentMeta`), `<id>:pages` (hash)."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def _key(self, doc_id: str, part: str) -> str:
        return f"{DOC_PREFIX}{doc_id}:{part}"

    def start(self, meta: DocumentMeta, pages: list[PageRecord]) -> None:
        doc_id = meta.job_id
        pipe = self._redis.pipeline()
        pipe.set(self._key(doc_id, "meta"), meta.to_json(), ex=self._ttl)
        pipe.delete(self._key(doc_id, "pages"))
        for page in pages:
            pipe.hset(self._key(doc_id, "pages"), str(page.number), json.dumps(page.to_json()))
        pipe.expire(self._key(doc_id, "pages"), self._ttl)
        pipe.execute()

    def meta(self, doc_id: str) -> DocumentMeta:
        raw = self._redis.get(self._key(doc_id, "meta"))
        if raw is None:
            raise InputNotFound(f"document {doc_id} is finished or expired")
        return DocumentMeta.from_json(raw)

    def find(self, doc_id: str) -> DocumentMeta | None:
        """The meta of a document still running, or None (not fanned out, or ended)."""
        try:
            return self.meta(doc_id)
        except InputNotFound:
            return None

    def done(self, doc_id: str) -> int:
        return int(self._redis.hlen(self._key(doc_id, "pages")))

    def record(self, doc_id: str, page: PageRecord, total: int) -> bool:
        """Store one page; True when the document has all its pages."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._key(doc_id, "pages"), str(page.number), json.dumps(page.to_json()))
        pipe.hlen(self._key(doc_id, "pages"))
        _, done = pipe.execute()
        return int(done) >= total

    def pages(self, doc_id: str) -> list[PageRecord]:
        raw = self._redis.hgetall(self._key(doc_id, "pages"))
        return [PageRecord.from_json(json.loads(value)) for value in raw.values()]

    def cleanup(self, doc_id: str) -> None:
        """Drop meta and pages (the job's end claim stays until its TTL)."""
        self._redis.delete(self._key(doc_id, "meta"), self._key(doc_id, "pages"))
