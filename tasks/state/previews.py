"""Page previews in Redis: the image each OCR'd page was read from, as small WebP.

Written by the worker child that read the page (tasks/lifecycle/fanout.py, jobs.py),
read by the `api` process (`GET /v1/jobs/{id}/pages/{n}/image`). One key a page,
`ocr:preview:<job id>:<page>` (tasks/state/keys.py), with the results' TTL: a preview
lives as long as the result it belongs to. A cached answer's previews are copied from
the job that read the pages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from tasks.state.boundary import transient_methods
from tasks.state.keys import preview_key


@transient_methods("page previews (Redis)")
class PreviewStore:
    """Page previews, kept as long as results are."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def put(self, job_id: str, page: int, data: bytes) -> None:
        self.queue_put(self._redis, job_id, page, data)

    def queue_put(self, pipe: Any, job_id: str, page: int, data: bytes) -> None:
        """`put`'s command, queued on `pipe` (a job's ending carries it)."""
        pipe.set(preview_key(job_id, page), data, ex=self._ttl)

    def get(self, job_id: str, page: int) -> bytes | None:
        data = self._redis.get(preview_key(job_id, page))
        return None if data is None else data if isinstance(data, bytes) else data.encode()

    def copy(self, source: str, job_id: str, pages: Iterable[int]) -> int:
        """The previews of job `source`'s `pages` kept for `job_id` too; how many there were."""
        numbers = list(pages)
        if not numbers or source == job_id:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for number in numbers:
            pipe.copy(preview_key(source, number), preview_key(job_id, number), replace=True)
            pipe.expire(preview_key(job_id, number), self._ttl)
        return sum(1 for done in pipe.execute()[::2] if done)
