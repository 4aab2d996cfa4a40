"""Redis snapshots: one RDB file through the replication protocol, restored key by key.

Runs in the operator's process (`ocr_admin.py backup` and `restore`, tasks/cli/backup.py).

- `read_snapshot(client, out)` writes the whole server's dataset, every database, as
  one RDB file: the operator's process asks Redis for it as a replica would (`SYNC`,
  with `REPLCONF rdb-only` where Redis has it), so Redis forks and streams a
  point-in-time snapshot (copy on write): consistent across keys (a message is either
  in its queue or in `unacked`, never in neither), no client is blocked while it is
  taken, nothing is written on the server's disk (diskless), and the file is the
  standard format any redis-server loads, as are a managed Redis's exports.
- `copy_database(source, target)` copies every key of one database with `DUMP` and
  `RESTORE` (its remaining TTL kept), from a Redis that loaded a backup to the Redis
  being restored; any Redis the connection factory reaches can be restored, behind
  Sentinel, TLS or a managed endpoint alike.
- `inventory(client)` counts what a database holds, by kind, for the commands' reports.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import redis

from tasks.errors import RestoreRefused, SnapshotFailed
from tasks.state import keys

MAGIC = b"REDIS"
EOF_MARK = b"$EOF:"
MARK_LENGTH = 40
CHUNK = 1 << 16
# Keys are copied in batches of at most this many bytes (Redis's own estimate) or keys.
BATCH_BYTES = 32 << 20
BATCH_KEYS = 500


@dataclass(frozen=True)
class Snapshot:
    """What `read_snapshot` wrote: its size and how Redis sent it."""

    bytes: int
    diskless: bool


def read_snapshot(client: redis.Redis, out: BinaryIO) -> Snapshot:
    """Write the server's RDB snapshot to `out`; `SnapshotFailed` when it is not whole.

    One connection of `client`'s pool (TLS, password and Sentinel's primary as the
    connection factory made them) is turned into a replica's for the transfer, then
    closed.
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        for option in (("capa", "eof"), ("rdb-only", "1")):
            conn.send_command("REPLCONF", *option)
            try:
                conn.read_response()
            except redis.ResponseError:
                pass  # a Redis before 7.0 has no rdb-only: it sends the snapshot all the same
        conn.send_command("SYNC")
        sock = conn._get_socket()  # the replication stream is read raw, not as replies
        if sock is None:
            raise SnapshotFailed("the connection to Redis closed before the snapshot")
        return _receive(sock, out)
    except (OSError, redis.ConnectionError, redis.TimeoutError) as exc:
        raise SnapshotFailed(f"the connection to Redis broke during the snapshot "
                             f"({type(exc).__name__})") from None
    except redis.ResponseError as exc:
        raise SnapshotFailed(f"Redis refused the snapshot ({exc}); the user needs the "
                             "SYNC and REPLCONF commands") from None
    finally:
        conn.disconnect()
        pool.release(conn)


def _receive(sock: socket.socket, out: BinaryIO) -> Snapshot:
    """The RDB after `SYNC`: `$<length>` (from disk) or `$EOF:<mark>` ... `<mark>`."""
    chunks = _chunks(sock)
    buffer = b""
    line = b""
    while not line:  # Redis sends a newline each second while it prepares the snapshot
        while b"\n" not in buffer:
            buffer += next(chunks)
        raw, _, buffer = buffer.partition(b"\n")
        line = raw.rstrip(b"\r")
    if line.startswith(b"-"):
        raise SnapshotFailed(f"Redis refused the snapshot: {line[1:].decode(errors='replace')}")
    if line.startswith(EOF_MARK):
        mark = line[len(EOF_MARK):]
        written = _until_mark(buffer, chunks, mark, out)
        return Snapshot(written, diskless=True)
    if not line.startswith(b"$"):
        raise SnapshotFailed("Redis answered SYNC with something else than a snapshot")
    length = int(line[1:])
    written = 0
    while written < length:
        piece = buffer[:length - written] if buffer else next(chunks)[:length - written]
        buffer = b""
        _write(out, piece, written)
        written += len(piece)
    return Snapshot(written, diskless=False)


def _chunks(sock: socket.socket) -> Iterator[bytes]:
    while True:
        chunk = sock.recv(CHUNK)
        if not chunk:
            raise SnapshotFailed("Redis closed the connection before the snapshot's end")
        yield chunk


