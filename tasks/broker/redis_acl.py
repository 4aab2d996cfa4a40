"""The Redis users of the service: one per role, each with only the commands and keys it uses.

The one definition of who may do what in Redis. The Kubernetes kit's and compose's
Redis write it into their configuration as they start (`python -m scripts.redis_acl`,
which reads each user's password from `REDIS_PASSWORD_<USER>`); an operator of a managed
Redis applies the same lines; tests/deploy/test_redis_acl.py runs every role against a
redis-server holding exactly these users and finds nothing refused, and a command outside
a user's set refused. Every process then names its own user in REDIS_URL
(`rediss://worker:PASSWORD@ocr-redis:6379/0?...`), and the `default` user is off.

What each user holds was read from the code and from every role's traffic (the commands
each one sent through a real run, MONITOR per role): this project's transport
(tasks/broker/transport.py, on the lists and bindings kombu's clients use), Celery's
result backend, the Lua scripts of tasks/broker/lanes.py, tasks/state/join.py,
stores.py, metrics/queue_depth.py and tasks/api/_quotas.py (Redis checks every command a script
calls against the caller's user, keys included), Flower and the metrics exporter. Redis
keys outside `ocr:` are Celery's and kombu's own: the queues' lists, bindings, the
unacknowledged messages, the results. To extend a user, add the command or the key
pattern to its entry below: both kits and the test read this module. Key patterns are
Redis globs: `~` read and write, `%R~` read only; `&` channels (a PSUBSCRIBE pattern
must equal one of them).

Runs in the Redis container's start-up (scripts/redis_acl.py) and in the tests; pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from tasks.broker import layout, stored_layout

# Celery's channels carry the database number: the kit's Redis database is 0.
DB = 0

# Every user: authenticate (AUTH, HELLO, the client library's CLIENT SETNAME on
# connect), choose the database, health checks. redis-py also sends CLIENT SETINFO, a
# subcommand from Redis 7.2 on (7.0 refuses its name in a rule): SETINFO_SINCE.
CONNECTION = ("auth", "hello", "select", "ping", "quit", "client|setname", "client|getname",
              "client|id")
SETINFO_SINCE = (7, 2)

# Keys of the Celery broker (the lists and bindings every kombu client uses) and result backend.
QUEUES = ("ocr", "ocr[^:]*")          # task queues: ocr, ocr-<engine>, ocr-control,
#   ocr-batch-steps, and each one's priority lists (`ocr\x06\x163`, ...)
DIRECT = ("*.dq2*",)                  # each worker's own queue (worker_direct)
PIDBOX = ("*.celery.pidbox*",)        # remote control: a node's mailbox, replies
BINDINGS = ("_kombu.*",)              # exchange -> queue tables and their deadlines
# Layouts 1 and 2's keys (tasks/broker/stored_layout.py names them): no process of this
# release writes them (a worker's start asks whether one exists; `ocr_admin.py
# migrate-broker`, as admin, moves them), but the release before still names them (its
# declares count the old rings, its workers and Flower wait on the old doorbells, its
# Node client rings them, its restores and depth read the old held records), so its
# processes run under these users during a rollout.
OLD_HELD = (stored_layout.HELD_KEY, stored_layout.UNACKED_KEY,
            stored_layout.UNACKED_INDEX_KEY, stored_layout.HOLDERS_KEY)
OLD_WAKE = stored_layout.WAKE_PREFIX + "*"
OLD_LANES = (stored_layout.LANE_PREFIX + "*", stored_layout.RINGS_PREFIX + "*")
# delivered, not acknowledged: held in the hash of the list taken from (tasks/broker/
# held.py: a service queue's, a worker's direct queue's), the set of those lists; the
# visibility look's mutex and the lock of the sweep (tasks/broker/holders.py)
HELD = ("{ocr*}:held", "{*.dq2*}:held")
UNACKED = (*HELD, layout.HELD_LISTS_KEY, layout.UNACKED_MUTEX_KEY, layout.SWEEP_LOCK_KEY,
           *OLD_HELD)
RESULTS = ("celery-task-meta-*",)     # Celery's results
WAKE = (layout.queue_wake_key("ocr*"), OLD_WAKE)  # each queue's doorbell (layout.py)
# each client's lane of a queue's list, each list's ring of clients, its turn and
# counts (tasks/broker/lanes.py); the clients' weights, written by the token store
LANES = ("{ocr*}:lane:*", "{ocr*}:ring*", *OLD_LANES)
LANE_WEIGHTS = layout.LANE_WEIGHTS_KEY
DEAD_LETTERS = (layout.DEAD_LETTER_KEY, layout.DEAD_LETTER_COUNT_KEY)
LAYOUT = (layout.LAYOUT_KEY,)         # the key layout's version (a worker's start;
#                                       the release before's publishers read it)
EVENTS = f"/{DB}.celeryev/*"          # task and worker events (Flower reads them)
CONTROL_CHANNEL = f"/{DB}.celery.pidbox"  # remote control broadcasts
RESULT_CHANNEL = "celery-task-meta-*"  # a result as it is stored

# What any Celery app that sends tasks does: push a message to its queue or its client's
# lane and ring its queue's doorbell (a Lua script: LPUSH, HINCRBY, LPOS, RPUSH, PEXPIRE), count
# a queue's messages when it declares it (EXISTS, and where any waits LLEN; its lanes:
# LRANGE), declare the queue's
# binding (a Lua script: SADD, TIME, ZADD), publish the task-sent event, wait for a
# result on its channel, read the result; hold a job until enough replicas have it
# (WAIT, OCR_REDIS_MIN_REPLICAS) and its record with it (PTTL, PEXPIRE); the broker
# transport tells a reconnection to another server (a failover) by the server's run id
# (INFO server: tasks/broker/unsettled.py).
SEND = ("lpush", "lpos", "rpush", "hincrby", "lrange", "llen", "ltrim", "pexpire", "pttl",
        "sadd", "smembers", "zadd", "time", "exists",
        "eval", "evalsha", "script|load", "script|exists", "multi", "exec", "discard",
        "publish", "subscribe", "unsubscribe", "get", "mget", "wait", "info")
# What a consuming worker adds: the atomic fetch (a Lua script: LINDEX, HSET, HDEL,
# RPOP; a client's lanes: LMPOP; the lanes' ring: LRANGE, LPOS, LREM, RPUSH, HINCRBY,
# HDEL; its queues' doorbells: DEL), doorbells (BLPOP),
# acknowledgements and restores (HGET, HDEL, ZREM, WATCH; the visibility timeout's look,
# EXISTS and a Lua script: HGETALL, ZRANGE), the sweep of dead holders' messages (a Lua
# script: SET NX PX, HGETALL, HGET, ZSCORE, RPUSH; ZRANGE, ZSCORE and ZREM the release
# before's, on layout 1's index), the sweep of
# expired queues' bindings (a Lua script: TIME, ZRANGEBYSCORE, SISMEMBER, SREM, ZREM),
# remote control (PSUBSCRIBE), results and job state (an input read to its bound: GETRANGE).
CONSUME = ("rpop", "lmpop", "rpush", "lrem", "lpos", "lindex", "lrange", "blpop", "hset",
           "hsetnx", "hget", "hdel",
           "hgetall", "hmget", "hexists", "hlen", "hkeys", "hincrby", "hincrbyfloat",
           "set", "setex", "del", "unlink", "exists", "expire", "pexpire", "ttl", "incr",
           "incrby", "strlen", "getrange", "srem", "sismember", "zrem", "zrange",
           "zrangebyscore", "zscore",
           "watch", "unwatch", "psubscribe", "punsubscribe", "scan")


@dataclass(frozen=True)
class RedisUser:
    """One role's Redis user: its commands, key patterns and channels."""

    name: str
    role: str            # who logs in with it (docs/security.md, "Redis users")
    commands: tuple[str, ...]
    keys: tuple[str, ...] = ()        # read and write
    read_keys: tuple[str, ...] = ()   # read only
    channels: tuple[str, ...] = ()

    @property
    def password_variable(self) -> str:
        """The environment variable its password comes from: REDIS_PASSWORD_<NAME>."""
        return f"REDIS_PASSWORD_{self.name.upper()}"

    def rules(self, redis_version: tuple[int, int] = (7, 0)) -> list[str]:
        """Its ACL rules, without the password, for a server of `redis_version`."""
        setinfo = ("client|setinfo",) if redis_version >= SETINFO_SINCE else ()
        commands = dict.fromkeys((*CONNECTION, *setinfo, *self.commands))
        return ["resetkeys", "resetchannels", "-@all",
                *(c if c.startswith("-") else f"+{c}" for c in commands),
                *(f"~{k}" for k in self.keys), *(f"%R~{k}" for k in self.read_keys),
                *(f"&{c}" for c in self.channels)]


