"""The callback outbox: an ending's callbacks, kept in Redis until they are sent.

A job's ending writes its callbacks (its `callback_url` POST, its `callback_task`
message) here in the step that stores its result (tasks/state/job_scripts.py
`CLAIM_END`, or `put` right after a result Celery's backend stores). A batch's ending
writes its own. The sender (tasks/queue/callback_sender.py, in the control worker)
takes each one when it is due, and removes it only once it is sent, refused for good,
or out of retries.

- `ocr:callbacks:<delivery id>`: the delivery (JSON), with the results' TTL; `done`
  once it is sent, refused for good or given up.
- `ocr:callbacks:due`: `<client>/<delivery id>` by when it is due (the server's clock,
  in seconds). A sender that takes one moves it a lease ahead: a sender that dies
  with it leaves it due again once its lease is over.
- `ocr:callbacks:wake`: a doorbell of one entry, rung by each new delivery, that an
  idle sender blocks on.

A delivery's id is its ending's event id (`<job id>.<status>`) and its kind: the
same ending written twice (a failover took the first) is one delivery.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis

from tasks.records.redis_target import RedisTarget
from tasks.state import lua
from tasks.state.boundary import transient_methods
from tasks.state.keys import CALLBACKS_DUE_KEY, CALLBACKS_WAKE_KEY, callback_key
from tasks.state.replicas import hold_kept

HTTP = "http"
TASK = "task"
DONE = "done"  # the record of a delivery sent, refused for good or given up

# New deliveries (records KEYS[3..], texts ARGV[3..]) due now: the due set (KEYS[1]) and
# the doorbell (KEYS[2]) with the TTL ARGV[1]; ARGV[2]: their members, tab-separated. A
# delivery done already (its record `done`) is not written again.
# `WRITE` is the body of this step that job_scripts.CLAIM_END runs too, as a function.
WRITE = """
local function outbox_write(due, wake, ttl, members, first_key, first_arg, n)
  if n == 0 then return end
  local now = redis.call('TIME')[1]
  local i = 0
  for member in string.gmatch(members, '[^\\t]+') do
    if redis.call('GET', KEYS[first_key + i]) ~= 'done' then
      redis.call('SET', KEYS[first_key + i], ARGV[first_arg + i], 'EX', ttl)
      redis.call('ZADD', due, now, member)
    end
    i = i + 1
  end
  redis.call('EXPIRE', due, ttl)
  redis.call('LPUSH', wake, '1')
  redis.call('LTRIM', wake, 0, 0)
  redis.call('EXPIRE', wake, ttl)