def _until_mark(buffer: bytes, chunks: Iterator[bytes], mark: bytes, out: BinaryIO) -> int:
    """Write what comes before `mark` (the last `MARK_LENGTH` bytes are held back)."""
    if len(mark) != MARK_LENGTH:
        raise SnapshotFailed("Redis sent a snapshot marker of an unknown form")
    held, written = buffer, 0
    while True:
        end = held.find(mark)
        if end >= 0:
            _write(out, held[:end], written)
            return written + end
        keep = max(0, len(held) - MARK_LENGTH)
        _write(out, held[:keep], written)
        written += keep
        held = held[keep:] + next(chunks)


def _write(out: BinaryIO, piece: bytes, offset: int) -> None:
    if offset == 0 and piece and not piece.startswith(MAGIC[:len(piece)]):
        raise SnapshotFailed("what Redis sent is not an RDB file")
    out.write(piece)


def copy_database(source: redis.Redis, target: redis.Redis, *, replace: bool = False) -> int:
    """Copy every key of `source`'s database into `target`'s; the number of keys copied.

    Each key is DUMPed with its remaining TTL (PTTL) and RESTOREd with it: what had
    expired when the backup was loaded is gone. `replace`: a key the target already
    has is overwritten; otherwise the target must be empty (`RestoreRefused`).
    """
    if not replace and target.dbsize():
        raise RestoreRefused("the target database is not empty; restore into a fresh Redis "
                             "(or give --replace to overwrite its keys)")
    copied = 0
    for batch in _batches(source):
        reads = source.pipeline(transaction=False)
        for key in batch:
            reads.dump(key)
            reads.pttl(key)
        replies = reads.execute()
        writes = target.pipeline(transaction=False)
        for key, payload, ttl in zip(batch, replies[::2], replies[1::2], strict=True):
            if payload is None or ttl == -2:
                continue  # expired or removed while copying
            writes.restore(key, max(int(ttl), 0), payload, replace=replace)
            copied += 1
        try:
            writes.execute()
        except redis.ResponseError as exc:
            raise RestoreRefused(f"the target Redis refused a key ({exc}); it must be the "
                                 "backup's Redis version or newer") from None
    return copied


def _batches(source: redis.Redis) -> Iterator[list[Any]]:
    """The database's keys in batches of bounded size (MEMORY USAGE, Redis's estimate)."""
    batch: list[Any] = []
    size = 0
    for key in source.scan_iter(count=1000):
        used = source.memory_usage(key) or 0
        if batch and (size + used > BATCH_BYTES or len(batch) >= BATCH_KEYS):
            yield batch
            batch, size = [], 0
        batch.append(key)
        size += used
    if batch:
        yield batch


@dataclass(frozen=True)
class Inventory:
    """What one database holds, by kind (the commands' reports, the runbook's checks)."""

    keys: int
    queued_messages: int
    unacked_messages: int
    jobs: int
    results: int
    tokens: int
    inputs: int

    def as_json(self) -> dict[str, int]:
        return dict(self.__dict__)


def inventory(client: redis.Redis, is_lane: Callable[[str], bool],
              is_held: Callable[[str], bool]) -> Inventory:
    """Count keys by kind: broker messages (waiting and in flight), jobs, results, tokens.

    `is_lane`: whether a key is one of the broker's clients' lanes (tasks/broker/
    layout.py), lists of queued messages; `is_held`: whether it is one of the broker's
    hashes of messages in flight (one entry each). Other lists outside `ocr:` and the
    broker's tagged keys (`{...}`: its rings, wake-ups) are queues' lists.
    """
    counts = {"keys": 0, "queued_messages": 0, "unacked_messages": 0, "jobs": 0,
              "results": 0, "tokens": 0, "inputs": 0}
    for raw in client.scan_iter(count=1000):
        key = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        counts["keys"] += 1
        if is_held(key):
            counts["unacked_messages"] += int(client.hlen(raw))
        elif key.startswith(keys.API_TOKEN_PREFIX):
            counts["tokens"] += 1
        elif key.startswith("celery-task-meta-"):
            counts["results"] += 1
        elif key.startswith((keys.BLOB_PREFIX, keys.API_UPLOAD_PREFIX)):
            counts["inputs"] += 1
        elif key.startswith(keys.JOB_PREFIX) and ":" not in key[len(keys.JOB_PREFIX):]:
            counts["jobs"] += 1
        elif (is_lane(key) or not key.startswith(
                (keys.ROOT, "_kombu.", "unacked", "{"))) and client.type(raw) in (b"list", "list"):
            # a broker queue's list, or a client's lane of one (tasks/broker/lanes.py)
            counts["queued_messages"] += int(client.llen(raw))
    return Inventory(**counts)