_JOB_STATE = ("ocr:job:*", "ocr:doc:*", "ocr:blob:*", "ocr:deliveries:*", "ocr:metrics:*",
              "ocr:workers", *DEAD_LETTERS)
_BROKER = (*QUEUES, *DIRECT, *PIDBOX, *BINDINGS, *UNACKED, *RESULTS, *WAKE, *LANES,
           *LAYOUT)
# The job lists (tasks/state/job_index.py): whoever sends a job lists it; a worker lists
# a job another Celery client sent when it starts it.
_JOB_INDEX = ("ocr:jobs:*",)
_LISTING = ("zadd", "zremrangebyscore", "zremrangebyrank", "expire")
# A job's ending notice (tasks/state/job_notices.py): written where a job ends, read by
# whoever waits for it.
_NOTICE_WRITE, _NOTICE_READ = ("xadd",), ("xread",)
# Batches (tasks/state/batch_store.py): the API creates, reads, cancels and retries them;
# the worker or control worker that takes a batch's step drives it, and counts each
# document it sends among its client's jobs in flight (tasks/state/client_rules.py).
_BATCHES = ("ocr:batch:*", "ocr:batches:*")
_IN_FLIGHT = ("ocr:api:inflight:*",)
# ...and records each document of an API client's batch as that client's job
# (tasks/state/api_jobs.py), the record the HTTP API checks a job's owner by.
_API_JOBS = ("ocr:api:job:*",)
# A place among a client's jobs in flight is reserved in one script (ZSCORE, ZCARD,
# ZADD, EXPIRE: tasks/state/client_rules.py) by whoever sends its job, and its pages
# held against the client's caps in another (HVALS, HGET, HSET, EXPIRE; the holds of
# ended jobs dropped: HKEYS, HDEL; tasks/state/usage.py).
_RESERVE = ("zscore", "zcard", "hvals", "hkeys", "hdel")
_PAGE_HOLDS = ("ocr:usage:held:*",)

