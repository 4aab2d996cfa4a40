"""Each client's jobs, newest first: the index `GET /v1/jobs` and `submit.py jobs` read.

Written where a job is sent (`OcrClient.enqueue`: the HTTP API, submit.py, Python
clients) and again, only if missing, where a worker starts it (jobs other Celery
senders sent by task name). Two sorted sets, members job ids, scores the epoch seconds
the job was sent: `ocr:jobs:client:<name>` per client (the anonymous client's name is
""), and `ocr:jobs:all` for every client (operators). Bounded twice: entries older than
`keep` seconds are dropped (the jobs' own records expire then), and all but the newest
`most` of the client's (`most * ALL_FACTOR` of everyone's). Those trims are made by one
add in TRIM_ONE_IN, the one whose job id's hash says so (`trims`, whichever process
sends it): between two such adds an index grows past its bound by the adds between
them, TRIM_ONE_IN on average, more than 435 once in a million (31/32 to that power). A
listing never shows past `most` meanwhile (`_low`), nor an entry older than `keep`. The
key's TTL (`keep`) is written by each process's first add to it and then every
TTL_EVERY s: it expires no earlier than `keep` - TTL_EVERY s after its last add.

A page is read newest first from a cursor (`Cursor`: the score and id of the last job
shown), in batches that a caller's `describe` turns into its own records (None: not
shown, e.g. another API client's job), filtered by `wanted`, within `SCAN_MOST` entries
a request: a page may hold fewer than asked for and still have a cursor to go on from.
Runs in clients, the `api` process and worker pool children.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis

from tasks.errors import BadRequest
from tasks.state.keys import JOBS_ALL_KEY, jobs_client_key

T = TypeVar("T")
ALL_FACTOR = 10     # everyone's index keeps this many times one client's
SCAN_MOST = 1000    # index entries one page request looks at, at most
BATCH = 100         # entries described per round trip
TRIM_ONE_IN = 32    # an add trims its keys when its job id's hash is a multiple of this
TTL_EVERY = 60.0    # seconds between one process's TTL writes of a key
PREFIX = re.compile(r"[0-9a-fA-F-]+")  # an id's start that needs no escaping in MATCH


def trims(job_id: str) -> bool:
    """Whether the add of `job_id` trims its index keys (one job id in TRIM_ONE_IN)."""
    return zlib.crc32(job_id.encode()) % TRIM_ONE_IN == 0


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last job shown (its score and id); the next starts after."""

    score: float
    job_id: str

    def encode(self) -> str:
        raw = json.dumps([self.score, self.job_id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """A cursor from `encode`; BadRequest for anything else."""
        try:
            score, job_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            if not isinstance(job_id, str) or isinstance(score, bool):
                raise TypeError
            return cls(float(score), job_id)
        except (ValueError, TypeError, binascii.Error):
            raise BadRequest("`cursor` is not one this service gave") from None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing: its records, and the cursor of the next (None: the end)."""

    items: list[T]
    next: Cursor | None


class JobIndex:
    """The sorted sets of jobs by client (thread-safe: Redis calls)."""

    def __init__(self, client: redis.Redis, keep: int, most: int) -> None:
        self._redis = client
        self.keep = keep  # seconds an entry is kept (the jobs' records' lifetime)
        self.most = most  # entries one client's index keeps
        self._kept: dict[str, float] = {}  # key -> when this process last wrote its TTL
        self._lock = threading.Lock()

    def add(self, job_id: str, client: str, when: float | None = None,
            only_new: bool = False, pipe: Any = None) -> None:
        """List `job_id` under `client` (and everyone's); `only_new`: keep an entry there.

        Each write adds; one in TRIM_ONE_IN (`trims`) also trims both keys by rank and
        by time, and the TTL is written by the first write of each process to a key
        and then every TTL_EVERY s. `only_new` where the entry is there already (its
        sender listed it): the two ZADD NX alone. With `pipe`, the writes are queued
        there, for the caller to run (`forget_ttls` where that fails).
        """
        now = time.time()
        score = now if when is None else when
        keys = ((jobs_client_key(client), self.most), (JOBS_ALL_KEY, self.most * ALL_FACTOR))
        if only_new:
            with self._redis.pipeline(transaction=False) as pipe:
                for key, _ in keys:
                    pipe.zadd(key, {job_id: score}, nx=True)
                if not any(pipe.execute()):
                    return
        trim = trims(job_id)
        own = pipe is None
        pipe = self._redis.pipeline(transaction=False) if own else pipe
        for key, most in keys:
            if not only_new:
                pipe.zadd(key, {job_id: score})
            if trim:
                pipe.zremrangebyrank(key, 0, -most - 1)
                pipe.zremrangebyscore(key, "-inf", f"({now - self.keep}")
            if self._due(key):
                pipe.expire(key, self.keep)
        if own:
            try:
                pipe.execute()
            except redis.RedisError:
                self.forget_ttls()
                raise

    def forget_ttls(self) -> None:
        """Write each key's TTL again with the next add (a write that failed)."""
        self._kept.clear()

    def _due(self, key: str) -> bool:
        """Whether this write gives `key` its TTL (last given TTL_EVERY s ago or more)."""
        now = time.monotonic()
        with self._lock:
            if now - self._kept.get(key, -TTL_EVERY) < TTL_EVERY:
                return False
            self._kept[key] = now
            return True

    def _low(self, client: str | None, since: float | None) -> float | str:
        """The lowest score a listing shows: newer than `since` and `keep` seconds ago.

        And among the newest `most` (of everyone's, `most * ALL_FACTOR`): the entries
        past it wait for the next trimming add.
        """
        key = JOBS_ALL_KEY if client is None else jobs_client_key(client)
        low: float | str = max(since or 0.0, time.time() - self.keep)
        most = self.most if client is not None else self.most * ALL_FACTOR
        cut = self._redis.zrevrange(key, most, most, withscores=True)
        if cut and float(cut[0][1]) >= float(low):
            low = f"({cut[0][1]!r}"
        return low

    def entries(self, client: str | None, low: float | str, until: float | None,
                after: Cursor | None, count: int) -> list[tuple[str, float]]:
        """Up to `count` (job id, score) of `client`'s (None: everyone's) newest first.

        `low`: the lowest score shown (`_low`).
        """
        key = JOBS_ALL_KEY if client is None else jobs_client_key(client)
        high: float | str = "+inf" if until is None else until
        if after is not None:
            high = after.score if until is None else min(until, after.score)
        found: list[tuple[str, float]] = []
        skip = 0
        while len(found) < count:
            raw = self._redis.zrevrangebyscore(key, high, low, start=skip, num=count,
                                               withscores=True)
            for member, score in raw:  # type: ignore[str-unpack]
                job_id = member.decode() if isinstance(member, bytes) else str(member)
                # Equal scores come in descending id order: skip up to the cursor's job.
                if after is not None and score == after.score and job_id >= after.job_id:
                    continue
                found.append((job_id, float(score)))
            if len(raw) < count:
                break
            skip += len(raw)
        return found[:count]

    def starting_with(self, prefix: str, most: int = 2) -> list[str]:
        """Up to `most` ids in everyone's index that begin with `prefix` (hex and `-`).

        A ZSCAN with MATCH: it walks the index (bounded by `most * ALL_FACTOR`).
        """
        if not PREFIX.fullmatch(prefix):
            return []
        found: list[str] = []
        for member, _ in self._redis.zscan_iter(JOBS_ALL_KEY, match=f"{prefix}*",
                                                count=SCAN_MOST):
            found.append(member.decode() if isinstance(member, bytes) else str(member))
            if len(found) >= most:
                break
        return found

    def page(self, client: str | None, since: float | None, until: float | None,
             after: Cursor | None, limit: int,
             describe: Callable[[Sequence[tuple[str, float]]], list[T | None]],
             wanted: Callable[[T], bool] = lambda _: True) -> Page[T]:
        """Up to `limit` described records that are `wanted`, newest first.

        `describe` turns a batch of (job id, score) into records (None: not listed);
        at most SCAN_MOST entries are looked at, so a filter that few jobs pass ends a
        page early, with a cursor to go on from.
        """
        items: list[T] = []
        looked = 0
        last = after
        low = self._low(client, since)  # read once for the page's batches
        while len(items) < limit and looked < SCAN_MOST:
            batch = self.entries(client, low, until, last, min(BATCH, SCAN_MOST - looked))
            if not batch:
                return Page(items, None)
            looked += len(batch)
            for (job_id, score), record in zip(batch, describe(batch), strict=True):
                last = Cursor(score, job_id)
                if record is not None and wanted(record):
                    items.append(record)
                    if len(items) == limit:
                        break
        more = last is not None and self.entries(client, low, until, last, 1)
        return Page(items, last if more else None)
