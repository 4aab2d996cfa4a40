"""State of a PDF fanned out into page tasks, kept in Redis: its meta and its pages.

The splitting task writes the document's meta and its text-layer pages; each page task
(in any worker child, on any machine) records its page. A page task reads whether the
document runs and whether it was cancelled, not its meta: its message carries what it
reads with (`PageDescriptor`). The merge reads the meta. Recording is atomic (one Lua
script: HSET then HLEN), so exactly one record sees the document complete — or
several, when a page is delivered twice: who merges is then decided by the job's end
claim (`JobEnder.claim`), never here. The job's progress record (for clients) is written
in the same script, with the count that script reads, and so are the page's counts in
its client's usage (tasks/state/usage_counts.py `JobPages`).

A job that has ended takes no late writes: both writes check the one exit's claim
(`ocr:job:<id>:ended`, set by `JobEnder.claim`) in the same script as the write, so a
page finishing after a cancel, a deadline or a failure (whose ending freed these keys)
writes nothing and leaves no key behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from tasks.errors import InputNotFound
from tasks.records.jobs import DocumentMeta
from tasks.records.redis_target import RedisTarget
from tasks.records.results import PageRecord
from tasks.state import lua
from tasks.state.boundary import transient_methods
from tasks.state.keys import doc_key, job_ended_key, job_key
from tasks.state.replicas import hold_kept
from tasks.state.usage_counts import COUNT_PAGES_LUA, JobPages, quiet_jobs

# KEYS: the end claim, meta, escalation, pages, and the job's progress record and control
# hash when progress is written; ARGV: TTL, meta JSON, escalation JSON ("": none kept),
# the progress record's text before and after its `done` count, its TTL, the page count,
# then page number/JSON pairs (the `done`). The escalation has the meta's TTL. A
# document without text-layer pages has no pages hash yet: its first record makes it.
_START_UNLESS_ENDED = lua.Script("""
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('set', KEYS[2], ARGV[2], 'EX', ARGV[1])
if ARGV[3] == '' then
  redis.call('del', KEYS[3], KEYS[4])
else
  redis.call('set', KEYS[3], ARGV[3], 'EX', ARGV[1])
  redis.call('del', KEYS[4])
end
if #ARGV > 7 then
  redis.call('hset', KEYS[4], unpack(ARGV, 8))
  redis.call('expire', KEYS[4], ARGV[1])
