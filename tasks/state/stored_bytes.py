"""What an HTTP API client stores in Redis, summed against its bytes quota (`--max-bytes`).

Three parts count, summed by the one Lua function `STORED` that every check of the
quota starts with: the upload scripts (tasks/api/_quotas.py), the corrections' write
(tasks/state/corrections.py) and the check before a job is sent (`check_stored`: the
API's jobs and retries, an API batch's documents, which wait for room).

- Its inputs waiting: each key in the set `ocr:api:bytes:<client>` counts its length
  (STRLEN). A blob a worker deleted at its job's end, or that expired, stops counting
  by itself.
- Its line corrections: `ocr:corrections:<client>:bytes`, the length of every record
  its corrections keep (each line's, each corrected page's). The script that writes a
  record adds the change in its length, in the same step.
- Its jobs' stored results: each ended job adds what its result keeps in Redis
  (`StoredResults.count`, by the worker that ended it): its result record, its
  cancel's record, its stored file (PDF, hOCR, ALTO), measured there (STRLEN). A cache
  hit stores no copy, but it keeps its source's result and file alive as long as its
  own (tasks/state/stores.py): it counts them too, as a read of the document would.
  So a client's count never depends on what another client sent. Each job is a member
  `<bytes>:<job id>` of the sorted set `ocr:api:results:<client>`, scored by when its
  result expires, and the sum is kept in `ocr:api:results:<client>:bytes`; `STORED`
  takes out those past their end.

A write that would take the sum past the limit is refused, nothing of it written,
with `over_quota`; so is a job sent while the sum is past it.
"""

from __future__ import annotations

import redis

from tasks.errors import QuotaExceeded
from tasks.state import lua
from tasks.state.boundary import transient_methods
from tasks.state.keys import (
    api_bytes_key,
    api_results_bytes_key,
    api_results_key,
    corrections_bytes_key,
    job_cancelled_key,
    output_key,
    result_key,
)

RETRY_AFTER = "30"  # seconds: inputs end with their jobs, and free room

# stored(inputs, corrections, appending, results, held): the client's bytes stored now.
# An input member of length 0 is gone and leaves the set, unless it is `appending`
# (the key a script is about to append to). The results past their end leave
# `results` and their bytes leave `held`.
STORED = """
local function stored(inputs, corrections, appending, results, held)
  local total = tonumber(redis.call('GET', corrections) or '0')
  for _, member in ipairs(redis.call('SMEMBERS', inputs)) do
    local size = redis.call('STRLEN', member)
    if size == 0 and member ~= appending then
      redis.call('SREM', inputs, member)
    end
    total = total + size
  end
  local now = redis.call('TIME')[1]
  local ended = redis.call('ZRANGEBYSCORE', results, '-inf', now)
  local kept = tonumber(redis.call('GET', held) or '0')
  if #ended > 0 then
    for _, member in ipairs(ended) do
      kept = kept - tonumber(string.match(member, '^(%d+):'))
    end
    redis.call('ZREMRANGEBYSCORE', results, '-inf', now)
    if kept <= 0 or redis.call('EXISTS', results) == 0 then
      kept = 0
      redis.call('DEL', held)
    else
      redis.call('SET', held, kept, 'KEEPTTL')
    end
  end
  return total + kept
end
"""

# KEYS: 1 the client's results, 2 their bytes, 3... the keys the job's result keeps.
# ARGV: 1 the job's id, 2 the results' TTL. Returns the bytes counted.
_COUNT = lua.Script("""
local size = 0
for i = 3, #KEYS do
  size = size + redis.call('STRLEN', KEYS[i])
end
local ends = tonumber(redis.call('TIME')[1]) + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], ends, size .. ':' .. ARGV[1])
redis.call('INCRBY', KEYS[2], size)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return size
""")

# KEYS: 1 the inputs' set, 2 the results, 3 their bytes; ARGV: 1 the corrections' bytes,
# only read here: Redis asks read and write access of a script's KEYS, and the control
# worker's batch driver, which runs this, may read a client's corrections, not write them.
_USAGE = lua.Script(STORED + """
return stored(KEYS[1], ARGV[1], '', KEYS[2], KEYS[3])
""")


def results_keys(client: str) -> list[str]:
    """The keys of `client`'s results count: `STORED`'s `results` and `held`."""
    return [api_results_key(client), api_results_bytes_key(client)]


@transient_methods("the stored results' count (Redis)")
class StoredResults:
    """Each API client's stored results, counted as its jobs end (worker processes)."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def count(self, client: str, job_id: str, source: str = "") -> int:
        """Add what job `job_id`'s result keeps in Redis; a cache hit's `source`'s too."""
        kept = [result_key(job_id), job_cancelled_key(job_id), output_key(job_id)]
        if source:
            kept += [result_key(source), output_key(source)]
        return int(_COUNT.run(self._redis, [*results_keys(client), *kept],
                              [job_id, self._ttl]))


def stored_now(client: redis.Redis, inputs: str, corrections: str, name: str) -> int:
    """Client `name`'s bytes stored now (its inputs' set and corrections' bytes keys)."""
    return int(_USAGE.run(client, [inputs, *results_keys(name)], [corrections]))


def check_stored(client: redis.Redis, name: str, limit: int) -> None:
    """`over_quota` while client `name`'s stored bytes are past `limit` (0: none)."""
    if limit and stored_now(client, api_bytes_key(name), corrections_bytes_key(name),
                            name) > limit:
        raise over_quota(limit)


def over_quota(limit: int) -> QuotaExceeded:
    """The refusal of a write that would take the client past `limit` bytes (429)."""
    return QuotaExceeded(f"the client's bytes stored in Redis (inputs waiting, line "
                         f"corrections and its jobs' results) would pass its quota of "
                         f"{limit} bytes (--max-bytes, OCR_API_CLIENT_MAX_BYTES); "
                         "nothing was stored", headers={"Retry-After": RETRY_AFTER})