end
"""
_PUT = lua.Script(WRITE + """
outbox_write(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 3, 3, #KEYS - 2)
""")

# Up to ARGV[1] members due now (KEYS[1]), and the next due time after them ('' none).
_DUE = lua.Script("""
local now = tonumber(redis.call('TIME')[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
local next = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES',
                        'LIMIT', 0, 1)
return {due, next[2] or '', tostring(now)}
""")

# Take member ARGV[1] (record KEYS[2]) if it is due now: it moves ARGV[2] s ahead (its
# lease) and its record is the answer. A member without a record is dropped.
_TAKE = lua.Script("""
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return false end
local now = tonumber(redis.call('TIME')[1])
if tonumber(score) > now then return false end
local record = redis.call('GET', KEYS[2])
if not record or record == 'done' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return false
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return record
""")

# Due again in ARGV[2] s (member ARGV[1]), its record KEYS[2] := ARGV[3], its TTL kept;
# the doorbell (KEYS[3], TTL ARGV[4]) rung, so that a sender waits for it no longer than that.
_LATER = lua.Script("""
if redis.call('SET', KEYS[2], ARGV[3], 'XX', 'KEEPTTL') then
  local now = tonumber(redis.call('TIME')[1])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('LPUSH', KEYS[3], '1')
  redis.call('LTRIM', KEYS[3], 0, 0)
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
""")


@dataclass(frozen=True)
class Delivery:
    """One callback of an ending: a POST of `body` to a URL, or a Celery task message.

    `target`: the URL, or the task's name. `owner` signs a POST (tasks/lifecycle/
    callbacks.py `signing_secrets`). `job_id`: whose result records how the POST went
    ("" for a batch's). `client`: whose share of the sender it takes.
    `attempts`: the tries that failed so far; `first`: when it was written (epoch s).
    """

    id: str
    kind: str
    target: str
    body: dict[str, Any]
    owner: str = ""
    job_id: str = ""
    client: str = ""
    queue: str | None = None
    attempts: int = 0
    first: float = 0.0
    traceparent: str = ""  # the ending's span: the send is traced below it

    @property
    def member(self) -> str:
        """Its member in the due set: `<client>/<id>` (a client's name has no `/`)."""
        return f"{self.client}/{self.id}"

    @property
    def key(self) -> str:
        return callback_key(self.id)

    def text(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    def failed_once(self) -> Delivery:
        return replace(self, attempts=self.attempts + 1)

    @classmethod
    def from_text(cls, text: str | bytes) -> Delivery:
        return cls(**json.loads(text))


def client_of(member: str) -> str:
    """The client a due set's member counts against."""
    return member.partition("/")[0]


def write_parts(deliveries: list[Delivery], ttl: int) -> tuple[list[str], list[str]]:
    """The keys and arguments `WRITE` takes for `deliveries`, for a script of its own.

    Keys: the due set, the doorbell, then each record. Arguments: the TTL, the members
    (tab-separated), then each record's text.
    """
    keys = [CALLBACKS_DUE_KEY, CALLBACKS_WAKE_KEY, *(d.key for d in deliveries)]
    args = [str(max(1, int(ttl))), "\t".join(d.member for d in deliveries),
            *(d.text() for d in deliveries)]
    return keys, args


@transient_methods("the callback outbox (Redis)")
class CallbackOutbox:
    """The outbox's Redis keys: deliveries written, taken when due, and removed."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self.ttl = ttl

    def put(self, deliveries: list[Delivery]) -> None:
        """Write `deliveries`, due now, in one step (a result stored without the claim's)."""
        if deliveries:
            keys, args = write_parts(deliveries, self.ttl)
            _PUT.run(self._redis, keys, args)

    def due(self, limit: int) -> tuple[list[str], float | None]:
        """Up to `limit` members due now, and in how many seconds the next one is due."""
        members, after, now = _DUE.run(self._redis, [CALLBACKS_DUE_KEY], [limit])
        wait = float(after) - float(now) if after else None
        return [_text(m) for m in members], wait

    def take(self, member: str, lease: float) -> Delivery | None:
        """The delivery of `member`, held `lease` s, if it is still due; else None."""
        record = _TAKE.run(self._redis, [CALLBACKS_DUE_KEY, callback_key(
            member.partition("/")[2])], [member, int(lease) + 1])
        return None if record is None else Delivery.from_text(record)

    def later(self, delivery: Delivery, seconds: float) -> None:
        """`delivery` (its count of tries moved on) due again in `seconds`."""
        _LATER.run(self._redis, [CALLBACKS_DUE_KEY, delivery.key, CALLBACKS_WAKE_KEY],
                   [delivery.member, max(1, round(seconds)), delivery.text(),
                    max(1, int(self.ttl))])

    def done(self, delivery: Delivery) -> None:
        """Remove a delivery that is sent, refused for good, or out of retries.

        Its record becomes `done` for the rest of its TTL: the same ending written again
        (its job's redelivery finishing an ending a killed host left) sends nothing
        twice. The doorbell rings: a sender whose due deliveries wait for a thread
        takes them.
        """
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(CALLBACKS_DUE_KEY, delivery.member)
        pipe.set(delivery.key, DONE, xx=True, keepttl=True)
        pipe.lpush(CALLBACKS_WAKE_KEY, "1")
        pipe.ltrim(CALLBACKS_WAKE_KEY, 0, 0)
        pipe.expire(CALLBACKS_WAKE_KEY, max(1, int(self.ttl)))
        pipe.execute()

    def keep(self, delivery: Delivery, target: RedisTarget) -> bool:
        """Hold until `delivery` (and the ending written with it) is on Redis's replicas.

        True at once without replicas to wait for; False when they lag; `PrimaryReplaced`
        when a failover took it (tasks/state/replicas.py `hold_kept`).
        """
        return hold_kept(self._redis, delivery.key, target, target.replica_timeout)

    def waiting(self) -> list[Delivery]:
        """Every delivery not yet removed (taken or not), by id."""
        members = self._redis.zrange(CALLBACKS_DUE_KEY, 0, -1)
        ids = sorted(_text(m).partition("/")[2] for m in members
                     if isinstance(m, (bytes, str)))
        texts = self._redis.mget([callback_key(i) for i in ids]) if ids else []
        return [Delivery.from_text(t) for t in texts if t not in (None, DONE.encode())]

    def wait(self, timeout: float) -> None:
        """Block up to `timeout` s on the doorbell (rung by each new delivery)."""
        self._redis.blpop([CALLBACKS_WAKE_KEY], timeout=max(0.05, timeout))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
