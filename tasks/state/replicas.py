"""Redis replicas: the `WAIT` that holds a write until they have it, and replaced primaries.

`kept(pipe, target)` appends the `WAIT` that holds a write until `target.min_replicas`
replicas have it; `hold_kept` waits on a client's own last write. `replaced_at` tells
whether the Sentinels have replaced the primary a connection wrote to (every Sentinel
that answers is asked): a live primary they took for dead takes writes until they
demote it, then throws those writes away.

Runs in every process that writes to Redis with OCR_REDIS_MIN_REPLICAS. Imports no Celery.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from tasks.errors import PrimaryReplaced, ReplicaMissing
from tasks.records.redis_target import RedisTarget


def kept(pipe: Any, target: RedisTarget) -> Any:
    """Append to `pipe` the `WAIT` that holds it until enough replicas have its writes.

    Redis replicates in the order it executes, so once a replica holds the last write
    of a connection it holds every write any connection finished before it: a client's
    input, job record and message are kept when its publish is. A no-op when
    `target.min_replicas` is 0. `check_kept` reads the pipeline's last reply. The
    pipeline must write (WAIT counts the writes of its own connection only) and must
    not be a transaction (WAIT in MULTI does not wait).
    """
    return wait_replicas(pipe, target.min_replicas, target.replica_timeout)


def check_kept(replies: list[Any], target: RedisTarget, what: str) -> None:
    """Raise `ReplicaMissing` when the `WAIT` that `kept` appended saw too few replicas."""
    check_replicas(replies, target.min_replicas, target.replica_timeout, what)


def wait_replicas(pipe: Any, replicas: int, timeout: float) -> Any:
    """`kept` by figures: WAIT for `replicas` replicas, at most `timeout` seconds."""
    if replicas > 0 and getattr(pipe, "transaction", False):
        # Inside MULTI a WAIT answers at once, without waiting.
        raise ValueError("WAIT needs a pipeline without a transaction "
                         "(pipeline(transaction=False))")
    if replicas > 0:
        pipe.execute_command(*wait_command(replicas, timeout))
    return pipe


def wait_command(replicas: int, timeout: float) -> list[Any]:
    """`WAIT` for `replicas` replicas, at most `timeout` seconds (at least a millisecond)."""
    return ["WAIT", replicas, max(1, int(timeout * 1000))]


def check_replicas(replies: list[Any], replicas: int, timeout: float, what: str) -> None:
    """`check_kept` by figures."""
    if replicas <= 0:
        return
    reached = int(replies[-1])
    if reached < replicas:
        raise ReplicaMissing(
            f"{what} reached {reached} of the {replicas} Redis replica(s) required "
            f"(OCR_REDIS_MIN_REPLICAS) within {timeout:g} s; try again")


def hold_kept(client: redis.Redis, key: str, target: RedisTarget, patience: float) -> bool:
    """Hold until `target.min_replicas` replicas have every write made so far.

    One write (`PEXPIRE key`, its TTL unchanged: `key` must have one) then WAIT on the
    same connection: covered are this process's earlier writes, on any connection.
    Waits again while replicas lag, up to `patience` seconds; False when they never
    caught up (the writes are on the primary, not yet safe from a failover).
    `key` was written by this process just before: where the server that answers has
    none, a failover took the writes with the old primary before a replica had them (a
    command retried through the failover goes to the new one): `PrimaryReplaced`
    (transient), so that its writer sends them again rather than go on without them. So too when the
    replicas never caught up and the Sentinels name another primary by then.
    """
    if target.min_replicas <= 0:
        return True
    deadline = time.monotonic() + patience
    while True:
        ttl = int(client.pttl(key))
        if ttl in (-1, 0):
            return True  # without a TTL (not this job's), or expiring: nothing to keep
        if ttl > 0:
            with client.pipeline(transaction=False) as pipe:
                pipe.pexpire(key, ttl)
                replies = kept(pipe, target).execute()
        if ttl < 0 or not replies[0]:  # -2, or gone by the PEXPIRE: not on this server
            raise PrimaryReplaced(f"{key} is not on the Redis primary: lost with a "
                                  "failover before a replica had it")
        if int(replies[-1]) >= target.min_replicas:
            return True
        if time.monotonic() >= deadline:
            if primary_replaced(client):
                raise PrimaryReplaced(f"{key} was written to a Redis primary the Sentinels "
                                      "have replaced; its writes will be thrown away")
            return False


def primary_replaced(client: redis.Redis) -> bool:
    """Whether the Sentinels name another primary than the one `client`'s pool writes to.

    A live primary the Sentinels took for dead and replaced keeps taking writes, with no
    replica left, until they tell it to follow the new one (seconds later), which throws
    those writes away. Asking drops the pool's idle connections to it.
    """
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return False
    used = pool.master_address
    return used is not None and replaced_at(client, tuple(used))


def sentinel_named(client: redis.Redis) -> bool:
    """Whether `client` writes to the primary the Sentinels name (one they may replace)."""
    return isinstance(client.connection_pool, SentinelConnectionPool)


def replaced_at(client: redis.Redis, address: tuple[Any, ...]) -> bool:
    """Whether a Sentinel names another primary than `address`, where `client` wrote.

    `address`: `address_of` the connection that took the writes. Its pool's name for the
    primary may be newer than that connection (another thread asked meanwhile), so the
    connection's own address is compared. Asking drops the pool's idle connections to
    a replaced primary. False off Sentinel.
    """
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return False
    if tuple(pool.get_master_address()) != tuple(address[:2]):
        return True
    return any(_named_elsewhere(sentinel, pool.service_name, address[:2])
               for sentinel in pool.sentinel_manager.sentinels)


def _named_elsewhere(sentinel: redis.Redis, service: str, address: tuple[Any, ...]) -> bool:
    """Whether one Sentinel names another primary for `service`, or holds it down (odown).

    The pool takes the first Sentinel that answers; in a switch, one that has not yet
    heard of it still names the old primary. One that has is enough to tell.
    """
    masters = _masters_of(sentinel)
    if masters is None:
        return False  # a Sentinel that does not answer tells nothing
    state = masters.get(service) if isinstance(masters, dict) else \
        next((m for m in masters if m.get("name") == service), None)
    if not state:
        return False
    return (state["ip"], state["port"]) != tuple(address) or not state["is_master"] or \
        bool(state["is_odown"])


def _masters_of(sentinel: redis.Redis) -> Any:
    """`SENTINEL MASTERS` of one Sentinel, asked once; None where it does not answer.

    On a connection of its own, without retries: a Sentinel client retries a refused
    connection with a backoff of seconds, and the Sentinel of a dead host is asked too.
    """
    pool = sentinel.connection_pool
    once = redis.ConnectionPool(connection_class=pool.connection_class,
                                **{**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)})
    try:
        return redis.Redis(connection_pool=once).sentinel_masters()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        return None
    finally:
        once.disconnect()


def address_of(connection: Any) -> tuple[Any, ...]:
    """The server a connected redis-py connection talks to: host, port, socket path."""
    return (getattr(connection, "host", None), getattr(connection, "port", None),
            getattr(connection, "path", None))
