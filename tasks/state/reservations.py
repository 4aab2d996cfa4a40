"""A job's reservation: its queue, its priority, its place in flight and its page hold.

Runs where jobs are admitted: client processes (the HTTP API, submit.py, `OcrClient`)
and the workers' batch driver. The gate (tasks/admission.py:admit) takes a job's
reservation; the sender (tasks/queue/sender.py) commits it once the job is sent, or
releases it when the send fails. The worker settles the job's page hold once its page
count is known (`settle`): the same script holds that count, or refuses it.

Two things are taken for a job of the service's doors, by one Lua script:

- its place among the client's jobs in flight (`ocr:api:inflight:<client>`, owned by
  tasks/state/client_rules.py), refused (`quota_exceeded`) when `limit` others are
  unfinished;
- its fewest pages held against the client's page caps (`ocr:usage:held:<client>`,
  owned by tasks/state/usage.py), refused (`page_quota_exceeded`) past a cap.

The script takes both or neither. When it refuses, the places and holds of jobs that
no longer count leave, and it runs once more. A client door without the service's
books takes neither: its reservation holds the queue and the priority alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from tasks.errors import PageQuotaExceeded, QuotaExceeded
from tasks.records.jobs import Reservation
from tasks.state import lua
from tasks.state.client_rules import IN_FLIGHT_LUA, InFlight
from tasks.state.keys import api_inflight_key
from tasks.state.usage import HOLD_TTL, PAGE_HOLD_LUA, PageCaps, PageUsage, over_cap, today
from tasks.state.usage_counts import day_key, held_key, month_key

# KEYS[1]: the client's jobs in flight; KEYS[2]: its page holds. ARGV: the client, the
# job, its time, the limit (-1: no place taken, 0: no limit), the set's TTL, the pages
# (0: no hold), the day's cap, the month's (0: none), the holds' TTL, the day's counts,
# the month's. Returns {'', 0} when both are taken; else nothing is written and it
# returns {'jobs', 0} or the cap passed, {period, used}.
_RESERVE = lua.Script(IN_FLIGHT_LUA + PAGE_HOLD_LUA + """
local limit, pages = tonumber(ARGV[4]), tonumber(ARGV[6])
if pages > 0 then
  local full = page_room(KEYS[2], ARGV[1], ARGV[2], pages, tonumber(ARGV[7]),
                         tonumber(ARGV[8]), ARGV[10], ARGV[11])
  if full then return full end
