"""State of a PDF fanned out into page tasks, kept in Redis, and its join.

The splitting task writes the document's meta and its text-layer pages; each page task
(in any worker child, on any machine) records its page; the task that records the
last page merges. Recording is atomic and the merge is claimed with SET NX, so a
page delivered twice (at-least-once) never merges twice.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from tasks.errors import InputNotFound
from tasks.state.boundary import transient_methods
from tasks.state.keys import DOC_PREFIX

if TYPE_CHECKING:
    import redis

    from tasks.state.stores import BlobStore
    from worker_config import Settings


@transient_methods("the fan-out join (Redis)")
class DocumentJoin:
    """Per-document keys: `<id>:meta` (JSON), `<id>:pages` (hash), `<id>:merged`."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def _key(self, doc_id: str, part: str) -> str:
        return f"{DOC_PREFIX}{doc_id}:{part}"

    def start(self, doc_id: str, meta: dict[str, Any], pages: list[dict[str, Any]]) -> None:
        pipe = self._redis.pipeline()
        pipe.set(self._key(doc_id, "meta"), json.dumps(meta), ex=self._ttl)
        pipe.delete(self._key(doc_id, "pages"), self._key(doc_id, "merged"))
        for page in pages:
            pipe.hset(self._key(doc_id, "pages"), str(page["number"]), json.dumps(page))
        pipe.expire(self._key(doc_id, "pages"), self._ttl)
        pipe.execute()

    def meta(self, doc_id: str) -> dict[str, Any]:
        raw = self._redis.get(self._key(doc_id, "meta"))
        if raw is None:
            raise InputNotFound(f"document {doc_id} is finished or expired")
        return dict(json.loads(raw))

    def done(self, doc_id: str) -> int:
        return int(self._redis.hlen(self._key(doc_id, "pages")))

    def record(self, doc_id: str, page: dict[str, Any], total: int) -> bool:
        """Store one page; True when it completed the document and this caller merges."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._key(doc_id, "pages"), str(page["number"]), json.dumps(page))
        pipe.hlen(self._key(doc_id, "pages"))
        _, done = pipe.execute()
        return int(done) >= total and self.claim(doc_id)

    def claim(self, doc_id: str) -> bool:
        """Take the right to finish the document (merge, or cancel); once only.

        The claim holds a token of its own: a SET retried after a lost reply still
        tells its caller that it won.
        """
        key, token = self._key(doc_id, "merged"), uuid.uuid4().hex
        if self._redis.set(key, token, nx=True, ex=self._ttl):
            return True
        held = self._redis.get(key)
        return held is not None and (held.decode() if isinstance(held, bytes) else held) \
            == token

    def release(self, doc_id: str) -> None:
        """Give the claim back (a merge that met a transient error): its retry merges."""
        self._redis.delete(self._key(doc_id, "merged"))

    def pages(self, doc_id: str) -> list[dict[str, Any]]:
        raw = self._redis.hgetall(self._key(doc_id, "pages"))
        return [json.loads(value) for value in raw.values()]

    def cleanup(self, doc_id: str) -> None:
        """Drop meta and pages; the merged flag stays until its TTL (late duplicates)."""
        self._redis.delete(self._key(doc_id, "meta"), self._key(doc_id, "pages"))


class OpenDocumentCache:
    """The one PDF a pool child is rendering pages of, kept open between page tasks."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._doc: Any = None

    def get(self, blob: str, password: str | None, blobs: BlobStore,
            settings: Settings) -> Any:
        if blob != self._key:
            from tasks.pipeline.pdf import open_pdf  # PyMuPDF only where pages are rendered

            self.close()
            self._doc = open_pdf(blobs.get(blob), password, settings)
            self._key = blob
        return self._doc

    def close(self) -> None:
        if self._doc is not None:
            self._doc.close()
        self._key = self._doc = None
