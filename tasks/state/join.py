"""State of a PDF fanned out into page tasks, kept in Redis: its meta and its pages.

The splitting task writes the document's meta and its text-layer pages; each page task
(in any worker child, on any machine) records its page. Recording is atomic (one Lua
script: HSET then HLEN), so exactly one record sees the document complete — or
several, when a page is delivered twice: who merges is then decided by the job's end
claim (`JobEnder.claim`), never here.

A job that has ended takes no late writes: both writes check the one exit's claim
(`ocr:job:<id>:ended`, set by `JobEnder.claim`) in the same script as the write, so a
page finishing after a cancel, a deadline or a failure (whose ending freed these keys)
writes nothing and leaves no key behind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tasks.errors import InputNotFound
from tasks.records.jobs import DocumentMeta
from tasks.records.results import PageRecord
from tasks.state.boundary import transient_methods
from tasks.state.keys import doc_key, job_ended_key

if TYPE_CHECKING:
    import redis

# KEYS: the end claim, meta, pages; ARGV: TTL, meta JSON, then page number/JSON pairs.
_START_UNLESS_ENDED = """
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('set', KEYS[2], ARGV[2], 'EX', ARGV[1])
redis.call('del', KEYS[3])
for i = 3, #ARGV, 2 do redis.call('hset', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('expire', KEYS[3], ARGV[1])
return 1
"""
# KEYS: the end claim, pages; ARGV: page number, page JSON, TTL. -1: the job has ended.
_RECORD_UNLESS_ENDED = """
if redis.call('exists', KEYS[1]) == 1 then return -1 end
redis.call('hset', KEYS[2], ARGV[1], ARGV[2])
if redis.call('ttl', KEYS[2]) < 0 then redis.call('expire', KEYS[2], ARGV[3]) end
return redis.call('hlen', KEYS[2])
"""


@transient_methods("the fan-out join (Redis)")
class DocumentJoin:
    """Per-document keys: `<id>:meta` (JSON `DocumentMeta`), `<id>:pages` (hash)."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def _key(self, doc_id: str, part: str) -> str:
        return doc_key(doc_id, part)

    def start(self, meta: DocumentMeta, pages: list[PageRecord]) -> bool:
        """Write the meta and the text-layer pages; False (nothing written) when ended."""
        doc_id = meta.job_id
        pairs = [item for page in pages
                 for item in (str(page.number), json.dumps(page.to_json()))]
        return bool(self._redis.eval(
            _START_UNLESS_ENDED, 3, job_ended_key(doc_id), self._key(doc_id, "meta"),
            self._key(doc_id, "pages"), self._ttl, meta.to_json(), *pairs))

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
        """Store one page; True when the document has all its pages.

        False, with nothing written, when the job has ended (its end claim is set).
        """
        done = int(self._redis.eval(
            _RECORD_UNLESS_ENDED, 2, job_ended_key(doc_id), self._key(doc_id, "pages"),
            str(page.number), json.dumps(page.to_json()), self._ttl))
        return done >= total

    def pages(self, doc_id: str) -> list[PageRecord]:
        raw = self._redis.hgetall(self._key(doc_id, "pages"))
        return [PageRecord.from_json(json.loads(value)) for value in raw.values()]

    def cleanup(self, doc_id: str, also: Sequence[str] = ()) -> None:
        """Drop meta and pages, and the keys `also` (the job's end claim stays until its TTL).

        One DEL for all of them.
        """
        self._redis.delete(self._key(doc_id, "meta"), self._key(doc_id, "pages"), *also)
