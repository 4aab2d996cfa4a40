"""The Redis users of the service, one per role, and their key matrix, from the key declarations.

Every owner of Redis key names declares its key families beside them, each with the
roles that write it and those that only read it: the broker's in tasks/broker/layout.py,
layouts 1 and 2's in tasks/broker/stored_layout.py (for the release before's processes
during a rolling upgrade), the state's in tasks/state/keys.py. Here those declarations
become each role's key patterns and docs/security.md's matrix; no key is spelled again.
Each role's commands and channels are listed here.

The Kubernetes kit's and compose's Redis write the users into their configuration as
they start (`python -m scripts.redis_acl`, which reads each user's password from
`REDIS_PASSWORD_<USER>`); an operator of a managed Redis applies the same lines;
tests/deploy/test_redis_acl.py runs every role against a redis-server holding exactly
these users and finds nothing refused, and a command outside a user's set refused. Every
process then names its own user in REDIS_URL (`rediss://worker:PASSWORD@ocr-redis:6379/0?...`),
and the `default` user is off.

What each user holds was read from the code and from every role's traffic (the commands
each one sent through a real run, MONITOR per role): this project's transport
(tasks/broker/transport.py, on the lists and bindings kombu's clients use), Celery's
result backend, the Lua scripts of tasks/broker/lanes.py, tasks/state/join.py,
stores.py, the metrics' queue depth and tasks/api/_quotas.py (Redis checks every command
a script calls against the caller's user, keys included), Flower and the metrics
exporter. To let a role touch a key family, add the role to the family's declaration;
to give it a command, add the command to its entry below: both kits and the tests read
this module. Key patterns are Redis globs: `~` read and write, `%R~` read only; `&`
channels (a PSUBSCRIBE pattern must equal one of them).

The matrix (`python -m tasks.redis_users`, between docs/security.md's `acl-matrix`
markers) is each family's declared access; `key_access` reads a user's own patterns
instead, and tests/units/test_redis_users.py holds the two equal on every family's
keys, while tests/deploy/test_redis_acl_matrix.py asks a real redis-server holding
these users, with `ACL DRYRUN`, whether it agrees cell by cell.

Runs in the Redis container's start-up (scripts/redis_acl.py), by hand and in the
tests; pure.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from tasks.broker import layout, stored_layout
from tasks.records.key_families import ROLES, KeyFamily
from tasks.state import keys

# The key matrix: what each user may do with each key family (KeyFamily.access): read
# and write, read, write without reading back (`%W~`), ask only a key's length and
# whether it exists (a selector of COUNTING on its own patterns), nothing.
READ_WRITE, READ, WRITE, COUNT, NONE = "rw", "r", "w", "len", "-"
COUNTING = ("llen", "hlen", "exists")

# Celery's channels carry the database number: the kit's Redis database is 0.
DB = 0

# Every user: authenticate (AUTH, HELLO, the client library's CLIENT SETNAME on
# connect), choose the database, health checks. redis-py also sends CLIENT SETINFO, a
# subcommand from Redis 7.2 on (7.0 refuses its name in a rule): SETINFO_SINCE.
CONNECTION = ("auth", "hello", "select", "ping", "quit", "client|setname", "client|getname",
              "client|id")
SETINFO_SINCE = (7, 2)

# Every key family, the broker's first: what the users' key patterns and the matrix
# are built from.
FAMILIES: tuple[KeyFamily, ...] = (*layout.FAMILIES, *stored_layout.FAMILIES, *keys.FAMILIES)

EVENTS = f"/{DB}.celeryev/*"          # task and worker events (Flower reads them)
CONTROL_CHANNEL = f"/{DB}.celery.pidbox"  # remote control broadcasts
RESULT_CHANNEL = keys.RESULT_PREFIX + "*"  # a result as it is stored

# What any Celery app that sends tasks does: push a message to its queue or its client's
# lane and ring its queue's wake-up key (a Lua script: LPUSH, HINCRBY, LPOS, RPUSH, PEXPIRE), count
# a queue's messages when it declares it (EXISTS, and where any waits LLEN; its lanes:
# LRANGE), declare the queue's
# binding (a Lua script: SADD, TIME, ZADD), publish the task-sent event, wait for a
# result on its channel, read the result; hold a job until enough replicas have it
# (WAIT, OCR_REDIS_MIN_REPLICAS) and its record with it (PTTL, PEXPIRE); the broker
# transport tells a reconnection to another server (a failover) by the server's run id
# (INFO server: tasks/broker/qos.py).
SEND = ("lpush", "lpos", "rpush", "hincrby", "lrange", "llen", "ltrim", "pexpire", "pttl",
        "sadd", "smembers", "zadd", "time", "exists",
        "eval", "evalsha", "script|load", "script|exists", "multi", "exec", "discard",
        "publish", "subscribe", "unsubscribe", "get", "mget", "wait", "info")
# What a consuming worker adds: the atomic fetch (a Lua script: LINDEX, HSET, HDEL,
# RPOP; a client's lanes: LMPOP; the lanes' ring: LRANGE, LPOS, LREM, RPUSH, HINCRBY,
# HDEL; its queues' wake-up keys: DEL), wake-up keys (BLPOP),
# acknowledgements and restores (HGET, HDEL, ZREM, WATCH; the visibility timeout's look,
# EXISTS and a Lua script: HGETALL, ZRANGE), the sweep of dead holders' messages (a Lua
# script: SET NX PX, HGETALL, HGET, ZSCORE, RPUSH; ZRANGE, ZSCORE and ZREM the release
# before's, on layout 1's index), the sweep of
# expired queues' bindings (a Lua script: TIME, ZRANGEBYSCORE, SISMEMBER, SREM, ZREM),
# remote control (PSUBSCRIBE), results and job state (an input read to its bound: GETRANGE),
# the sweeper's look at each queue's oldest waiting message (a read-only script,
# EVALSHA_RO or EVAL_RO: tasks/metrics/queue_depth.py, `record_oldest`).
CONSUME = ("rpop", "lmpop", "rpush", "lrem", "lpos", "lindex", "lrange", "blpop", "hset",
           "hsetnx", "hget", "hdel", "eval_ro", "evalsha_ro",
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
    write_keys: tuple[str, ...] = ()  # write only: nothing read back
    count_keys: tuple[str, ...] = ()  # their length and existence only (COUNTING)

    @property
    def password_variable(self) -> str:
        """The environment variable its password comes from: REDIS_PASSWORD_<NAME>."""
        return f"REDIS_PASSWORD_{self.name.upper()}"

    def rules(self, redis_version: tuple[int, int] = (7, 0)) -> list[str]:
        """Its ACL rules, without the password, for a server of `redis_version`."""
        setinfo = ("client|setinfo",) if redis_version >= SETINFO_SINCE else ()
        commands = dict.fromkeys((*CONNECTION, *setinfo, *self.commands))
        # a selector: COUNTING on these keys, no other command
        counted = [*(f"+{c}" for c in COUNTING), *(f"~{k}" for k in self.count_keys)]
        counting = [f"({' '.join(counted)})"] if self.count_keys else []
        return ["resetkeys", "resetchannels", "-@all",
                *(c if c.startswith("-") else f"+{c}" for c in commands),
                *(f"~{k}" for k in self.keys), *(f"%R~{k}" for k in self.read_keys),
                *(f"%W~{k}" for k in self.write_keys),
                *(f"&{c}" for c in self.channels), *counting]


def written(role: str) -> tuple[str, ...]:
    """The key patterns of every family `role` writes, in FAMILIES' order."""
    return tuple(dict.fromkeys(p for f in FAMILIES if role in f.writers for p in f.patterns))


