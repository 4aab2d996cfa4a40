"""What an HTTP API client stores in Redis, summed against its bytes quota (`--max-bytes`).

Runs in the `api` process. Two parts count, summed by the one Lua function `STORED`
that every check of the quota starts with: the upload scripts (tasks/api/_quotas.py)
and the corrections' write (tasks/state/corrections.py).

- Its inputs waiting: each key in the set `ocr:api:bytes:<client>` counts its length
  (STRLEN). A blob a worker deleted at its job's end, or that expired, stops counting
  by itself.
- Its line corrections: `ocr:corrections:<client>:bytes`, the length of every record
  its corrections keep (each line's, each corrected page's). The script that writes a
  record adds the change in its length, in the same step.

A write that would take the sum past the limit is refused, nothing of it written,
with `over_quota`.
"""

from __future__ import annotations

from tasks.errors import QuotaExceeded

RETRY_AFTER = "30"  # seconds: inputs end with their jobs, and free room

# stored(inputs, corrections, appending): the client's bytes stored now. An input
# member of length 0 is gone and leaves the set, unless it is `appending` (the key a
# script is about to append to).
STORED = """
local function stored(inputs, corrections, appending)
  local total = tonumber(redis.call('GET', corrections) or '0')
  for _, member in ipairs(redis.call('SMEMBERS', inputs)) do
    local size = redis.call('STRLEN', member)
    if size == 0 and member ~= appending then
      redis.call('SREM', inputs, member)
    end
    total = total + size
  end
  return total
end
"""


def over_quota(limit: int) -> QuotaExceeded:
    """The refusal of a write that would take the client past `limit` bytes (429)."""
    return QuotaExceeded(f"the client's bytes stored in Redis (inputs waiting and line "
                         f"corrections) would pass its quota of {limit} bytes "
                         "(--max-bytes, OCR_API_CLIENT_MAX_BYTES); nothing was stored",
                         headers={"Retry-After": RETRY_AFTER})
