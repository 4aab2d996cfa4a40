"""Bytes a client of the HTTP API may have stored in Redis (OCR_API_CLIENT_MAX_BYTES).

Runs in the `api` process. Every key that holds a client's input bytes (an upload
being received, then the job's blob) is a member of the client's set
`ocr:api:bytes:<client>`. What counts against the limit is the client's stored
bytes (tasks/state/stored_bytes.py): those keys' lengths, measured in Redis (STRLEN),
its line corrections' bytes and its jobs' stored results. So a blob that a worker
deleted at the job's end, or that expired, stops counting by itself. The check and
the append are one Lua script: two uploads of one client at the same time cannot both
pass a check that only one of them fits in. Nothing is written when a piece does not fit.
"""

from __future__ import annotations

import redis

from tasks.state import lua
from tasks.state.keys import api_bytes_key, corrections_bytes_key
from tasks.state.stored_bytes import STORED, results_keys, stored_now

# KEYS[1]: the client's set; KEYS[2]: the key to append to; KEYS[3]: its corrections'
# bytes; KEYS[4], KEYS[5]: its results' count. ARGV: data, limit (0: no limit), TTL.
# Returns the bytes stored after the append, or -1 (nothing written).
# Members are listed in the set, not in KEYS: one Redis, never a cluster.
_APPEND = lua.Script(STORED + """
local total = stored(KEYS[1], KEYS[3], KEYS[2], KEYS[4], KEYS[5])
local limit = tonumber(ARGV[2])
if limit > 0 and total + string.len(ARGV[1]) > limit then
  return -1
end
redis.call('APPEND', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[1], KEYS[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return total + string.len(ARGV[1])
""")

# KEYS[1]: the client's set, KEYS[2]: the upload, KEYS[3]: the blob it becomes. ARGV: TTL.
# The set gets its TTL again: removing the upload may have emptied (deleted) it, and the
# SADD would then make it anew without one, never to expire.
_ADOPT = lua.Script("""
redis.call('RENAME', KEYS[2], KEYS[3])
redis.call('SREM', KEYS[1], KEYS[2])
redis.call('SADD', KEYS[1], KEYS[3])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
""")


# KEYS[1]: the client's set, KEYS[2]: an upload that will not become a blob. The set
# goes with its last member (Redis deletes an empty set): a refused request leaves no key.
_DISCARD = lua.Script("""
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], KEYS[2])
return 1
""")


class ClientBytes:
    """Each client's input bytes, checked with its stored bytes against its limit.

    Thread-safe.
    """

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def append(self, name: str, key: str, data: bytes, limit: int) -> bool:
        """Append `data` to `key` if the client stays within `limit` (0: none)."""
        stored = _APPEND.run(self._redis, [api_bytes_key(name), key, corrections_bytes_key(name),
                                           *results_keys(name)], [data, limit, self._ttl])
        return int(stored) >= 0

    def stored(self, name: str) -> int:
        """The client's bytes stored in Redis now: inputs, corrections and results."""
        return stored_now(self._redis, api_bytes_key(name), corrections_bytes_key(name), name)

    def adopt(self, name: str, upload: str, blob: str) -> None:
        """The upload becomes the job's blob (RENAME keeps its TTL); it still counts."""
        _ADOPT.run(self._redis, [api_bytes_key(name), upload, blob], [self._ttl])

    def discard(self, name: str, upload: str) -> None:
        """Delete an upload and its place in the client's set: nothing of it is left."""
        _DISCARD.run(self._redis, [api_bytes_key(name), upload])
