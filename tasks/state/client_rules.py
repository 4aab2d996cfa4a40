"""A client's rules as its token record sets them, and its jobs in flight.

Runs in the `api` process (each request's client), in workers (a batch's driver reads
its client's rules each step) and in submit.py (local batches). The token record is
`ocr:api:clients` field <name> (JSON, written by tasks/api/tokens.py); a client
without one is held to the service-wide rules. Its unfinished jobs, single jobs and
batch documents alike, are the sorted set `ocr:api:inflight:<client>` (job id ->
the time it was sent). A job is counted by its reservation at the gate
(tasks/state/reservations.py): one Lua script checks the limit and adds the job
together, so simultaneous sends of one client cannot all pass a check that only some
of them fit in.

A job leaves the set when it ends, whatever its status: the step that marks its
ending done removes it (tasks/state/job_scripts.py, `JobControl.mark_ended`). When
the set is full, the gate also drops the members that no longer count: a job whose
stored state is final (an ending outside the one exit), and a job whose record is gone
(`ocr:job:<id>` expired or lost) once its place is older than RECORD_GRACE.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from tasks.records.clients import RUNNING_BATCHES, ClientRules
from tasks.settings import Settings
from tasks.state.keys import API_CLIENTS_KEY, api_inflight_key, job_key
from tasks.state.usage import engine_caps

# Seconds a place is kept for a job without a record: its sender writes the job's record
# (`ocr:job:<id>`) in the round trip after it reserves the place.
RECORD_GRACE = 300.0


def rules_of(name: str, token: Mapping[str, Any] | None, settings: Settings) -> ClientRules:
    """The rules of client `name` from its token record (None: it has none)."""
    if token is None:
        return ClientRules.service_wide(name)
    prefixes = token.get("allowed_urls")
    own = token.get("jobs_in_flight")
    batches = token.get("batches")
    # none of its own: it reads no URL but OCR_SHARED_READ_URLS, and writes nowhere
    own_urls = () if prefixes is None else tuple(str(p) for p in prefixes)
    return ClientRules(
        name=name,
        allowed_urls=own_urls,
        result_urls=own_urls,
        max_priority=token.get("max_priority"),
        jobs_in_flight=settings.api_jobs_in_flight if own is None else int(own),
        batches=RUNNING_BATCHES if batches is None else int(batches),
        pages_per_day=token.get("pages_per_day") or None,
        pages_per_month=token.get("pages_per_month") or None,
        engine_pages_per_day=engine_caps(token))


def read_rules(client: redis.Redis, name: str, settings: Settings) -> ClientRules:
    """The rules of client `name` as its token record says now (one HGET)."""
    raw = client.hget(API_CLIENTS_KEY, name) if name else None
    return rules_of(name, json.loads(raw) if raw else None, settings)


# Lua functions over the client's set (`key`), for the reservation's one script
# (tasks/state/reservations.py). `in_flight_room`: whether `job` is counted already or
# the set holds fewer than `limit` (0: no limit); `in_flight_add` counts it.
IN_FLIGHT_LUA = """
local function in_flight_room(key, job, limit)
  return limit <= 0 or redis.call('ZSCORE', key, job) ~= false
    or redis.call('ZCARD', key) < limit
end
local function in_flight_add(key, job, at, ttl)
  redis.call('ZADD', key, at, job)
  redis.call('EXPIRE', key, ttl)
end
"""


class InFlight:
    """Each client's unfinished jobs (thread-safe: Redis calls)."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self.ttl = ttl

    def add(self, name: str, job_id: str, at: float | None = None) -> None:
        pipe = self._redis.pipeline()
        pipe.zadd(api_inflight_key(name), {job_id: at or round(time.time(), 3)})
        pipe.expire(api_inflight_key(name), self.ttl)
        pipe.execute()

    def remove(self, name: str, *job_ids: str) -> None:
        if job_ids:
            self._redis.zrem(api_inflight_key(name), *job_ids)

    def open(self, name: str) -> list[str]:
        members: list[Any] = self._redis.zrange(api_inflight_key(name), 0, -1)
        return [_text(m) for m in members]

    def places(self, name: str) -> list[tuple[str, float]]:
        """The client's places: (job id, when it was sent)."""
        members: list[Any] = self._redis.zrange(api_inflight_key(name), 0, -1,
                                                withscores=True)
        return [(_text(m), float(at)) for m, at in members]

    def settle(self, name: str, members: list[tuple[str, float]],
               ended: Callable[[list[str]], list[str]]) -> list[str]:
        """Drop those of `members` that no longer count; the ids dropped.

        `ended` answers which jobs' stored states are final (one round trip); of the
        others, those whose place is older than RECORD_GRACE are asked whether their
        record still exists (one more round trip, only when there are such places).
        """
        finished = set(ended([job_id for job_id, _ in members]))
        before = time.time() - RECORD_GRACE
        old = [job_id for job_id, at in members if job_id not in finished and at < before]
        if old:
            pipe = self._redis.pipeline(transaction=False)
            for job_id in old:
                pipe.exists(job_key(job_id))
            finished.update(job_id for job_id, kept in zip(old, pipe.execute(), strict=True)
                            if not kept)
        dropped = [job_id for job_id, _ in members if job_id in finished]
        self.remove(name, *dropped)
        return dropped


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
