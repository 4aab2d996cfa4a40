"""Page previews in Redis: the image each OCR'd page was read from, as small WebP.

Written by the worker child that read the page (tasks/lifecycle/fanout.py, jobs.py),
read by the `api` process (`GET /v1/jobs/{id}/pages/{n}/image`, the console). One key a
page, `ocr:preview:<job id>:<page>` (tasks/state/keys.py), with the results' TTL: a
preview lives as long as the result it belongs to.

A job answered from the result cache keeps no previews of its own. Its
`ocr:preview:<job id>:source` names the job that read the pages. When both jobs are
one client's, that job's previews are kept at least as long as the reference (EXPIRE
... GT): they live as long as the longest of the jobs that show them. Another client's
re-send (OCR_CACHE_ACROSS_CLIENTS) never keeps them longer: its reference lives as
long as they do. A reference names a job that read its pages, never another reference:
the cache stores only results that were read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from tasks.state.boundary import transient_methods
from tasks.state.keys import preview_key, preview_source_key


@transient_methods("page previews (Redis)")
class PreviewStore:
    """Page previews, kept as long as results are; a cached answer's, by reference."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def put(self, job_id: str, page: int, data: bytes) -> None:
        self.queue_put(self._redis, job_id, page, data)

    def queue_put(self, pipe: Any, job_id: str, page: int, data: bytes) -> None:
        """`put`'s command, queued on `pipe` (a job's ending carries it)."""
        pipe.set(preview_key(job_id, page), data, ex=self._ttl)

    def get(self, job_id: str, page: int) -> bytes | None:
        """Job `job_id`'s preview of `page`: its own, else that of the job it refers to.

        One round trip for a job's own preview, two for a cached answer's.
        """
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(preview_key(job_id, page))
        pipe.get(preview_source_key(job_id))
        data, source = pipe.execute()
        if data is None and source:
            data = self._redis.get(preview_key(_text(source), page))
        return None if data is None else data if isinstance(data, bytes) else data.encode()

    def refer(self, source: str, job_id: str, pages: Iterable[int],
              extend: bool = True) -> None:
        """Job `job_id` shows job `source`'s previews of `pages`: a reference, no copy.

        `extend` (the same client's jobs): `source`'s previews are kept at least as
        long as the reference (never shortened: another job may hold them longer). One
        round trip. Else (another client's): they keep their own TTL, and the reference
        lives no longer than the longest of them; none left, no reference. Two.
        """
        numbers = list(pages)
        if not numbers or not source or source == job_id:
            return
        pipe = self._redis.pipeline(transaction=False)
        if extend:
            pipe.set(preview_source_key(job_id), source, ex=self._ttl)
            for number in numbers:
                pipe.expire(preview_key(source, number), self._ttl, gt=True)
            pipe.execute()
            return
        for number in numbers:
            pipe.pttl(preview_key(source, number))
        left = min(max(int(ms) for ms in pipe.execute()), self._ttl * 1000)
        if left > 0:  # -2: no such preview; -1 (none kept without a TTL): not shared
            self._redis.set(preview_source_key(job_id), source, px=left)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