end
if #KEYS > 4 then
  redis.call('set', KEYS[5], ARGV[4] .. ((#ARGV - 7) / 2) .. ARGV[5], 'EX', ARGV[6])
  redis.call('hset', KEYS[6], 'total', ARGV[7])
end
return 1
""")
# KEYS: the end claim, pages, the four keys of `JobPages` when pages are counted, and
# the job's progress record when one is written; ARGV: TTL, the progress record's text
# before and after its `done` count, its TTL, how many page numbers are counted (m), the
# five arguments of `JobPages`, those m numbers, then page number/JSON pairs. Counts
# the pages for the job's client (also once the job has ended, as they were read), then
# records them. Returns the pages in (-1: the job has ended, nothing recorded) and what
# the count found of the job's hold (`COUNT_PAGES_LUA`). A hash holding only the pages
# just written is new (or holds them again): it gets its TTL.
_RECORD_UNLESS_ENDED = lua.Script(COUNT_PAGES_LUA + """
local m = tonumber(ARGV[5])
local shown, hold = 3, -1
if m > 0 then
  local _, found = count_pages(KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[6], ARGV[7], ARGV[8],
                               ARGV[9], ARGV[10], 11, 10 + m)
  shown, hold = 7, found
end
if redis.call('exists', KEYS[1]) == 1 then return {-1, hold} end
local first = 11 + m
redis.call('hset', KEYS[2], unpack(ARGV, first))
local done = redis.call('hlen', KEYS[2])
if done <= (#ARGV - first + 1) / 2 then redis.call('expire', KEYS[2], ARGV[1]) end
if #KEYS >= shown then
  redis.call('set', KEYS[shown], ARGV[2] .. done .. ARGV[3], 'EX', ARGV[4])
end
return {done, hold}
""")

# KEYS: the end claim, the first readings; ARGV: TTL, then page number/JSON pairs.
_HOLD_UNLESS_ENDED = lua.Script("""
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('hset', KEYS[2], unpack(ARGV, 2))
redis.call('expire', KEYS[2], ARGV[1])
return 1
""")


@dataclass(frozen=True)
class ProgressWrite:
    """A job's progress record, written in the script that records its pages.

    `key` (Celery's result key of the job) is set to `head`, the pages in, `tail`, for
    `ttl` seconds: the record's text around its `done` count, known only there.
    """

    key: str | bytes
    head: str
    tail: str
    ttl: int


@dataclass(frozen=True)
class PageProgress:
    """How recording pages reports the job's progress.

    `write`: the progress record for clients, written in the script that records the
    pages (None: none, a one-page document); `tell(done, total)`: for watchers (an
    event), once the pages are in.
    """

    write: ProgressWrite | None
    tell: Callable[[int, int], None]


@transient_methods("the fan-out join (Redis)")
class DocumentJoin:
    """Per-document keys: `<id>:meta` (JSON `DocumentMeta`), `<id>:pages` (hash).

    `<id>:escalation`: the meta's escalation (`DocumentMeta.escalation_json`), kept
    apart so that the meta keeps the previous release's shape. Written with the meta,
    with its TTL; read with it (one MGET); dropped with it. `<id>:cancel`: a cancel
    asked (written by `JobControl.cancel`). `<id>:first` (hash): the first readings of
    the pages read again by the job's escalation engine, until their second reading is
    recorded.
    """

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def _key(self, doc_id: str, part: str) -> str:
        return doc_key(doc_id, part)

    def start(self, meta: DocumentMeta, pages: list[PageRecord],
              progress: ProgressWrite | None = None) -> bool:
        """Write the meta, its escalation, the text-layer pages, the `progress`: one script.

        The progress record counts the text-layer pages as done; the job's control hash
        gets its page count (`total`, which outlives the progress record). False, with
        nothing written, when the job has ended.
        """
        doc_id = meta.job_id
        keys: list[str | bytes] = [job_ended_key(doc_id), self._key(doc_id, "meta"),
                                   self._key(doc_id, "escalation"),
                                   self._key(doc_id, "pages")]
        shown: list[str | int] = ["", "", 0]
        if progress is not None:
            keys += [progress.key, job_key(doc_id)]
            shown = [progress.head, progress.tail, max(1, progress.ttl)]
        pairs = [item for page in pages
                 for item in (str(page.number), json.dumps(page.to_json()))]
        return bool(_START_UNLESS_ENDED.run(
            self._redis, keys, [self._ttl, meta.to_json(), meta.escalation_json() or "",
                                *shown, meta.total, *pairs]))

    def keep(self, doc_id: str, target: RedisTarget) -> bool:
        """Hold until `target.min_replicas` replicas have the document's split (its meta).

        Before its page tasks are sent: the split's server may not be the broker's
        (mid-failover, a primary the Sentinels have replaced), and a page task that
        finds no meta has no job to read for. `PrimaryReplaced` (transient) where the
        split went to such a primary; False where the replicas did not answer within
        `target.replica_timeout` s; True at once where none is asked for.
        """
        return hold_kept(self._redis, self._key(doc_id, "meta"), target,
                         target.replica_timeout)

    def meta(self, doc_id: str) -> DocumentMeta:
        """The document's meta with its escalation: one MGET."""
        raw, escalation = self._redis.mget(self._key(doc_id, "meta"),
                                           self._key(doc_id, "escalation"))
        if raw is None:
            raise InputNotFound(f"document {doc_id} is finished or expired")
        return DocumentMeta.from_json(raw, escalation)

    def find(self, doc_id: str) -> DocumentMeta | None:
        """The meta of a document still running, or None (not fanned out, or ended)."""
        try:
            return self.meta(doc_id)
        except InputNotFound:
            return None

    def running(self, doc_id: str) -> tuple[DocumentMeta | None, bool]:
        """A running document's meta (None: ended, or not fanned out), and its cancel.

        The meta with its escalation, and whether a cancel was asked
        (`JobControl.cancel`): one MGET. The first read of a page task whose message
        carries no descriptor (a previous release's sender).
        """
        raw, escalation, cancel = self._redis.mget(self._key(doc_id, "meta"),
                                                   self._key(doc_id, "escalation"),
                                                   self._key(doc_id, "cancel"))
        meta = None if raw is None else DocumentMeta.from_json(raw, escalation)
        return meta, cancel is not None

    def runs(self, doc_id: str) -> tuple[bool, bool]:
        """Whether the document runs (its meta is kept), and whether a cancel was asked.

        One EXISTS, a page task's first read; the meta itself is not read (it grows with
        the document). EXISTS counts a key named twice twice: the meta counts 1, the
        cancel mark 2.
        """
        cancel = self._key(doc_id, "cancel")
        found = int(self._redis.exists(self._key(doc_id, "meta"), cancel, cancel))
        return bool(found & 1), found >= 2

    def done(self, doc_id: str) -> int:
        return int(self._redis.hlen(self._key(doc_id, "pages")))

    def record(self, doc_id: str, pages: Sequence[PageRecord],
               progress: ProgressWrite | None = None, counted: JobPages | None = None) -> int:
        """Store pages and the job's `progress`, count the pages `counted`: one script.

        The pages in, after them; -1, with nothing recorded, when the job has ended (its
        end claim is set): `counted` is counted all the same (the pages were read).
        """
        if not pages:
            return self.done(doc_id)
        keys: list[str | bytes] = [job_ended_key(doc_id), self._key(doc_id, "pages")]
        args: list[str | int] = [self._ttl, "", "", 0, 0, "", "", 0, 0, 0]
        if counted is not None and counted.numbers:
            keys += counted.keys()
            args[4:] = [len(counted.numbers), *counted.args(), *counted.members()]
        if progress is not None:
            keys.append(progress.key)
            args[1:4] = [progress.head, progress.tail, max(1, progress.ttl)]
        pairs = [item for page in pages
                 for item in (str(page.number), json.dumps(page.to_json()))]
        try:
            done, hold = _RECORD_UNLESS_ENDED.run(self._redis, keys, [*args, *pairs])
        except redis.RedisError:
            quiet_jobs.forget()
            raise
        if counted is not None:
            quiet_jobs.counted(counted.job, int(hold))
        return int(done)

    def hold_first(self, doc_id: str, pages: Sequence[PageRecord]) -> bool:
        """Keep the first readings of escalated `pages`; False, none kept, once it ended."""
        pairs = [item for page in pages
                 for item in (str(page.number), json.dumps(page.to_json()))]
        return bool(_HOLD_UNLESS_ENDED.run(
            self._redis, [job_ended_key(doc_id), self._key(doc_id, "first")],
            [self._ttl, *pairs]))

    def first(self, doc_id: str, number: int) -> PageRecord | None:
        """Page `number`'s first reading, held while it is read again (None: none held)."""
        raw = self._redis.hget(self._key(doc_id, "first"), str(number))
        return None if raw is None else PageRecord.from_json(json.loads(raw))

    def recorded(self, doc_id: str, number: int) -> bool:
        """Whether page `number` of the document is recorded."""
        return bool(self._redis.hexists(self._key(doc_id, "pages"), str(number)))

    def pages(self, doc_id: str) -> list[PageRecord]:
        raw = self._redis.hgetall(self._key(doc_id, "pages"))
        return [PageRecord.from_json(json.loads(value)) for value in raw.values()]

    def cleanup(self, doc_id: str, also: Sequence[str] = ()) -> None:
        """Drop meta, escalation, pages, cancel mark, first readings, the keys `also`.

        One DEL for all of them; the end claim stays until its TTL.
        """
        self._redis.delete(*self.keys(doc_id, also))

    def keys(self, doc_id: str, also: Sequence[str] = ()) -> list[str]:
        """What `cleanup` drops: meta, escalation, pages, cancel mark, first readings, `also`."""
        return [self._key(doc_id, part)
                for part in ("meta", "escalation", "pages", "cancel", "first")] + list(also)