USERS: tuple[RedisUser, ...] = (
    RedisUser(
        "worker", "the OCR workers (Procfile `worker`, every engine and pool)",
        (*SEND, *CONSUME, *_LISTING, *_NOTICE_WRITE, *_RESERVE),
        keys=(*_BROKER, *_JOB_STATE, *_JOB_INDEX, *_BATCHES, *_IN_FLIGHT, *_API_JOBS,
              "ocr:cache:*", "ocr:output:*", "ocr:models:*", "ocr:usage:*", "ocr:golden:*",
              "ocr:preview:*"),
        # an API client's callbacks are signed with that client's own secret; the
        # token names are the metrics' client labels, its record its page caps
        read_keys=("ocr:api:webhook:*", "ocr:api:clients", LANE_WEIGHTS),
        channels=(EVENTS, CONTROL_CHANNEL, RESULT_CHANNEL)),
    RedisUser(
        "control", "the control worker (Procfile `control`: cancels, HTTP callbacks, batch steps)",
        (*SEND, *CONSUME, *_LISTING, *_NOTICE_WRITE, *_RESERVE),
        keys=(*_BROKER, *_JOB_STATE, *_JOB_INDEX, *_BATCHES, *_IN_FLIGHT, *_API_JOBS,
              "ocr:output:*", *_PAGE_HOLDS),
        # usage: a batch's documents are held to their client's page caps
        read_keys=("ocr:api:webhook:*", "ocr:api:clients", LANE_WEIGHTS, "ocr:usage:*"),
        channels=(EVENTS, CONTROL_CHANNEL, RESULT_CHANNEL)),
    RedisUser(
        "api", "the HTTP API (Procfile `api`)",
        # its upload quota scripts (tasks/api/_quotas.py): APPEND, RENAME, STRLEN, SREM;
        # line corrections (tasks/state/corrections.py): WATCH, HSCAN, and their write
        # script: HSTRLEN, HSET, HDEL, INCRBY, SET
        (*SEND, "append", "rename", "strlen", "srem", "hset", "hget", "hgetall", "hmget",
         "set", "del", "exists", "expire", "incr", "zrem", "zrange", *_LISTING,
         "zrevrangebyscore", "hlen", *_NOTICE_READ, *_RESERVE, "watch", "unwatch", "hdel",
         "hscan", "hstrlen", "incrby"),
        keys=(*QUEUES, *BINDINGS, *WAKE, *LANES, *_JOB_INDEX, *_BATCHES, "ocr:job:*",
              "ocr:blob:*", "ocr:api:job:*", "ocr:api:idem:*", "ocr:api:rate:*",
              "ocr:api:inflight:*", "ocr:api:upload:*", "ocr:api:bytes:*", *_PAGE_HOLDS,
              "ocr:corrections:*", "ocr:api:session:*"),
        read_keys=(*RESULTS, "ocr:api:token:*", "ocr:api:clients", "ocr:doc:*",
                   "ocr:output:*", "ocr:workers", "ocr:usage:*", "ocr:preview:*", *LAYOUT),
        channels=(EVENTS, RESULT_CHANNEL)),
    RedisUser(
        "beat", "beat (Procfile `beat`: sends the scheduled model audit)",
        SEND, keys=(*QUEUES, *BINDINGS, *WAKE, *LANES), read_keys=(*RESULTS, *LAYOUT),
        channels=(EVENTS, RESULT_CHANNEL)),
    RedisUser(
        "flower", "Flower (Procfile `flower`): events, remote control, queue lengths; it "
        "cannot send a task, nor touch a message in flight",
        # events and replies come through a consumer of its own that acknowledges
        # nothing (its fetch names no unacknowledged-message key, it restores none:
        # tasks/broker/fetching.py); remote control is a broadcast
        ("llen", "lindex", "rpop", "blpop", "sadd", "srem", "sismember", "smembers", "zadd",
         "zrem",
         "zrange", "zrangebyscore", "time", "eval", "evalsha", "script|load",
         "script|exists", "multi", "exec", "discard", "get", "set", "del", "exists",
         "hset", "hget", "hdel", "hgetall", "watch", "unwatch", "psubscribe",
         "punsubscribe", "publish", "pexpire", "info"),
        keys=(*PIDBOX, *BINDINGS, "celeryev.*", layout.queue_wake_key("*.celery.pidbox"),
              stored_layout.WAKE_PREFIX + "*.celery.pidbox"),
        read_keys=(*QUEUES, *RESULTS, "ocr:workers", *LAYOUT),
        channels=(EVENTS, CONTROL_CHANNEL)),
    RedisUser(
        "metrics", "the metrics exporter (Procfile `metrics`): reads only",
        # the running count is a read-only Lua script over the held messages' hashes
        # LINDEX: the oldest waiting message (a read-only script); INFO: Redis's memory
        # LRANGE: the lanes of each list's ring (a read-only script)
        ("llen", "lindex", "lrange", "get", "smembers", "hgetall", "hget", "hkeys", "eval_ro",
         "evalsha_ro", "info", "hlen"),
        read_keys=(*QUEUES, *LANES, *BINDINGS, *HELD, layout.HELD_LISTS_KEY,
                   stored_layout.HELD_KEY, stored_layout.UNACKED_KEY,
                   "ocr:metrics:*", "ocr:workers", *DEAD_LETTERS, *_BATCHES,
                   "ocr:golden:*")),
    RedisUser(
        "keda", "KEDA's `redis` trigger, for a ScaledObject that reads a queue's length "
        "itself (the kit's read the exporter)",
        ("llen",), read_keys=QUEUES),
    RedisUser(
        "client", "clients over the Celery protocol: submit.py, the Python and Node "
        "clients, the OCRmyPDF plugin",
        (*SEND, "set", "hset", "hget", "hgetall", "hmget", "expire", "strlen", *_LISTING,
         # hlen: `submit.py batch status` (the batch's documents in flight)
         "hlen", *_NOTICE_READ),
        keys=(*QUEUES, *BINDINGS, *WAKE, *LANES, *_JOB_INDEX, *_BATCHES, "ocr:job:*",
              "ocr:blob:*"),
        read_keys=(*RESULTS, "ocr:doc:*", "ocr:output:*", "ocr:workers", *LAYOUT),
        channels=(EVENTS, RESULT_CHANNEL)),
    RedisUser(
        "admin", "operators: ocr_admin.py and submit.py's token and maintenance commands",
        # every key, no server administration (CONFIG, FLUSHALL, ACL SETUSER, ...); what
        # an operator reads to see who is connected and what Redis refused; a backup's
        # snapshot, read as a replica reads it (SYNC, REPLCONF: tasks/state/snapshot.py)
        ("@all", "-@dangerous", "info", "client|list", "acl|log", "sync", "replconf"),
        keys=("*",),
        channels=("*",)),
)
# The servers' own users, in a replicated Redis only (deploy/redis-ha/start.sh,
# `scripts.redis_acl --replicated`): no keys. A replica's link to its primary
# (`masteruser replica`), and a Sentinel's to each server (`sentinel auth-user`), with
# what Redis's Sentinel documentation lists for it: its hello channel, INFO, ROLE, and a
# failover's MULTI, REPLICAOF, CONFIG REWRITE, CLIENT KILL, EXEC.
HA_USERS: tuple[RedisUser, ...] = (
    RedisUser("replica", "a replica of a replicated Redis (its link to the primary)",
              ("psync", "replconf")),
    RedisUser("sentinel", "the Sentinels of a replicated Redis, on each server",
              ("client|kill", "subscribe", "publish", "info", "role", "multi", "exec",
               "slaveof", "replicaof", "config|rewrite", "script|kill"),
              channels=("__sentinel__:hello",)),
)
# A user of the Redis container's own probe (its password is made at each start).
PROBE = RedisUser("probe", "the Redis container's readiness probe", ())


def user(name: str) -> RedisUser:
    """The user named `name` (KeyError when there is none)."""
    return {u.name: u for u in (*USERS, *HA_USERS, PROBE)}[name]


def acl_lines(passwords: Mapping[str, str],
              redis_version: tuple[int, int] = (7, 0)) -> list[str]:
    """redis.conf / ACL-file lines: `default` off, then each user of `passwords` on.

    `passwords` maps user names to cleartext passwords; only their SHA-256 is written.
    `default` is off (no one can log in as it: a connection must AUTH as a user here)
    but keeps every permission: Redis 7.0 checks a transaction (MULTI/EXEC, which
    every Lua script's effects are in the append-only file) against `default`'s
    permissions when it loads the file at start, and would skip it otherwise, so a
    restart would bring back the messages the workers had taken
    (tests/deploy/test_redis_acl.py restarts one).
    """
    lines = ["user default off resetpass ~* &* +@all"]
    for name, password in passwords.items():
        digest = hashlib.sha256(password.encode()).hexdigest()
        lines.append(" ".join(["user", name, "on", "resetpass", f"#{digest}",
                               *user(name).rules(redis_version)]))
    return lines
