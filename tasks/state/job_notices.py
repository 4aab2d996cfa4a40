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
from tasks.state.resp import resp

# The entry's one field: the ending's status (`SUCCESS`, `FAILURE`, ...), for a reader
# that wants it without reading the result.
FIELD = "status"
# XREAD BLOCK takes milliseconds; a read never blocks longer than the connection's
# socket timeout allows (tasks/state/connection.py: 30 s).
LONGEST_BLOCK = 20.0
# Packed stream names an `EndingWatch` keeps beyond twice its current look's (those of
# jobs whose watchers gave up before they ended).
KEPT_NAMES = 1024
_NOTICE_HEAD, _NOTICE_TAIL = job_notice_key("\0").split("\0")


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
    """Which of some jobs have ended, read from their notices (one XREAD per look).

    A client waiting for hundreds of jobs looks once for each few that end, and each
    look names every pending job's stream: packing those names is most of a look's
    cost. So each job's stream name is packed (as RESP) once and kept while the job is
    watched, and a look joins them.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._encoder = client.connection_pool.get_encoder()
        self._packed: dict[str, bytes] = {}  # job id -> its stream's name, packed

    def ended(self, job_ids: Iterable[str], block: float | None = None) -> set[str]:
        """The jobs among `job_ids` whose notice is written.

        `block` seconds (at most LONGEST_BLOCK): wait that long for a first one when
        none has ended yet; None or 0: answer at once.
        """
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return set()
        wait = None if not block or block <= 0 else max(1, int(min(block, LONGEST_BLOCK) * 1000))
        head = ["XREAD", *(("BLOCK", wait) if wait else ()), "STREAMS"]
        command = b"".join([b"*%d\r\n" % (len(head) + 2 * len(ids)), resp(self._encoder, head),
                            *(self._name(job_id) for job_id in ids),
                            resp(self._encoder, ("0",)) * len(ids)])  # each stream from its start
        if len(self._packed) > 2 * len(ids) + KEPT_NAMES:  # watches that ended unanswered
            self._packed = {job_id: self._packed[job_id] for job_id in ids}
        reply = self._read(command)
        found: set[str] = set()
        for stream in _streams(reply):
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            job_id = name[len(_NOTICE_HEAD):-len(_NOTICE_TAIL)]
            if job_id in self._packed:
                found.add(job_id)
                del self._packed[job_id]
        return found

    def _name(self, job_id: str) -> bytes:
        packed = self._packed.get(job_id)
        if packed is None:
            packed = self._packed[job_id] = resp(self._encoder, (job_notice_key(job_id),))
        return packed

    def _read(self, command: bytes) -> Any:
        """`command`'s reply, on a connection of the client's pool.

        A read that failed (the server went away, a timeout) closes its connection, so
        that no later command reads this one's reply.
        """
        pool = self._redis.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command([command])
            return connection.read_response()
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)


def _streams(reply: Any) -> list[Any]:
    """The stream names of an XREAD reply (RESP2: a list of pairs; RESP3: a map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply)
    return [entry[0] for entry in reply]
