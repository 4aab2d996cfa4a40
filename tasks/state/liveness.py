"""The one answer to "is a live worker serving this queue?": presence records in Redis.

Written by worker parents (tasks/queue/presence.py: at ready, on every event heartbeat,
one pipelined HSET and EXPIRE, gone at shutdown) and read by everyone who asks:
`submit.py`'s wait, the HTTP API's readiness (tasks/api/_readiness.py), the operator
console. A read is one HGETALL of a
hash with one field per worker node: no broadcast, no wait for replies.

Each field holds `{"queues": [...], "engines": [...], "languages": {<engine>: [...]},
"expires": <epoch s>, "pid": <the worker parent's pid>, "host": <its machine>,
"layout": <its broker key layout>}`. `languages`: the codes each engine it runs reads
(null: any, as a VLM's); the gate refuses a job in a language no live worker reads
(tasks/admission.py). A worker that stops refreshing (killed, hung, cut off from Redis)
drops out when its `expires` passes, PRESENCE_TTL seconds after its last heartbeat. The
record itself stays `keep` seconds more (OCR_WORKER_LIVENESS_SECONDS): the sweep of dead
holders (tasks/broker/holders.py) tells a silent worker from a restarted one by it. The
hash itself carries a TTL too, pushed forward by every write, so it goes when the last
worker does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from tasks.state.keys import WORKERS_KEY

# Seconds a presence record stays valid after its last refresh (heartbeats come every
# 5 s, the Procfile's `--heartbeat-interval`: two may be missed before a worker counts
# as gone).
PRESENCE_TTL = 15.0
# Seconds between one writer's sweeps of records past their `expires`.
TIDY_INTERVAL = 60.0


class WorkerPresence:
    """Presence records of worker nodes (thread-safe: one Redis call per operation)."""

    def __init__(self, client: redis.Redis, ttl: float = PRESENCE_TTL,
                 keep: float = 0.0) -> None:
        self._redis = client
        self.ttl = ttl
        self.keep = keep
        self._tidied_at = float("-inf")

    def publish(self, node: str, queues: Iterable[str], now: float | None = None,
                engines: Iterable[str] = (), pid: int | None = None,
                layout: int | None = None, host: str | None = None,
                languages: Mapping[str, list[str] | None] | None = None) -> None:
        """`node` (worker parent `pid`) is alive and consumes `queues`, for `ttl` seconds.

        `engines`: the engine names a job may give, as the node's registry knows them
        (clients without this code, the Node.js one, refuse others at the door).
        `host`: the machine its parent runs on (its pid is that host's).
        `layout`: the broker key layout its release writes (a worker that names none
        keeps layout 1 or 2's keys, which are not moved while it lives:
        tasks/broker/stored_layout.py). `languages`: the codes each engine it runs
        reads (None for an engine that takes any).
        """
        now = time.time() if now is None else now
        fields = {"queues": sorted(set(queues)), "engines": list(engines),
                  "expires": round(now + self.ttl, 3)}
        if pid is not None:
            fields["pid"] = pid
        if layout is not None:
            fields["layout"] = layout
        if host is not None:
            fields["host"] = host
        if languages is not None:
            fields["languages"] = dict(languages)
        # One round trip, two commands: the record and the hash's TTL.
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(WORKERS_KEY, node, json.dumps(fields))
        pipe.expire(WORKERS_KEY, int(max(self.ttl * 6, self.ttl + self.keep)) + 1)
        pipe.execute()
        if now - self._tidied_at < TIDY_INTERVAL:
            return
        # Tidy: the records of workers gone without a word (killed) go with a write of
        # a live one, once a TIDY_INTERVAL per writer, `keep` seconds after they lapsed;
        # readers never write.
        self._tidied_at = now
        stale = [n for n, r in self._records().items() if _expires(r) + self.keep < now]
        if stale:
            self._redis.hdel(WORKERS_KEY, *stale)

    def withdraw(self, node: str) -> None:
        """`node` is going away: it serves nothing from now on."""
        self._redis.hdel(WORKERS_KEY, node)

    def live_queues(self, now: float | None = None,
                    window: float | None = None) -> dict[str, set[str]]:
        """The queues each live worker consumes, by node name (one HGETALL).

        Each node's queues are `WorkerQueues`: a set that also carries its languages.

        `window`: a worker counts until silent that long (OCR_WORKER_LIVENESS_SECONDS:
        a parent whose heartbeats come late, respawning killed pool children on a
        loaded host, keeps its held jobs until then); None: until its `expires`.
        """
        now = time.time() if now is None else now
        grace = 0.0 if window is None else max(0.0, window - self.ttl)
        return {node: _queues(record) for node, record in self._records().items()
                if _expires(record) + grace >= now}

    def records(self) -> dict[str, bytes | str]:
        """Every node's presence record (node -> JSON), lapsed ones too: one HGETALL."""
        return self._records()

    def _records(self) -> dict[str, bytes | str]:
        return {(n.decode() if isinstance(n, bytes) else str(n)): r
                for n, r in self._redis.hgetall(WORKERS_KEY).items()}

    def live_record(self, node: str, now: float | None = None) -> dict[str, Any] | None:
        """`node`'s presence record while it is live (before its `expires`), else None."""
        raw = self._redis.hget(WORKERS_KEY, node)
        now = time.time() if now is None else now
        if raw is None or _expires(raw) < now:
            return None
        return dict(json.loads(raw))

    def live_holders(self, now: float, window: float) -> tuple[set[str], set[str]]:
        """`live_holders` of this hash's records (one HGETALL)."""
        return live_holders(self._records(), now, window, self.ttl)


def live_holders(records: Mapping[str, bytes | str], now: float, window: float,
                 ttl: float) -> tuple[set[str], set[str]]:
    """The worker parents alive, `<node>|<pid>`, and every node with a record.

    For the sweep of dead holders (tasks/broker/holders.py). A record counts as live
    while its last refresh (`expires` less `ttl`) is at most `window` seconds old; a
    record without `pid` makes any pid of its node live (`<node>|*`).
    """
    live: set[str] = set()
    for node, raw in records.items():
        try:
            record = json.loads(raw)
            refreshed = float(record["expires"]) - ttl
        except (ValueError, KeyError, TypeError):
            continue
        if now - refreshed <= window:
            pid = record.get("pid")
            live.add(f"{node}|{pid if pid is not None else '*'}")
    return live, set(records)


def _expires(raw: bytes | str) -> float:
    """When a record stops counting (0 for one that cannot be read)."""
    try:
        return float(json.loads(raw)["expires"])
    except (ValueError, KeyError, TypeError):
        return 0.0


class WorkerQueues(set[str]):
    """A live worker's queues, and the languages each of its engines reads.

    `languages`: {engine: codes, or None where it takes any}; None where the record
    names none.
    """

    languages: dict[str, list[str] | None] | None = None


def _queues(raw: bytes | str) -> WorkerQueues:
    record = json.loads(raw)
    queues = WorkerQueues(str(q) for q in record["queues"])
    languages = record.get("languages")
    if isinstance(languages, dict):
        queues.languages = {str(engine): None if codes is None else [str(c) for c in codes]
                            for engine, codes in languages.items()}
    return queues
