"""The Redis users' key matrix: what each role may read and write, by key family.

Computed from the users of tasks/broker/redis_acl.py (their key patterns, Redis globs)
against a few keys of each family, so the matrix cannot drift from the rules the kits
write into Redis. docs/security.md's matrix is this module's output
(`python -m tasks.broker.acl_matrix`, between its `acl-matrix` markers), and
tests/deploy/test_redis_acl_matrix.py asks a real redis-server holding those users,
with `ACL DRYRUN`, commands and scripts alike, whether it agrees cell by cell.

Runs in the tests and by hand; pure.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from tasks.broker import layout, stored_layout
from tasks.broker.redis_acl import USERS, RedisUser

READ_WRITE, READ, NONE = "rw", "r", "-"
START = "<!-- acl-matrix:start (generated: python -m tasks.broker.acl_matrix) -->"
END = "<!-- acl-matrix:end -->"


@dataclass(frozen=True)
class KeyFamily:
    """Keys that belong together, and some of their names (every one checked)."""

    name: str
    keys: tuple[str, ...]


FAMILIES: tuple[KeyFamily, ...] = (
    KeyFamily("task queues (lists)", ("ocr", "ocr-fake", "ocr-control", "ocr\x06\x163")),
    KeyFamily("clients' lanes and rings", (layout.list_lane_key("ocr", "alice"),
                                           layout.list_ring_key("ocr\x06\x163"),
                                           layout.list_ring_key("ocr") + ":turn",
                                           stored_layout.LANE_PREFIX + "ocr:alice",
                                           stored_layout.RINGS_PREFIX + "3",
                                           stored_layout.RINGS_PREFIX + "3:turn")),
    KeyFamily("doorbells", (layout.queue_wake_key("ocr"), stored_layout.WAKE_PREFIX + "ocr")),
    KeyFamily("the key layout's version", (layout.LAYOUT_KEY,)),
    KeyFamily("unacknowledged messages", (layout.list_held_key("ocr"),
                                          layout.list_held_key("ocr-fake\x06\x166"),
                                          layout.list_held_key("w1@host.dq2"),
                                          layout.HELD_LISTS_KEY, stored_layout.HELD_KEY,
                                          stored_layout.UNACKED_KEY)),
    KeyFamily("their index, holders, restore mutex, sweep lock",
              (stored_layout.UNACKED_INDEX_KEY, layout.UNACKED_MUTEX_KEY,
               stored_layout.HOLDERS_KEY, layout.SWEEP_LOCK_KEY)),
    KeyFamily("bindings", ("_kombu.binding.ocr", "_kombu.binding.reply.celery.pidbox")),
    KeyFamily("remote control mailboxes", ("w1@host.celery.pidbox",
                                           "abc.reply.celery.pidbox")),
    KeyFamily("workers' direct queues", ("w1@host.dq2",)),
    KeyFamily("event queues", ("celeryev.abc",)),
    KeyFamily("results", ("celery-task-meta-1",)),
    KeyFamily("dead letters", (layout.DEAD_LETTER_KEY, layout.DEAD_LETTER_COUNT_KEY)),
    KeyFamily("job records and inputs", ("ocr:job:1", "ocr:blob:1")),
    KeyFamily("documents' pages (the fan-out's join)", ("ocr:doc:1",)),
    KeyFamily("job lists", ("ocr:jobs:alice",)),
    KeyFamily("batches", ("ocr:batch:1", "ocr:batches:running")),
    KeyFamily("jobs in flight", ("ocr:api:inflight:alice",)),
    KeyFamily("API job records", ("ocr:api:job:1",)),
    KeyFamily("API tokens", ("ocr:api:token:1",)),
    KeyFamily("clients' records", ("ocr:api:clients",)),
    KeyFamily("webhook secrets", ("ocr:api:webhook:alice",)),
    KeyFamily("uploads and bytes quotas", ("ocr:api:upload:1", "ocr:api:bytes:alice")),
    KeyFamily("line corrections and their bytes", ("ocr:corrections:alice",
                                                   "ocr:corrections:alice:bytes")),
    KeyFamily("page usage", ("ocr:usage:day:2026-01-01", "ocr:usage:month:2026-01",
                             "ocr:usage:day:2026-01-01:engines")),
    KeyFamily("pages held for jobs sent", ("ocr:usage:held:alice",)),
    KeyFamily("result cache", ("ocr:cache:1",)),
    KeyFamily("outputs", ("ocr:output:1",)),
    KeyFamily("workers' presence", ("ocr:workers",)),
)


def _glob(pattern: str) -> str:
    """A Redis glob as fnmatch reads it (`[^...]` is fnmatch's `[!...]`)."""
    return pattern.replace("[^", "[!")


def key_access(user: RedisUser, key: str) -> str:
    """READ_WRITE, READ or NONE: what `user`'s key patterns allow on `key`."""
    if any(fnmatch.fnmatchcase(key, _glob(p)) for p in user.keys):
        return READ_WRITE
    if any(fnmatch.fnmatchcase(key, _glob(p)) for p in user.read_keys):
        return READ
    return NONE


def family_access(user: RedisUser, family: KeyFamily) -> str:
    """One cell: the access every key of the family has (ValueError when they differ)."""
    seen = {key_access(user, key) for key in family.keys}
    if len(seen) != 1:
        raise ValueError(f"{family.name}: {user.name} has {sorted(seen)}; split the family")
    return seen.pop()


def matrix() -> dict[str, dict[str, str]]:
    """Family name -> user name -> READ_WRITE, READ or NONE."""
    return {f.name: {u.name: family_access(u, f) for u in USERS} for f in FAMILIES}


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
