"""Pages read per client per day and month, and the page caps a client's token sets.

Worker processes add the pages they read (`PageUsage.add`, one pipeline where a job's
in-process read ends; a page task's in the script that records its page); the HTTP API
answers a client's own days (`GET /v1/usage`) and refuses a job over its cap at the
door; `ocr_admin.py usage` reads every client's. Keys (hashes, field: the client
name, "" the anonymous client):

- `ocr:usage:day:<YYYY-MM-DD>`: pages read that day (UTC).
- `ocr:usage:month:<YYYY-MM>`: pages read that month (UTC), what a monthly cap is
  checked against in one read.
- `ocr:usage:day:<YYYY-MM-DD>:engines` (field: `<engine>|<client>`): that day's pages
  by engine (`engines_by_day`); an escalated page counts for both engines that read it.

Each gets its TTL (`USAGE_TTL`) as a client's count of a job's pages in it begins (a
count without a job: at each process's first write). Counted: the pages read (OCR,
text layer, blank), not the failed ones, nor those answered from the cache. A page
task's pages are counted by the script that records them (tasks/state/join.py); what
counts a job's pages once each is tasks/state/usage_counts.py.

A cap (`pages_per_day`, `pages_per_month` in the client's token record,
`ocr:api:clients`) refuses a job whose pages would pass it (`PageQuotaExceeded`):
where the page count is known, before any is read. As a job is admitted, its fewest
pages are held against the caps (its reservation, tasks/state/reservations.py: the
check and the hold are one script) in `ocr:usage:held:<client>` (hash: job id ->
pages held), so two jobs sent at the same moment cannot both take the last pages. A
hold shrinks as the job's pages are counted (the same script that counts them), goes
when the job is not sent (its reservation released), and a job that
ended without reading them leaves it when the next reservation finds the caps full.
A worker settles a job's hold once its page count is known (`Reservations.settle`,
the same script): it reads a client's caps at most once every CAPS_SECONDS per process
(`known_caps`), and again before it refuses: a cap raised or removed counts at once,
one set or lowered within CAPS_SECONDS (the gate's hold reads them afresh).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from tasks.errors import BadRequest, PageQuotaExceeded
from tasks.records.request import page_range
from tasks.state import lua
from tasks.state.keys import API_CLIENTS_KEY
from tasks.state.keys import usage_engines_key as engines_key
from tasks.state.usage_counts import (
    COUNT_PAGES_LUA,
    USAGE_TTL,
    JobPages,
    day_key,
    held_key,
    month_key,
    quiet_jobs,
)

MAX_DAYS = 400  # the longest range one read answers
DEFAULT_DAYS = 30
CAPS_SECONDS = 5.0  # how long a worker process answers a client's caps from what it read
CAPS_KEPT = 1024  # clients whose caps one process holds (all dropped past that)

# KEYS and ARGV: those of `JobPages`, then the page numbers.
_ADD_ONCE = lua.Script(COUNT_PAGES_LUA + """
return count_pages(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                   ARGV[5], 6, #ARGV)
""")
# Lua functions over the client's holds (`held`), for the reservation's one script
# (tasks/state/reservations.py). `page_room`: nil when `pages` more of `job` fit under
# the caps with the pages read (the counts `day` and `month`) and held; else the cap it
# passes, {period, used}. A cap of 0: none. The counts are named in ARGV, not KEYS, as
# the senders may only read them (a script's KEYS need write rights); one Redis, never
# a cluster. `page_hold` holds the pages.
PAGE_HOLD_LUA = """
local function page_room(held, client, job, pages, day_cap, month_cap, day, month)
  local sum = 0
  for _, n in ipairs(redis.call('HVALS', held)) do sum = sum + tonumber(n) end
  sum = sum - tonumber(redis.call('HGET', held, job) or 0)
  for _, cap in ipairs({{'day', day, day_cap}, {'month', month, month_cap}}) do
    local used = tonumber(redis.call('HGET', cap[2], client) or 0) + sum
    if cap[3] > 0 and used + pages > cap[3] then return {cap[1], used} end
  end
  return nil
end
local function page_hold(held, job, pages, ttl)
  redis.call('HSET', held, job, pages)
  redis.call('EXPIRE', held, ttl)
end
"""
HOLD_TTL = 3 * 86400  # a hold outlives no job: one not ended by then is gone


def today(now: float | None = None) -> dt.date:
    """The UTC date of `now` (epoch seconds; the present by default)."""
    at = dt.datetime.now(dt.UTC) if now is None else dt.datetime.fromtimestamp(now, dt.UTC)
    return at.date()


def days(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    day = start
    while day <= end:
        yield day
        day += dt.timedelta(days=1)


def date_range(start: str | None, end: str | None,
               now: float | None = None) -> tuple[dt.date, dt.date]:
    """The days asked for: `end` (today) back to `start` (30 days in all); BadRequest."""
    try:
        last = dt.date.fromisoformat(end) if end else today(now)
        first = (dt.date.fromisoformat(start) if start else
                 last - dt.timedelta(days=DEFAULT_DAYS - 1))
    except ValueError:
        raise BadRequest("dates are YYYY-MM-DD") from None
    if first > last:
        raise BadRequest("`from` is after `to`")
    if (last - first).days >= MAX_DAYS:
        raise BadRequest(f"a range is at most {MAX_DAYS} days")
    return first, last


@dataclass(frozen=True)
class PageCaps:
    """A client's caps; None: no cap (0 is refused at creation: see tokens.py)."""

    pages_per_day: int | None = None
    pages_per_month: int | None = None
    engines: tuple[tuple[str, int], ...] = ()  # (engine, its pages a day): `engine_caps`

    @classmethod
    def of_record(cls, raw: str | bytes | None) -> PageCaps:
        """The caps in a token record (`ocr:api:clients` JSON); none without one."""
        if not raw:
            return cls()
        record = json.loads(raw)
        return cls(record.get("pages_per_day"), record.get("pages_per_month"),
                   engine_caps(record))

    @property
    def any(self) -> bool:
        """Whether a cap on all its pages is set (what a job's hold is held against)."""
        return bool(self.pages_per_day or self.pages_per_month)

    def engine_cap(self, engine: str | None) -> int | None:
        """The client's cap on the pages `engine` reads a day; None: none."""
        return dict(self.engines).get(engine or "")


class PageUsage:
    """Pages read per client per day and month, in Redis (thread-safe)."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._kept: set[str] = set()  # keys this process has given their TTL
        self._caps: dict[str, tuple[float, PageCaps]] = {}  # client -> (read at, caps)
        self._lock = threading.Lock()

    def add(self, client: str, pages: int, now: float | None = None,
            pipe: Any = None, job: str = "", numbers: Sequence[int] = (),
            engines: Sequence[tuple[str, ...]] = ()) -> None:
        """Count `pages` read for `client` today (UTC); queued in `pipe` when given.

        With `job` and the page `numbers` read, each page of a job counts once, however
        many workers read it (a job handed on from a worker that only seemed dead, a
        page task delivered twice): `pages` is then ignored, and a key's TTL is set as
        the client's count in it begins; each number's `engines` count once each too
        (`engines_by_day`). Without `job`, each key's TTL is set by the first write of
        each process, not by every one.
        """
        if (pages <= 0 and not job) or (job and not numbers):
            return
        day = today(now)
        own = pipe is None
        pipe = self._redis.pipeline(transaction=False) if own else pipe
        if job:
            self.queue_counted(pipe, JobPages(client, job, tuple(numbers), day,
                                              tuple(engines)))
        for key in () if job else (day_key(day), month_key(day)):
            pipe.hincrby(key, client, pages)
            if key not in self._kept:
                pipe.expire(key, USAGE_TTL)
                self._kept.add(key)
        if own:
            try:
                lua.execute(pipe)
            except redis.RedisError:
                self.forget_ttls()
                raise

    @staticmethod
    def queue_counted(pipe: Any, counted: JobPages) -> None:
        """Count `counted`'s pages, each of its job once, on `pipe` (one script)."""
        _ADD_ONCE.queue(pipe, counted.keys(), [*counted.args(), *counted.members()])

    def release(self, client: str, *jobs: str) -> None:
        """Drop the holds of jobs not sent, or ended."""
        if jobs:
            self._redis.hdel(held_key(client), *jobs)

    def holders(self, client: str) -> list[str]:
        """The jobs holding pages of `client`'s caps."""
        return [_text(j) for j in self._redis.hkeys(held_key(client))]

    def forget_ttls(self) -> None:
        """After a failed write: set each key's TTL again at its next write."""
        self._kept.clear()
        quiet_jobs.forget()

    def used(self, client: str, now: float | None = None) -> tuple[int, int]:
        """Pages `client` read today and this month (UTC)."""
        day = today(now)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(day_key(day), client)
        pipe.hget(month_key(day), client)
        on_day, in_month = pipe.execute()
        return int(on_day or 0), int(in_month or 0)

    def by_day(self, client: str, start: dt.date, end: dt.date) -> dict[str, int]:
        """`client`'s pages on each day from `start` to `end` that had any (ISO dates)."""
        chosen = list(days(start, end))
        pipe = self._redis.pipeline(transaction=False)
        for day in chosen:
            pipe.hget(day_key(day), client)
        return {day.isoformat(): int(n) for day, n in zip(chosen, pipe.execute(), strict=True)
                if n}

    def engines_by_day(self, start: dt.date, end: dt.date, client: str | None = None
                       ) -> dict[str, dict[str, dict[str, int]]]:
        """Pages by engine on each day from `start` to `end`: {client: {date: {engine: n}}}.

        `client`: that one's alone (else every client's). An escalated page counts for
        both engines that read it; a text-layer or blank page under its source.
        """
        chosen = list(days(start, end))
        pipe = self._redis.pipeline(transaction=False)
        for day in chosen:
            pipe.hgetall(engines_key(day))
        found: dict[str, dict[str, dict[str, int]]] = {}
        for day, counts in zip(chosen, pipe.execute(), strict=True):
            for field, pages in counts.items():
                engine, _, name = _text(field).partition("|")
                if client is None or name == client:
                    on_day = found.setdefault(name, {}).setdefault(day.isoformat(), {})
                    on_day[engine] = int(pages)
        return dict(sorted(found.items()))

    def every_client(self, start: dt.date, end: dt.date) -> dict[str, dict[str, int]]:
        """Every client's pages by day from `start` to `end`: {client: {date: pages}}."""
        chosen = list(days(start, end))
        pipe = self._redis.pipeline(transaction=False)
        for day in chosen:
            pipe.hgetall(day_key(day))
        found: dict[str, dict[str, int]] = {}
        for day, counts in zip(chosen, pipe.execute(), strict=True):
            for name, pages in counts.items():
                client = name.decode() if isinstance(name, bytes) else str(name)
                found.setdefault(client, {})[day.isoformat()] = int(pages)
        return dict(sorted(found.items()))

    def caps(self, client: str) -> PageCaps:
        """The caps of `client`'s token (none for a client without one)."""
        return PageCaps.of_record(self._redis.hget(API_CLIENTS_KEY, client)) if client \
            else PageCaps()

    def known_caps(self, client: str, fresh: bool = False) -> PageCaps:
        """`client`'s caps as this process read them at most CAPS_SECONDS ago (workers).

        `fresh`: read now.
        """
        now = time.monotonic()
        if not fresh:
            with self._lock:
                known = self._caps.get(client)
            if known is not None and now - known[0] < CAPS_SECONDS:
                return known[1]
        return self._read_caps(client, now)

    def _read_caps(self, client: str, now: float) -> PageCaps:
        caps = self.caps(client)
        with self._lock:
            if len(self._caps) >= CAPS_KEPT:
                self._caps.clear()
            self._caps[client] = (now, caps)
        return caps

    def engine_used(self, client: str, engine: str, now: float | None = None) -> int:
        """Pages `engine` read for `client` today (UTC)."""
        return int(self._redis.hget(engines_key(today(now)), f"{engine}|{client}") or 0)


def engine_caps(record: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """A token record's caps a day by engine (`engine_pages_per_day`), 0s left out."""
    caps = record.get("engine_pages_per_day") or {}
    return tuple(sorted((str(engine), int(cap)) for engine, cap in caps.items() if cap))


def over_cap(period: str, cap: int, used: int, pages: int, day: dt.date,
             now: float | None = None, engine: str = "") -> PageQuotaExceeded:
    """The refusal of a job of `pages` pages, `used` of a `cap` a `period` being read.

    `engine`: the cap is that engine's (`engine_pages_per_day`).
    """
    if period == "day":
        resets = day + dt.timedelta(days=1)
    else:
        resets = (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    at = dt.datetime.combine(resets, dt.time(), dt.UTC)
    now_at = dt.datetime.now(dt.UTC) if now is None else dt.datetime.fromtimestamp(now, dt.UTC)
    wait = max(1, int((at - now_at).total_seconds()) + 1)
    quota: dict[str, Any] = {"period": period, "cap": cap, "used": used, "pages": pages,
                             "resets": at.isoformat().replace("+00:00", "Z"),
                             "retry_after": wait}
    if engine:
        quota["engine"] = engine
    return PageQuotaExceeded(
        f"the job's {pages} page(s) would pass the client's cap of {cap} "
        f"{f'{engine} ' if engine else ''}pages a {period} ({used} read); it resets at "
        f"{at.isoformat()}", quota=quota)


def engine_totals(by_day: dict[str, dict[str, int]]) -> dict[str, int]:
    """The pages by engine over the days of `by_day` ({date: {engine: pages}})."""
    totals: dict[str, int] = {}
    for engines in by_day.values():
        for engine, pages in engines.items():
            totals[engine] = totals.get(engine, 0) + pages
    return dict(sorted(totals.items()))


def fewest_pages(spec: str | None) -> int:
    """The fewest pages a job reading the selection `spec` can read (1 without one).

    The document has at least the highest first page of any range (else the job fails,
    `invalid_pages`), so every range reads at least up to that page.
    """
    if not spec or not spec.strip():
        return 1
    ranges = [page_range(part, 2**31) for part in spec.split(",")]
    top = max(first for first, _ in ranges)
    chosen: set[int] = set()
    for first, last in ranges:
        chosen.update(range(first, min(last, top) + 1))
    return max(1, len(chosen))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
