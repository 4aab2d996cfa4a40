"""A batch's state in Redis: its record, its documents in flight, its driver's lock.

Runs in the HTTP API (create, read, cancel, retry), in whichever worker runs the
batch's driver (`ocr.batch_step`) and in submit.py. Redis holds a batch's window only:
the record `ocr:batch:<id>` (a hash: a `BatchRecord`'s fields, tasks/records/batches.py),
`ocr:batch:<id>:flight` (job id -> the document it reads, at most OCR_BATCH_WINDOW
entries) and `ocr:batch:<id>:lock` (the step running now; taken with SET NX, kept and
let go by its holder alone, each in one script). A client's running batches are counted
and its new one recorded in one script (`create(..., limit=)`), so simultaneous
creates cannot all pass a check that only some of them fit in. What ended is in the target's
manifest, not here. Every key has a TTL, refreshed by each step while the batch runs
(`touch`), and kept that long after it ended.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from tasks.records.batches import COUNTS, BatchRecord, BatchState, encode_field
from tasks.state import lua
from tasks.state.keys import BATCH_PREFIX, BATCHES_RUNNING_KEY, batch_key

FINAL = tuple(s for s in BatchState if s.final)
# The lock's holder alone extends it (ARGV[2] ms) or lets it go (ARGV[2] absent).
_HOLDER_SCRIPT = lua.Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
""")

# KEYS[1]: the running batches' set, KEYS[2]: the new batch's record. ARGV: its client,
# the limit of its running batches (0: none), the TTL, its id, the records' key prefix,
# the RUNNING state's name, then the record's fields and values. Records are named
# from the set, not in KEYS: one Redis, never a cluster. Returns 1 when recorded, 0
# when the client runs `limit` batches (nothing written).
_CREATE_WITHIN = lua.Script("""
local limit = tonumber(ARGV[2])
if limit > 0 then
  local running = 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local owner = redis.call('HMGET', ARGV[5] .. id, 'client', 'state')
    if owner[1] == ARGV[1] and owner[2] == ARGV[6] then running = running + 1 end
  end
  if running >= limit then return 0 end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
""")

# KEYS[1]: the batch's flight, KEYS[2]: its record. ARGV: for each job, its id, the
# number of its counts, then each count's name and delta. A job still in flight leaves
# it and its counts are added; one already gone is not counted again. Returns the ids
# of the jobs settled.
_SETTLE = lua.Script("""
local settled, i = {}, 1
while i <= #ARGV do
  local job, n = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('HDEL', KEYS[1], job) == 1 then
    settled[#settled + 1] = job
    for k = 0, n - 1 do
      redis.call('HINCRBY', KEYS[2], ARGV[i + 2 + 2 * k], ARGV[i + 3 + 2 * k])
    end
  end
  i = i + 2 + 2 * n
end
return settled
""")


