"""The Lua steps of a job's control record and end claim, each one atomic round trip.

Loaded by every process that uses `tasks.state.job_control.JobControl` (clients, the
`api` process, worker pool children and parents, the control worker), which alone
calls them. The claim `ocr:job:<id>:ended` names its holder (`<host>:<pid>`) while an
ending runs, and `done` (`ENDING_DONE`) once it is finished.
"""

from __future__ import annotations

from tasks.state import callback_outbox, lua

TAKE_OVER_END = lua.Script("""
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
""")

# A job's start: its end claim (KEYS[1]) and cancel mark (KEYS[2], the job's hash:
# ARGV[4..] the fields read with it); unless it ended or is cancelled, its STARTED record
# stored (KEYS[3] := ARGV[1], TTL ARGV[2]; ARGV[1] '': none) and its input read (KEYS[4]:
# its first ARGV[3] + 1 bytes; ARGV[3] '': none), only where the job's own record names
# that blob (field `blob`, written by its sender) and it exists. A key not used is the
# job's hash again.
AT_START = lua.Script("""
local ended = redis.call('EXISTS', KEYS[1])
local fields = redis.call('HMGET', KEYS[2], unpack(ARGV, 4))
local input = false
if ended == 0 and not fields[1] then
  if ARGV[1] ~= '' then
    if ARGV[2] == '' then redis.call('SET', KEYS[3], ARGV[1])
    else redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2]) end
  end
  if ARGV[3] ~= '' and redis.call('HGET', KEYS[2], 'blob') == KEYS[4]
      and redis.call('EXISTS', KEYS[4]) == 1 then
    input = redis.call('GETRANGE', KEYS[4], 0, ARGV[3])
  end
end
return {ended, input, unpack(fields)}
""")

# The end claim (KEYS[1] := holder ARGV[1], NX, TTL ARGV[2]) with the result record
# (KEYS[2] := ARGV[3], TTL ARGV[4], published on its key, then ARGV[14] on channel
# ARGV[13] unless '': the ending's event for monitors), the job's summary (KEYS[5] :=
# ARGV[15] unless '', TTL ARGV[2]) and its ARGV[10] callbacks (callback_outbox.WRITE:
# the due set KEYS[6], the doorbell KEYS[7], the records KEYS[8..], texts ARGV[16..],
# members ARGV[12], TTL ARGV[11]); with a status (ARGV[5]) the ending done as well: the
# keys after the records freed, the job (ARGV[9]; '': none) out of its client's jobs in
# flight (KEYS[4]), the claim marked done (ARGV[6]) and the notice (KEYS[3], field
# ARGV[7], TTL ARGV[8]) written, as mark_ended does.
CLAIM_END = lua.Script(callback_outbox.WRITE + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
if ARGV[4] == '' then redis.call('SET', KEYS[2], ARGV[3])
else redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4]) end
if ARGV[15] ~= '' then redis.call('SET', KEYS[5], ARGV[15], 'EX', ARGV[2]) end
redis.call('PUBLISH', KEYS[2], ARGV[3])
if ARGV[13] ~= '' then redis.call('PUBLISH', ARGV[13], ARGV[14]) end
local callbacks = tonumber(ARGV[10])
outbox_write(KEYS[6], KEYS[7], ARGV[11], ARGV[12], 8, 16, callbacks)
if ARGV[5] ~= '' then
  if #KEYS > 7 + callbacks then redis.call('DEL', unpack(KEYS, 8 + callbacks)) end
  if ARGV[9] ~= '' then redis.call('ZREM', KEYS[4], ARGV[9]) end
  redis.call('SET', KEYS[1], ARGV[6], 'XX', 'KEEPTTL')
  redis.call('XADD', KEYS[3], 'MAXLEN', '1', '*', ARGV[7], ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[8])
end
return 1
""")

RELEASE_END = lua.Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
""")

SET_PROGRESS_UNLESS_ENDED = lua.Script("""
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('set', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('hset', KEYS[3], 'total', ARGV[3])
return 1
""")


# The ending done (KEYS[1], the claim, still naming its holder ARGV[1]): the job's
# summary (KEYS[4] := ARGV[7], TTL ARGV[5]; '': none) written, the keys KEYS[5..]
# freed, the job (ARGV[6]; '': none) out of its client's jobs in flight (KEYS[3]), the
# claim marked done (ARGV[2], its TTL kept) and, with a status (ARGV[3]), the notice
# (KEYS[2], field ARGV[4], TTL ARGV[5]) written. 1: done; 0: no
# claim on this server (its step was lost with a failover), nothing written; -1: the
# claim names another holder, nothing written.
# (The claim is set and read in one command; another holder's is put back.)
MARK_ENDED = lua.Script("""
local claim = redis.call('SET', KEYS[1], ARGV[2], 'XX', 'KEEPTTL', 'GET')
if not claim then return 0 end
if claim ~= ARGV[1] then
  redis.call('SET', KEYS[1], claim, 'KEEPTTL')
  return -1
end
if ARGV[7] ~= '' then redis.call('SET', KEYS[4], ARGV[7], 'EX', ARGV[5]) end
if #KEYS > 4 then redis.call('DEL', unpack(KEYS, 5)) end
if ARGV[6] ~= '' then redis.call('ZREM', KEYS[3], ARGV[6]) end
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '1', '*', ARGV[4], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
return 1
""")
