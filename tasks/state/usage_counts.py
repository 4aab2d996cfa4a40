"""A job's pages counted once each in its client's usage, and the keys that holds.

Runs in worker pool children (and the worker processes of in-process jobs): the Lua
function `COUNT_PAGES_LUA` is put before both scripts that count a job's pages,
`PageUsage.add`'s (tasks/state/usage.py) and a page task's record (tasks/state/join.py,
which counts the pages it records). Keys (tasks/state/usage.py says what reads them):

- `ocr:usage:day:<YYYY-MM-DD>`, `ocr:usage:month:<YYYY-MM>` (hashes, field: the client).
- `ocr:usage:day:<YYYY-MM-DD>:engines` (hash, field: `<engine>|<client>`): the pages
  each engine read that day; a page two engines read (escalated) counts for both, a
  text-layer or blank page under its source (`text-layer`, `blank`).
- `ocr:usage:job:<id>`: the pages of a job already counted (a set, `JOB_PAGES_TTL`): the
  page numbers, and `<number>|<engine>` for each engine a page was counted for.
- `ocr:usage:held:<client>`: pages held for the client's jobs sent (job -> pages).

`quiet_jobs` holds the jobs this process counted pages of in the last
`QUIET_SECONDS` with no hold found: a hold is made before its job is sent, so none
comes later, and the job's set has its TTL; their next counts write neither. A write
that fails makes it forget them all (as the other keys' TTLs are written again then).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.state.keys import usage_day_key as day_key
from tasks.state.keys import usage_held_key as held_key
from tasks.state.keys import usage_job_key as job_pages_key
from tasks.state.keys import usage_month_key as month_key

USAGE_TTL = 400 * 24 * 3600
JOB_PAGES_TTL = 3 * 86400  # a job's counted pages: longer than any job's redelivery
QUIET_SECONDS = 3600.0  # far within JOB_PAGES_TTL: a set that expired is given it again
QUIET_KEPT = 1024  # jobs one process remembers (all dropped past that)

# Adds to `client`'s counts in `day` and `month` the pages ARGV[first..last] not yet in
# the job's set of counted pages `set` (kept `set_ttl` seconds), and takes as many off
# the job's hold in `held`. Each page is `<number>` or `<number>|<engine>|...`
# (`JobPages.members`): each engine not yet counted for the page adds one to
# `day`:engines, field `<engine>|<client>`. A count that begins in a key (a new key
# begins one too) gives the key its TTL `ttl`. `quiet` ('1': the job is in
# `quiet_jobs`): the set's TTL and the hold are left alone. Returns how many pages, and
# the hold: 1 found, 0 none, -1 not looked at.
# A call writes once per engine, not once per page: one SADD of the page numbers, then
# one SADD and one HINCRBY for each engine. A born-digital document's pages, counted in
# one call, so cost 2 SADDs and 1 HINCRBY. SADD answers how many members were new: that
# many pages count. `add_members` adds 4000 members a call at most (Lua's `unpack` limit).
COUNT_PAGES_LUA = """
local function add_members(set, members)
  local added = 0
  for i = 1, #members, 4000 do
    added = added + redis.call('SADD', set, unpack(members, i, math.min(i + 3999, #members)))
  end
  return added
end

local function count_pages(set, day, month, held, client, job, set_ttl, ttl, quiet, first,
                           last)
  local engines = day .. ':engines'
  local numbers, read, order = {}, {}, {}
  for i = first, last do
    local number, rest = string.match(ARGV[i], '^([^|]*)(.*)$')
    numbers[#numbers + 1] = number
    for engine in string.gmatch(rest, '|([^|]+)') do
      if read[engine] == nil then
        read[engine] = {}
        order[#order + 1] = engine
      end
      read[engine][#read[engine] + 1] = number .. '|' .. engine
    end
  end
  local n = add_members(set, numbers)
  for _, engine in ipairs(order) do
    local added = add_members(set, read[engine])
    if added > 0 and
        redis.call('HINCRBY', engines, engine .. '|' .. client, added) == added then
      redis.call('EXPIRE', engines, ttl)
    end
  end
  if quiet ~= '1' then redis.call('EXPIRE', set, set_ttl) end
  if n == 0 then return 0, -1 end
  for _, key in ipairs({day, month}) do
    if redis.call('HINCRBY', key, client, n) == n then redis.call('EXPIRE', key, ttl) end
  end
  if quiet == '1' or redis.call('HEXISTS', held, job) == 0 then return n, 0 end
  if redis.call('HINCRBY', held, job, -n) <= 0 then redis.call('HDEL', held, job) end
  return n, 1
end
"""


def page_engines(page: Mapping[str, Any], engine: str) -> tuple[str, ...]:
    """The engines that read `page` (a page's JSON), as its client's usage counts them.

    An escalated page that kept its second reading: the first reading's engine and the
    escalation engine. A page that names no engine: `engine` (the job's) when OCR'd,
    else its source (`text-layer`, `blank`).
    """
    source = str(page.get("source") or "ocr")
    engine = str(page.get("engine") or (engine if source == "ocr" else source))
    escalation = page.get("escalation")
    if isinstance(escalation, Mapping) and escalation.get("error") is None:
        first = str(escalation.get("from") or "")
        if first and first != engine:
            return (first, engine)
    return (engine,)


@dataclass(frozen=True)
class JobPages:
    """Pages of `job` read for `client` on `day`, to count once each (`COUNT_PAGES_LUA`)."""

    client: str
    job: str
    numbers: tuple[int, ...]
    day: dt.date
    engines: tuple[tuple[str, ...], ...] = ()  # each number's engines (`page_engines`)

    def members(self) -> list[str]:
        """Each page as the script takes it: `<number>`, or `<number>|<engine>|...`."""
        return ["|".join((str(n), *self.engines[i])) if i < len(self.engines) else str(n)
                for i, n in enumerate(self.numbers)]

    def keys(self) -> list[str]:
        """The job's counted pages, the day's and the month's counts, the client's holds."""
        return [job_pages_key(self.job), day_key(self.day), month_key(self.day),
                held_key(self.client)]

    def args(self) -> list[str | int]:
        """The client, the job, the TTLs of its counted pages and of the counts, `quiet`."""
        return [self.client, self.job, JOB_PAGES_TTL, USAGE_TTL,
                int(quiet_jobs.knows(self.job))]


class QuietJobs:
    """Jobs this process counted pages of lately with no hold found (thread-safe)."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}  # job -> when its first count found no hold
        self._lock = threading.Lock()

    def knows(self, job: str) -> bool:
        with self._lock:
            since = self._since.get(job)
        return since is not None and time.monotonic() - since < QUIET_SECONDS

    def forget(self) -> None:
        """After a failed write (Redis may have restarted without its data): none known."""
        with self._lock:
            self._since.clear()

    def counted(self, job: str, hold: int) -> None:
        """What a count of `job`'s pages found of its hold (`COUNT_PAGES_LUA`'s)."""
        if hold != 0:
            return
        with self._lock:
            if job in self._since:
                return
            if len(self._since) >= QUIET_KEPT:
                self._since.clear()
            self._since[job] = time.monotonic()


quiet_jobs = QuietJobs()