class BatchStore:
    """Reads and writes batches' records (thread-safe: one Redis client)."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self.ttl = ttl

    def create(self, record: BatchRecord) -> BatchRecord:
        """Record a new RUNNING batch (a fresh id unless the record has one)."""
        record = _new(record)
        pipe = self._redis.pipeline()
        pipe.hset(batch_key(record.id), mapping=record.to_hash())  # type: ignore[arg-type]
        pipe.expire(batch_key(record.id), self.ttl)
        pipe.sadd(BATCHES_RUNNING_KEY, record.id)
        pipe.expire(BATCHES_RUNNING_KEY, self.ttl)
        pipe.execute()
        return record

    def create_within(self, record: BatchRecord, limit: int) -> BatchRecord | None:
        """`create`, while the record's client runs fewer than `limit` batches (0: any).

        Counted and recorded in one script; None (nothing written) when it runs that many.
        """
        record = _new(record)
        fields = [part for pair in record.to_hash().items() for part in pair]
        made = _CREATE_WITHIN.run(
            self._redis, [BATCHES_RUNNING_KEY, batch_key(record.id)],
            [record.client, limit, self.ttl, record.id, BATCH_PREFIX,
                  BatchState.RUNNING.value, *fields])
        return record if int(made) else None

    def get(self, batch_id: str) -> BatchRecord:
        """The record; one whose `exists` is False when there is none."""
        raw = self._redis.hgetall(batch_key(batch_id))
        return BatchRecord.from_hash({_text(k): _text(v) for k, v in raw.items()})

    def update(self, batch_id: str, **fields: Any) -> None:
        """Set some of the record's fields (typed as `BatchRecord`'s)."""
        self._redis.hset(batch_key(batch_id), mapping={
            k: encode_field(k, v) for k, v in fields.items()})

    def count(self, batch_id: str, **deltas: int) -> None:
        pipe = self._redis.pipeline()
        for name, delta in deltas.items():
            pipe.hincrby(batch_key(batch_id), name, delta)
        pipe.execute()

    def running(self) -> list[str]:
        """The ids of the batches not ended (a worker's start resumes their drivers)."""
        return sorted(_text(i) for i in self._redis.smembers(BATCHES_RUNNING_KEY))

    def new_chain(self, batch_id: str) -> str:
        """Name a new chain of steps; a step of any other chain stops where it is."""
        chain = uuid.uuid4().hex
        self._redis.hset(batch_key(batch_id), "chain", chain)
        return chain

    def touch(self, batch_id: str) -> None:
        """Keep the batch's keys another TTL (each step)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(batch_key(batch_id), "stepped", f"{time.time():.3f}")
        for part in ("", "flight", "seen"):
            pipe.expire(batch_key(batch_id, part), self.ttl)
        pipe.expire(BATCHES_RUNNING_KEY, self.ttl)
        pipe.execute()

    # --- the step's lock ---------------------------------------------------------------

    def lock(self, batch_id: str, holder: str, seconds: float) -> bool:
        return bool(self._redis.set(batch_key(batch_id, "lock"), holder, nx=True,
                                    px=int(seconds * 1000)))

    def extend(self, batch_id: str, holder: str, seconds: float) -> bool:
        """Keep the lock another `seconds` while its holder still holds it (one script)."""
        return bool(_HOLDER_SCRIPT.run(self._redis, [batch_key(batch_id, "lock")],
                                       [holder, int(seconds * 1000)]))

    def unlock(self, batch_id: str, holder: str) -> bool:
        """Let the lock go, when `holder` still holds it (compare and delete: one script)."""
        return bool(_HOLDER_SCRIPT.run(self._redis, [batch_key(batch_id, "lock")], [holder]))

    # --- documents in flight -----------------------------------------------------------

    def flight(self, batch_id: str) -> dict[str, dict[str, Any]]:
        """Job id -> the document it reads."""
        raw = self._redis.hgetall(batch_key(batch_id, "flight"))
        return {_text(k): json.loads(v) for k, v in raw.items()}

    def in_flight(self, batch_id: str) -> int:
        return int(self._redis.hlen(batch_key(batch_id, "flight")))

    def sent(self, batch_id: str, job_id: str, document: dict[str, Any],
             cursor: str, **deltas: int) -> None:
        """A document's job sent: in flight, and the listing's cursor past it (one step)."""
        pipe = self._redis.pipeline()
        pipe.hset(batch_key(batch_id, "flight"), job_id, json.dumps(document))
        pipe.expire(batch_key(batch_id, "flight"), self.ttl)
        pipe.hset(batch_key(batch_id), "cursor", cursor)
        for name, delta in deltas.items():
            pipe.hincrby(batch_key(batch_id), name, delta)
        pipe.execute()

    def passed(self, batch_id: str, cursor: str, **deltas: int) -> None:
        """A document skipped or refused: the cursor past it, counted."""
        pipe = self._redis.pipeline()
        pipe.hset(batch_key(batch_id), "cursor", cursor)
        for name, delta in deltas.items():
            pipe.hincrby(batch_key(batch_id), name, delta)
        pipe.execute()

    def settle(self, batch_id: str, counts: dict[str, dict[str, int]]) -> list[str]:
        """Documents' jobs ended, their manifest lines written: out of flight, counted.

        `counts`: job id -> its document's counts. One script for them all; a job another
        step had settled already is counted no more. The jobs settled here, in order.
        """
        if not counts:
            return []
        args: list[Any] = []
        for job_id, deltas in counts.items():
            args += [job_id, len(deltas)]
            for name, delta in deltas.items():
                args += [name, delta]
        settled = _SETTLE.run(self._redis, [batch_key(batch_id, "flight"), batch_key(batch_id)],
                             args)
        return [_text(job_id) for job_id in settled]

    def end(self, batch_id: str, state: BatchState) -> None:
        pipe = self._redis.pipeline()
        pipe.hset(batch_key(batch_id), mapping={"state": state.value,
                                                "ended": f"{time.time():.3f}"})
        pipe.srem(BATCHES_RUNNING_KEY, batch_id)
        pipe.delete(batch_key(batch_id, "flight"), batch_key(batch_id, "seen"))
        pipe.execute()

    def first_seen(self, batch_id: str, read: str, where: str) -> str:
        """Where the read `read` (a document with its options) was first listed.

        `where` (its manifest line's offset) when no earlier line named it; a step that
        reads the same line again after a crash finds its own offset, not a duplicate.
        """
        pipe = self._redis.pipeline()
        pipe.hsetnx(batch_key(batch_id, "seen"), read, where)
        pipe.hget(batch_key(batch_id, "seen"), read)
        pipe.expire(batch_key(batch_id, "seen"), self.ttl)
        _, first, _ = pipe.execute()
        return _text(first or where.encode())

    def reopen(self, batch_id: str, phase: str) -> None:
        """Run an ended batch again (`retry`): its listing from the start, in `phase`."""
        pipe = self._redis.pipeline()
        pipe.hset(batch_key(batch_id), mapping={
            "state": BatchState.RUNNING.value, "phase": phase, "cursor": "",
            "cancel": encode_field("cancel", False),
            "cancel_sent": encode_field("cancel_sent", False),
            "listed_all": encode_field("listed_all", False),
            "started": f"{time.time():.3f}"})
        pipe.hdel(batch_key(batch_id), "ended", "error")
        pipe.sadd(BATCHES_RUNNING_KEY, batch_id)
        pipe.expire(BATCHES_RUNNING_KEY, self.ttl)
        pipe.expire(batch_key(batch_id), self.ttl)
        pipe.execute()


def _new(record: BatchRecord) -> BatchRecord:
    """A new batch's record: RUNNING, created now, its listing from the start."""
    return record.with_(id=record.id or uuid.uuid4().hex, state=BatchState.RUNNING,
                        created=round(time.time(), 3), cursor="", phase="list", chain="")


def progress_of(record: BatchRecord, running: int) -> dict[str, Any]:
    """A batch's record as shown (API, submit.py): counts, rates, an ETA."""
    counts = record.counts()
    started = record.started or record.created
    ended = record.ended
    elapsed = max((ended or time.time()) - started, 1e-3)
    read = counts["done"] + counts["failed"]
    per_doc = read / elapsed
    total = counts["listed"] if record.listed_all else None
    left = None if total is None else max(total - read - counts["skipped"], 0)
    eta = None if left is None else (0.0 if left == 0 else
                                     round(left / per_doc, 1) if per_doc else None)
    target = record.target
    return {"id": record.id, "client": record.client, "state": record.state.value,
            "source": record.source, "result_url": target,
            "manifest": target + ("" if target.endswith("/") else "/") + "manifest.jsonl",
            "documents": {"total": total, "listed": counts["listed"],
                          "done": counts["done"], "failed": counts["failed"],
                          "skipped": counts["skipped"],
                          "skipped_failed": counts["skipped_failed"], "running": running},
            "pages": {"done": counts["pages_done"], "failed": counts["pages_failed"]},
            "pages_per_second": round((counts["pages_done"] + counts["pages_failed"])
                                      / elapsed, 3),
            "documents_per_second": round(per_doc, 3), "eta_seconds": eta,
            "created": record.created, "ended": ended,
            "cancel_requested": record.cancel, "error": record.error}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["COUNTS", "FINAL", "BatchStore", "progress_of"]
