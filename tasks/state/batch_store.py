"""A batch's state in Redis: its record, its documents in flight, its driver's lock.

Runs in the HTTP API (create, read, cancel, retry), in whichever worker runs the
batch's driver (`ocr.batch_step`) and in submit.py. Redis holds a batch's window only:
the record `ocr:batch:<id>` (a hash: source, options, target, client, the listing's
cursor, counts, state), `ocr:batch:<id>:flight` (job id -> the document it reads, at
most OCR_BATCH_WINDOW entries) and `ocr:batch:<id>:lock` (the step running now). What
ended is in the target's manifest, not here. Every key has a TTL, refreshed by each
step while the batch runs (`ttl`), and kept that long after it ended.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from tasks.state.keys import BATCHES_RUNNING_KEY, batch_key

COUNTS = ("listed", "done", "failed", "skipped", "pages_done", "pages_failed")
FINAL = ("SUCCESS", "PARTIAL", "FAILURE", "CANCELLED")


class BatchStore:
    """Reads and writes batches' records (thread-safe: one Redis client)."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self.ttl = ttl

    def create(self, fields: dict[str, Any], batch_id: str | None = None) -> str:
        """A new RUNNING batch with these fields (JSON for non-strings); its id."""
        batch_id = batch_id or uuid.uuid4().hex
        record = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        record.update({"id": batch_id, "state": "RUNNING", "created": f"{time.time():.3f}",
                       "cursor": "", "phase": "list", "chain": "",
                       **{name: "0" for name in COUNTS}})
        pipe = self._redis.pipeline()
        pipe.hset(batch_key(batch_id), mapping=record)  # type: ignore[arg-type]
        pipe.expire(batch_key(batch_id), self.ttl)
        pipe.sadd(BATCHES_RUNNING_KEY, batch_id)
        pipe.expire(BATCHES_RUNNING_KEY, self.ttl)
        pipe.execute()
        return batch_id

    def get(self, batch_id: str) -> dict[str, str]:
        """The record (strings), empty when there is none."""
        raw = self._redis.hgetall(batch_key(batch_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    def update(self, batch_id: str, **fields: Any) -> None:
        self._redis.hset(batch_key(batch_id), mapping={
            k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})

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
        for part in ("", "flight"):
            pipe.expire(batch_key(batch_id, part), self.ttl)
        pipe.expire(BATCHES_RUNNING_KEY, self.ttl)
        pipe.execute()

    # --- the step's lock ---------------------------------------------------------------

    def lock(self, batch_id: str, holder: str, seconds: float) -> bool:
        return bool(self._redis.set(batch_key(batch_id, "lock"), holder, nx=True,
                                    px=int(seconds * 1000)))

    def extend(self, batch_id: str, holder: str, seconds: float) -> None:
        """Keep the lock another `seconds` while its holder still holds it."""
        key = batch_key(batch_id, "lock")
        if _text(self._redis.get(key) or b"") == holder:
            self._redis.pexpire(key, int(seconds * 1000))

    def unlock(self, batch_id: str, holder: str) -> None:
        key = batch_key(batch_id, "lock")
        if _text(self._redis.get(key) or b"") == holder:
            self._redis.delete(key)

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
        """A document skipped: the cursor past it, counted."""
        pipe = self._redis.pipeline()
        pipe.hset(batch_key(batch_id), "cursor", cursor)
        for name, delta in deltas.items():
            pipe.hincrby(batch_key(batch_id), name, delta)
        pipe.execute()

    def settled(self, batch_id: str, job_id: str, **deltas: int) -> bool:
        """A document's job ended and its manifest line written: out of flight, counted.

        False (nothing counted) when another step had settled it already.
        """
        if not self._redis.hdel(batch_key(batch_id, "flight"), job_id):
            return False
        if deltas:
            self.count(batch_id, **deltas)
        return True

    def end(self, batch_id: str, state: str) -> None:
        pipe = self._redis.pipeline()
        pipe.hset(batch_key(batch_id), mapping={"state": state,
                                                "ended": f"{time.time():.3f}"})
        pipe.srem(BATCHES_RUNNING_KEY, batch_id)
        pipe.delete(batch_key(batch_id, "flight"))
        pipe.execute()

    def reopen(self, batch_id: str, phase: str) -> None:
        """Run an ended batch again (`retry`): its listing from the start, in `phase`."""
        pipe = self._redis.pipeline()
        pipe.hset(batch_key(batch_id), mapping={"state": "RUNNING", "phase": phase,
                                                "cursor": "", "ended": "", "cancel": "",
                                                "cancel_sent": "", "listed_all": "", "error": "",
                                                "started": f"{time.time():.3f}",
                                                "pages_at_start": "0"})
        pipe.sadd(BATCHES_RUNNING_KEY, batch_id)
        pipe.expire(BATCHES_RUNNING_KEY, self.ttl)
        pipe.expire(batch_key(batch_id), self.ttl)
        pipe.execute()


def progress_of(record: dict[str, str], running: int) -> dict[str, Any]:
    """A batch's record as shown (API, submit.py): counts, rates, an ETA."""
    counts = {name: int(record.get(name) or 0) for name in COUNTS}
    created = float(record.get("created") or 0)
    started = float(record.get("started") or created)
    ended = float(record["ended"]) if record.get("ended") else None
    elapsed = max((ended or time.time()) - started, 1e-3)
    read = counts["done"] + counts["failed"]
    per_doc = read / elapsed
    total = counts["listed"] if record.get("listed_all") == "1" else None
    left = None if total is None else max(total - read - counts["skipped"], 0)
    eta = None if left is None else (0.0 if left == 0 else
                                     round(left / per_doc, 1) if per_doc else None)
    target = record.get("target", "")
    return {"id": record.get("id", ""), "state": record.get("state", "RUNNING"),
            "source": record.get("source", ""), "result_url": target,
            "manifest": target + ("" if target.endswith("/") else "/") + "manifest.jsonl",
            "documents": {"total": total, "listed": counts["listed"],
                          "done": counts["done"], "failed": counts["failed"],
                          "skipped": counts["skipped"], "running": running},
            "pages": {"done": counts["pages_done"], "failed": counts["pages_failed"]},
            "pages_per_second": round((counts["pages_done"] + counts["pages_failed"])
                                      / elapsed, 3),
            "documents_per_second": round(per_doc, 3), "eta_seconds": eta,
            "created": created, "ended": ended,
            "cancel_requested": record.get("cancel") == "1",
            "error": json.loads(record["error"]) if record.get("error") else None}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
