"""The ending notice of a job: what a waiting client blocks on instead of polling.

Every ending of a job (success, partial, failure, cancel, deadline, a refused or
dead-lettered message, a fan-out's merge) writes one entry to the job's stream
`ocr:job:<id>:notice` (tasks/state/keys.py), with the same TTL as its result. A client
learns which of its jobs ended with one blocking `XREAD` over all their streams: the
read is non-destructive, so any number of waiters (submit.py, `OcrClient.wait`, the
HTTP API's `?wait=` and event streams) share one notice, and a notice written before
the wait began is seen at once.

`announce` runs in worker processes (pool children, the worker parent, the control
worker) where a job ends; `EndingWatch` in clients and the HTTP API.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from tasks.state.keys import job_notice_key

# The entry's one field: the ending's status (`SUCCESS`, `FAILURE`, ...), for a reader
# that wants it without reading the result.
FIELD = "status"
# XREAD BLOCK takes milliseconds; a read never blocks longer than the connection's
# socket timeout allows (tasks/state/connection.py: 30 s).
LONGEST_BLOCK = 20.0


def announce(pipe: Any, job_id: str, status: str, ttl: int) -> Any:
    """Queue the job's notice on `pipe` (a pipeline, or a client): XADD, then EXPIRE.

    Two commands, once per job: the stream keeps one entry (MAXLEN 1), a second ending
    (a no-op elsewhere) leaves one notice all the same.
    """
    key = job_notice_key(job_id)
    pipe.xadd(key, {FIELD: status}, maxlen=1, approximate=False)
    pipe.expire(key, max(1, int(ttl)))
    return pipe


class EndingWatch:
    """Which of some jobs have ended, read from their notices (one XREAD per look)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def ended(self, job_ids: Iterable[str], block: float | None = None) -> set[str]:
        """The jobs among `job_ids` whose notice is written.

        `block` seconds (at most LONGEST_BLOCK): wait that long for a first one when
        none has ended yet; None or 0: answer at once.
        """
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return set()
        keys = {job_notice_key(job_id): job_id for job_id in ids}
        wait = None if not block or block <= 0 else max(1, int(min(block, LONGEST_BLOCK) * 1000))
        reply = self._redis.xread(dict.fromkeys(keys, "0"), block=wait)
        found: set[str] = set()
        for stream in _streams(reply):
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            if name in keys:
                found.add(keys[name])
        return found


def _streams(reply: Any) -> list[Any]:
    """The stream names of an XREAD reply (RESP2: a list of pairs; RESP3: a map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply)
    return [entry[0] for entry in reply]