def _given(role: str, access: str, taken: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The key patterns of every family that gives `role` `access`, less `taken`."""
    return tuple(dict.fromkeys(p for f in FAMILIES if f.access(role) == access
                               for p in f.patterns if p not in taken))


def read_only(role: str) -> tuple[str, ...]:
    """The key patterns of every family `role` only reads (none it also writes)."""
    return _given(role, READ, written(role))


def _role(name: str, who: str, commands: tuple[str, ...],
          channels: tuple[str, ...] = ()) -> RedisUser:
    """The user of role `name`: its keys those the key families give it."""
    both = (*written(name), *read_only(name))
    writes = _given(name, WRITE, both)
    return RedisUser(name, who, commands, keys=written(name), read_keys=read_only(name),
                     channels=channels, write_keys=writes,
                     count_keys=_given(name, COUNT, (*both, *writes)))


# The job lists (tasks/state/job_index.py): whoever sends a job lists it; a worker lists
# a job another Celery client sent when it starts it.
_LISTING = ("zadd", "zremrangebyscore", "zremrangebyrank", "expire")
# A job's ending notice (tasks/state/job_notices.py): written where a job ends, read by
# whoever waits for it.
_NOTICE_WRITE, _NOTICE_READ = ("xadd",), ("xread",)
# A place among a client's jobs in flight is reserved in one script (ZSCORE, ZCARD,
# ZADD, EXPIRE: tasks/state/client_rules.py) by whoever sends its job, and its pages
# held against the client's caps in another (HVALS, HGET, HSET, EXPIRE; the holds of
# ended jobs dropped: HKEYS, HDEL; tasks/state/usage.py).
_RESERVE = ("zscore", "zcard", "hvals", "hkeys", "hdel")

USERS: tuple[RedisUser, ...] = (
    _role("worker", "the OCR workers (Procfile `worker`, every engine and pool)",
          (*SEND, *CONSUME, *_LISTING, *_NOTICE_WRITE, *_RESERVE),
          channels=(EVENTS, CONTROL_CHANNEL, RESULT_CHANNEL)),
    _role("control", "the control worker (Procfile `control`: cancels, HTTP callbacks, "
          "batch steps)",
          (*SEND, *CONSUME, *_LISTING, *_NOTICE_WRITE, *_RESERVE),
          channels=(EVENTS, CONTROL_CHANNEL, RESULT_CHANNEL)),
    _role("api", "the HTTP API (Procfile `api`)",
          # its upload quota scripts (tasks/api/_quotas.py): APPEND, RENAME, STRLEN, SREM;
          # line corrections (tasks/state/corrections.py): WATCH, HSCAN, and their write
          # script: HSTRLEN, HSET, HDEL, INCRBY, SET; both sum the client's stored results
          # (tasks/state/stored_bytes.py: ZRANGEBYSCORE, ZREMRANGEBYSCORE of the ended)
          (*SEND, "append", "rename", "strlen", "srem", "hset", "hget", "hgetall", "hmget",
           "set", "del", "exists", "expire", "incr", "zrem", "zrange", "zrangebyscore",
           *_LISTING,
           "zrevrangebyscore", "hlen", *_NOTICE_READ, *_RESERVE, "watch", "unwatch", "hdel",
           "hscan", "hstrlen", "incrby"),
          channels=(EVENTS, RESULT_CHANNEL)),
    _role("beat", "beat (Procfile `beat`: sends the scheduled model audit)",
          SEND, channels=(EVENTS, RESULT_CHANNEL)),
    _role("flower", "Flower (Procfile `flower`): events, remote control, queue lengths; it "
          "cannot send a task, nor touch a message in flight",
          # events and replies come through a consumer of its own that acknowledges
          # nothing (its fetch names no unacknowledged-message key, it restores none:
          # tasks/broker/fetching.py); remote control is a broadcast
          ("llen", "lindex", "rpop", "blpop", "sadd", "srem", "sismember", "smembers",
           "zadd", "zrem", "zrange", "zrangebyscore", "time", "eval", "evalsha",
           "script|load", "script|exists", "multi", "exec", "discard", "get", "set", "del",
           "exists", "hset", "hget", "hdel", "hgetall", "watch", "unwatch", "psubscribe",
           "punsubscribe", "publish", "pexpire", "info",
           # its broker page's queue lengths: a read-only script (LLEN; LRANGE of the
           # lanes' rings), as the exporter's (tasks/queue/flower_view.py)
           "eval_ro", "evalsha_ro", "lrange"),
          channels=(EVENTS, CONTROL_CHANNEL)),
    _role("metrics", "the metrics exporter (Procfile `metrics`): reads only",
          # the running count is each list's held hash's length (HLEN, no message
          # read); INFO: Redis's memory; LRANGE: the lanes of each list's ring (a
          # read-only script); HMGET: the oldest waiting messages' ages, as workers
          # looked (tasks/metrics/queue_depth.py)
          ("llen", "lrange", "get", "smembers", "hgetall", "hget",
           "eval_ro", "evalsha_ro", "info", "hlen", "hmget")),
    _role("keda", "KEDA's `redis` trigger, for a ScaledObject that reads a queue's length "
          "itself (the kit's read the exporter)", ("llen",)),
    _role("client", "clients over the Celery protocol: submit.py, the Python and Node "
          "clients, the OCRmyPDF plugin",
          (*SEND, "set", "hset", "hget", "hgetall", "hmget", "expire", "strlen", *_LISTING,
           # hlen: `submit.py batch status` (the batch's documents in flight)
           "hlen", *_NOTICE_READ),
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


START = "<!-- acl-matrix:start (generated: python -m tasks.redis_users) -->"
END = "<!-- acl-matrix:end -->"


def _glob(pattern: str) -> str:
    """A Redis glob as fnmatch reads it (`[^...]` is fnmatch's `[!...]`)."""
    return pattern.replace("[^", "[!")


def key_access(user: RedisUser, key: str) -> str:
    """A matrix cell: what `user`'s own key patterns allow on `key`."""
    for cell, patterns in ((READ_WRITE, user.keys), (READ, user.read_keys),
                           (WRITE, user.write_keys), (COUNT, user.count_keys)):
        if any(fnmatch.fnmatchcase(key, _glob(p)) for p in patterns):
            return cell
    return NONE


def declared_access(user: RedisUser, family: KeyFamily) -> str:
    """One cell: what the family's declaration gives `user` (admin: every key)."""
    if user.name not in ROLES:
        return READ_WRITE if "*" in user.keys else NONE
    return family.access(user.name)


def matrix() -> dict[str, dict[str, str]]:
    """Family name -> user name -> its cell (READ_WRITE, READ, ...), as declared."""
    return {f.name: {u.name: declared_access(u, f) for u in USERS} for f in FAMILIES}


def markdown() -> str:
    """The matrix as docs/security.md shows it, markers included."""
    names = [u.name for u in USERS]
    lines = [START, "", "| keys | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for family, row in matrix().items():
        lines.append(f"| {family} | " + " | ".join(row[n] for n in names) + " |")
    return "\n".join([*lines, "", END])


if __name__ == "__main__":
    print(markdown())