end
if limit >= 0 and not in_flight_room(KEYS[1], ARGV[2], limit) then return {'jobs', 0} end
if pages > 0 then page_hold(KEYS[2], ARGV[2], pages, ARGV[9]) end
if limit >= 0 then in_flight_add(KEYS[1], ARGV[2], ARGV[3], ARGV[5]) end
return {'', 0}
""")


class Reservations:
    """Takes, commits and releases reservations (thread-safe: Redis calls)."""

    def __init__(self, client: redis.Redis, ttl: int,
                 ended: Callable[[list[str]], list[str]]) -> None:
        """`ttl`: the jobs-in-flight set's; `ended`: which jobs' states are final."""
        self._redis = client
        self.in_flight = InFlight(client, ttl)
        self.usage = PageUsage(client)
        self.ended = ended

    def take(self, job_id: str, client: str, queue: str, priority: str, *,
             limit: int | None = None, caps: PageCaps | None = None, pages: int = 1,
             at: float | None = None, now: float | None = None,
             engine: str | None = None) -> Reservation:
        """Take the job's place and page hold in one script; its reservation.

        `limit`: count it among the client's jobs in flight, refused when `limit` (0:
        none) are unfinished (None: no place taken). `caps`: hold its `pages` against
        them (None or no cap: no hold), and refuse them past the cap a day of the
        `engine` it names (`engine_room`). QuotaExceeded, PageQuotaExceeded: nothing
        taken.
        """
        if caps is not None and engine:
            self.engine_room(client, engine, pages, caps, now)
        held = pages if caps is not None and caps.any else 0
        if limit is None and not held:
            return Reservation(job_id, client, queue, priority)
        caps = caps or PageCaps()
        day = today(now)
        keys = [api_inflight_key(client), held_key(client)]
        args = [client, job_id, at or round(time.time(), 3), -1 if limit is None else limit,
                self.in_flight.ttl, held, caps.pages_per_day or 0,
                caps.pages_per_month or 0, HOLD_TTL, day_key(day), month_key(day)]
        settled: set[str] = set()
        while True:
            period, used = self._script(keys, args)
            if not period:
                return Reservation(job_id, client, queue, priority,
                                   in_flight=limit is not None, pages=held)
            which = _text(period)
            if which in settled or not self._settle(which, client, job_id):
                break
            settled.add(which)
        if which == "jobs":
            raise over_in_flight(int(limit or 0))
        cap = caps.pages_per_day if which == "day" else caps.pages_per_month
        raise over_cap(which, int(cap or 0), int(used), held, day, now)

    def engine_room(self, client: str, engine: str, pages: int, caps: PageCaps,
                    now: float | None = None) -> None:
        """Refuse (PageQuotaExceeded) `pages` more read by `engine` past its cap a day.

        The cap is the client's `engine_pages_per_day` for that engine; the pages it
        read today are usage's count by engine. A job naming the engine is refused at
        the door; an escalated page keeps its first reading (`PageTasks.refusal`).
        No hold: jobs and pages sent at the same moment may pass the cap by their own.
        """
        cap = caps.engine_cap(engine)
        if not cap:
            return
        used = self.usage.engine_used(client, engine, now)
        if used + pages > cap:
            raise over_cap("day", cap, used, pages, today(now), now, engine=engine)

    def settle(self, job_id: str, client: str, pages: int, now: float | None = None,
               engine: str | None = None) -> None:
        """The job's page count, once known (the worker's): its hold becomes `pages`.

        PageQuotaExceeded when they pass a cap, with the pages read and the other
        jobs' holds, or the cap a day of the `engine` that reads them. The caps as this
        process read them at most CAPS_SECONDS ago, and read again before a refusal
        (`PageUsage.known_caps`).
        """
        try:
            self.take(job_id, client, "", "", caps=self.usage.known_caps(client),
                      pages=pages, now=now, engine=engine)
        except PageQuotaExceeded:  # read again: the cap may be raised since
            self.take(job_id, client, "", "", caps=self.usage.known_caps(client, True),
                      pages=pages, now=now, engine=engine)

    def _script(self, keys: list[str], args: list[object]) -> tuple[bytes | str, int]:
        period, used = _RESERVE.run(self._redis, keys, args)
        return period, int(used)

    def _settle(self, which: str, client: str, job_id: str) -> bool:
        """Free what no longer counts of what refused the job; whether any was freed."""
        if which == "jobs":
            return bool(self.in_flight.settle(client, self.in_flight.places(client),
                                              self.ended))
        gone = self.ended([j for j in self.usage.holders(client) if j != job_id])
        self.usage.release(client, *gone)
        return bool(gone)

    def commit(self, reservation: Reservation) -> None:
        """The job was sent: its place and hold stay until its ending settles them."""
        reservation.committed = True

    def release(self, reservation: Reservation) -> None:
        """The job was not sent: its place and hold go (none once it is committed)."""
        if reservation.committed:
            return
        try:
            if reservation.in_flight:
                self.in_flight.remove(reservation.client, reservation.job_id)
            if reservation.pages:
                self.usage.release(reservation.client, reservation.job_id)
        except redis.RedisError:
            pass  # Redis went away: both are freed when a reservation finds them ended


def over_in_flight(limit: int) -> QuotaExceeded:
    """The refusal of a job past the client's `limit` jobs in flight (429 at the API)."""
    return QuotaExceeded(f"{limit} jobs are unfinished (the client's jobs-in-flight "
                         "quota; batch documents count)", headers={"Retry-After": "5"})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
