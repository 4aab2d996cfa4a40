"""Bytes a client of the HTTP API may have waiting in Redis (OCR_API_CLIENT_MAX_BYTES).

Runs in the `api` process. Every key that holds a client's input bytes (an upload
being received, then the job's blob) is a member of the client's set
`ocr:api:bytes:<client>`; what the client has waiting is the sum of those keys'
lengths, measured in Redis (STRLEN), so a blob that a worker deleted at the job's end,
or that expired, stops counting by itself. The check and the append are one Lua
script: two uploads of one client at the same time cannot both pass a check that only
one of them fits in. Nothing is written when a piece does not fit.
"""

from __future__ import annotations

from typing import Any

import redis

from tasks.state.keys import api_bytes_key

# KEYS[1]: the client's set; KEYS[2]: the key to append to. ARGV: data, limit (0: no
# limit), TTL. Returns the bytes waiting after the append, or -1 (nothing written).
# Members are listed in the set, not in KEYS: one Redis, never a cluster.
_APPEND = """
local total = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local size = redis.call('STRLEN', member)
  if size == 0 and member ~= KEYS[2] then
    redis.call('SREM', KEYS[1], member)
  end
  total = total + size
end
local limit = tonumber(ARGV[2])
if limit > 0 and total + string.len(ARGV[1]) > limit then
  return -1
end
redis.call('APPEND', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[1], KEYS[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return total + string.len(ARGV[1])
"""

# KEYS[1]: the client's set. Returns the bytes waiting (and drops members gone).
_USAGE = """
local total = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local size = redis.call('STRLEN', member)
  if size == 0 then
    redis.call('SREM', KEYS[1], member)
  end
  total = total + size
end
return total
"""

# KEYS[1]: the client's set, KEYS[2]: the upload, KEYS[3]: the blob it becomes. ARGV: TTL.
# The set gets its TTL again: removing the upload may have emptied (deleted) it, and the
# SADD would then make it anew without one, never to expire.
_ADOPT = """
redis.call('RENAME', KEYS[2], KEYS[3])
redis.call('SREM', KEYS[1], KEYS[2])
redis.call('SADD', KEYS[1], KEYS[3])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


# KEYS[1]: the client's set, KEYS[2]: an upload that will not become a blob. The set
# goes with its last member (Redis deletes an empty set): a refused request leaves no key.
_DISCARD = """
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], KEYS[2])
return 1
"""


class ClientBytes:
    """Each client's waiting input bytes, checked against its limit (thread-safe)."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl
        self._append: Any = client.register_script(_APPEND)
        self._usage: Any = client.register_script(_USAGE)
        self._adopt: Any = client.register_script(_ADOPT)
        self._discard: Any = client.register_script(_DISCARD)

    def append(self, name: str, key: str, data: bytes, limit: int) -> bool:
        """Append `data` to `key` if the client stays within `limit` (0: none)."""
        waiting = self._append(keys=[api_bytes_key(name), key],
                               args=[data, limit, self._ttl])
        return int(waiting) >= 0

    def waiting(self, name: str) -> int:
        """The bytes of the client's inputs stored in Redis now."""
        return int(self._usage(keys=[api_bytes_key(name)]))

    def adopt(self, name: str, upload: str, blob: str) -> None:
        """The upload becomes the job's blob (RENAME keeps its TTL); it still counts."""
        self._adopt(keys=[api_bytes_key(name), upload, blob], args=[self._ttl])

    def discard(self, name: str, upload: str) -> None:
        """Delete an upload and its place in the client's set: nothing of it is left."""
        self._discard(keys=[api_bytes_key(name), upload])
