"""The HTTP API's records of the jobs it sent, its clients' open jobs and Idempotency-Keys.

Runs in the `api` process (tasks/api/_service.py), and in the worker that steps a
batch (tasks/batch_worker.py: an API client's batch records each document it sends as
that client's job): the one place that writes or reads
`ocr:api:job:<id>` (owner, created, output, filename), `ocr:api:inflight:<client>`
(the client's unfinished jobs, for its jobs-in-flight quota) and
`ocr:api:idem:<client>:<sha256 of the key>` (the job a key made, and the fingerprint of
the options it was sent with). Key shapes: tasks/state/keys.py.

A job another sender sent (submit.py, `OcrClient`, a local batch: no API record, no
`owner` in its control hash) is its client's for the API too: `decode` makes its
record from its control hash's `client`, `filename` and `accepted`, so the token named
as that client lists and reads it, and no other does.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from tasks.state import lua
from tasks.state.keys import api_idempotency_key, api_inflight_key, api_job_key, job_key

# Seconds a request with a claimed Idempotency-Key waits for the claimant's job to be sent.
SEND_WAIT = 15.0
# The reads `queue_record` adds to a pipeline; the control hash fields it reads.
RECORD_READS = 2
_SENT_FIELDS = ("client", "owner", "filename", "accepted")


class ApiJobs:
    """Job records, open-job sets and idempotency claims (thread-safe: Redis calls)."""

    def __init__(self, client: redis.Redis, record_ttl: int, key_ttl: int) -> None:
        self._redis = client
        self._record_ttl = record_ttl
        self._key_ttl = key_ttl

    def remember(self, owner: str, job_id: str, output: str, filename: str) -> float:
        """Record a job about to be sent; its `created`.

        The gate counts it among its owner's open jobs (its reservation,
        `Reservations.take`).
        """
        now = round(time.time(), 3)
        pipe = self._redis.pipeline()
        pipe.hset(api_job_key(job_id), mapping={
            "owner": owner, "created": f"{now:.3f}", "output": output, "filename": filename})
        pipe.expire(api_job_key(job_id), self._record_ttl)
        pipe.execute()
        return now

    def forget(self, owner: str, job_id: str) -> None:
        """Drop the record of a job that could not be sent."""
        pipe = self._redis.pipeline()
        pipe.delete(api_job_key(job_id))
        pipe.zrem(api_inflight_key(owner), job_id)
        pipe.execute()

    def record(self, job_id: str) -> dict[str, str]:
        """The job's record as the API checks its owner by (`decode`); {} for none."""
        pipe = self._redis.pipeline(transaction=False)
        self.queue_record(pipe, job_id)
        return self.decode(*pipe.execute())

    def queue_record(self, pipe: Any, job_id: str) -> None:
        """Add `record`'s RECORD_READS reads to a pipeline another read shares.

        Their answers, in order, are `decode`'s arguments.
        """
        pipe.hgetall(api_job_key(job_id))
        pipe.hmget(job_key(job_id), *_SENT_FIELDS)

    @staticmethod
    def decode(raw: dict[Any, Any], sent: list[Any]) -> dict[str, str]:
        """The job's API record; else, for a job another sender sent, one made for it.

        `sent`: its control hash's `client`, `owner`, `filename` and `accepted`. A job
        with an `owner` there is an API job (its record gone: none), one without a
        `client` the anonymous client's (none either).
        """
        if raw:
            return _decode(raw)
        client, owner, filename, accepted = (None if v is None else _text(v) for v in sent)
        if owner or not client:
            return {}
        return {"owner": client, "created": accepted or "0", "filename": filename or ""}

    def open_jobs(self, owner: str) -> list[str]:
        members = self._redis.zrange(api_inflight_key(owner), 0, -1)
        return [_text(m) for m in members]  # type: ignore[arg-type]

    def claim_key(self, owner: str, digest: str, job_id: str, fingerprint: str) -> bool:
        """Take an Idempotency-Key for `job_id` (SET NX); False when already taken."""
        return bool(self._redis.set(api_idempotency_key(owner, digest),
                                    f"{job_id} {fingerprint}", nx=True, ex=self._key_ttl))

    def keyed(self, owner: str, digest: str) -> tuple[str, str] | None:
        """(job id, options fingerprint) an Idempotency-Key made, or None."""
        raw = self._redis.get(api_idempotency_key(owner, digest))
        if raw is None:
            return None
        job_id, _, fingerprint = _text(raw).partition(" ")
        return job_id, fingerprint

    def release_key(self, owner: str, digest: str) -> None:
        self._redis.delete(api_idempotency_key(owner, digest))

    def sent_or_abandoned(self, job_id: str, owner: str, digest: str,
                          wait: float = SEND_WAIT) -> bool:
        """Whether the job a key names was sent; False once its claimant is taken as dead.

        The claimant sends the job right after it claims the key (its control record's
        `accepted` is written as it is sent). Not sent within `wait` seconds: the process
        that claimed it died between the two (killed mid-request), and the key is freed
        (only if it still names that job) so that this request sends a job of its own.
        """
        deadline = time.monotonic() + wait
        while self._redis.hget(job_key(job_id), "accepted") is None:
            if time.monotonic() >= deadline:
                _RELEASE_IF.run(self._redis, [api_idempotency_key(owner, digest)], [job_id + " "])
                return False
            time.sleep(0.1)
        return True


# Deletes the key KEYS[1] only if its value starts with ARGV[1] ("<job id> ").
_RELEASE_IF = lua.Script("""
if string.sub(redis.call('GET', KEYS[1]) or '', 1, #ARGV[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""")


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
