"""The Redis side of the model lifecycle: use, live registrations, reports, the prune lock.

Keys (all under `ocr:models:`, all with a TTL):

- `ocr:models:last-used`: hash, model-directory entry -> epoch seconds of its last use
  by a task (written by pool children after each task);
- `ocr:models:loaded:<host>:<pid>:<entry>`: JSON `Holder` of a pool child that has the
  entry loaded (or is loading it); renewed every heartbeat, expires after 3 missed
  beats, deleted when the child unloads or exits;
- `ocr:models:configured:<host>:<pid>`: JSON `Holder` of a pool child's configured
  OCR_MODEL, loaded or not; renewed like `loaded`, and left to expire 3 beats after
  the child exits (a recycled child leaves no gap before its successor registers);
- `ocr:models:report`: the latest audit report (JSON), any host;
- `ocr:models:report:<host>:<model dir>`: the latest report of each host's directory;
- `ocr:models:prune-lock:<host>:<model dir>`: redis-py `Lock` held while an audit scans
  and prunes that directory (each host's directory has its own);
- `ocr:models:scheduled-audit`: claimed by a scheduled audit so a second beat's copy of
  the same run is skipped;
- `ocr:models:audit-run:<run>:<host>:<model dir>`: claimed by the first worker of a host
  to take its copy of an every-host run, so that directory is audited once per run.

Used by pool children (registrations, use), the audit task, and clients (latest report).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.exceptions import LockError

from tasks.models.inventory import Holder
from tasks.state.keys import MODELS_CONFIGURED_PREFIX as CONFIGURED_PREFIX
from tasks.state.keys import MODELS_HOST_REPORT_PREFIX as HOST_REPORT_PREFIX
from tasks.state.keys import MODELS_LAST_USED_KEY as LAST_USED_KEY
from tasks.state.keys import MODELS_LOADED_PREFIX as LOADED_PREFIX
from tasks.state.keys import MODELS_REPORT_KEY as REPORT_KEY
from tasks.state.keys import MODELS_SCHEDULED_KEY as SCHEDULED_KEY
from tasks.state.keys import (
    models_configured_key,
    models_host_report_key,
    models_loaded_key,
    models_prune_lock_key,
    models_run_key,
)

RUN_TTL = 86400
LAST_USED_TTL = 400 * 86400  # renewed on each use; outlives any unused-days policy
REPORT_TTL = 30 * 86400


class ModelRegistry:
    """Model-lifecycle state in Redis. Thread-safe (redis-py pools connections)."""

    def __init__(self, client: redis.Redis, heartbeat_seconds: float = 30.0,
                 lock_seconds: float = 720.0) -> None:
        self._redis = client
        self.registration_ttl = max(1, round(heartbeat_seconds * 3 * 1000))  # ms
        self._lock_seconds = lock_seconds

    # --- use and registrations (pool children) ---------------------------------

    def record_use(self, models: Iterable[str], when: float | None = None) -> None:
        names = sorted(set(models))
        if not names:
            return
        stamp = time.time() if when is None else when
        pipe = self._redis.pipeline()
        pipe.hset(LAST_USED_KEY, mapping=dict.fromkeys(names, stamp))
        pipe.expire(LAST_USED_KEY, LAST_USED_TTL)
        pipe.execute()

    def last_used(self) -> dict[str, float]:
        raw = self._redis.hgetall(LAST_USED_KEY)
        return {_text(k): float(v) for k, v in raw.items()}

    @staticmethod
    def key(holder: Holder) -> str:
        return models_loaded_key(holder.host, holder.pid, holder.model)

    def register(self, holders: Iterable[Holder]) -> set[str]:
        """Write (or renew) the registrations; returns their keys."""
        keys = set()
        pipe = self._redis.pipeline()
        for holder in holders:
            key = self.key(holder)
            keys.add(key)
            pipe.set(key, json.dumps(holder.to_dict()), px=self.registration_ttl)
        if keys:
            pipe.execute()
        return keys

    def unregister(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            self._redis.delete(*keys)

    def register_configured(self, holders: Iterable[Holder]) -> set[str]:
        """Write (or renew) configured-model registrations; returns their keys."""
        keys = set()
        pipe = self._redis.pipeline()
        for holder in holders:
            key = models_configured_key(holder.host, holder.pid)
            keys.add(key)
            pipe.set(key, json.dumps(holder.to_dict()), px=self.registration_ttl)
        if keys:
            pipe.execute()
        return keys

    def loaded(self) -> list[Holder]:
        """Every live registration (any worker, any host)."""
        return self._holders(LOADED_PREFIX)

    def configured(self) -> list[Holder]:
        """The configured model of every live pool child (any worker, any host)."""
        return self._holders(CONFIGURED_PREFIX)

    def _holders(self, prefix: str) -> list[Holder]:
        keys = sorted(_text(k) for k in self._redis.scan_iter(match=prefix + "*",
                                                               count=1000))
        if not keys:
            return []
        holders = []
        for raw in self._redis.mget(keys):
            if raw is None:
                continue  # expired between SCAN and MGET
            try:
                holders.append(Holder.from_dict(json.loads(raw)))
            except (ValueError, KeyError, TypeError):
                continue  # not written by this project; it protects nothing
        return holders

    # --- audit -------------------------------------------------------------------

    def save_report(self, report: dict[str, Any]) -> None:
        raw = json.dumps(report)
        pipe = self._redis.pipeline()
        pipe.set(REPORT_KEY, raw, ex=REPORT_TTL)
        pipe.set(models_host_report_key(report['host'], report['model_dir']), raw,
                 ex=REPORT_TTL)
        pipe.execute()

    def latest_report(self) -> dict[str, Any] | None:
        raw = self._redis.get(REPORT_KEY)
        return json.loads(raw) if raw else None

    def latest_reports(self) -> list[dict[str, Any]]:
        """The latest report of each host's model directory, by host."""
        keys = sorted(_text(k) for k in self._redis.scan_iter(
            match=HOST_REPORT_PREFIX + "*", count=1000))
        reports = [json.loads(raw) for raw in (self._redis.mget(keys) if keys else [])
                   if raw is not None]
        return sorted(reports, key=lambda r: (r["host"], r["model_dir"]))

    def claim_host_run(self, run: str, scope: str) -> bool:
        """Claim one host directory's part of an every-host run; False when taken."""
        return bool(self._redis.set(models_run_key(run, scope), "1", nx=True,
                                    ex=RUN_TTL))

    @contextmanager
    def prune_lock(self, scope: str = "") -> Iterator[bool]:
        """Hold the prune lock of `scope` (`<host>:<model dir>`) if free.

        Yields whether it was acquired (never waits).

        It expires after `lock_seconds` (longer than the task's hard time limit), so a
        killed audit does not block pruning for ever.
        """
        key = models_prune_lock_key(scope)
        lock = self._redis.lock(key, timeout=self._lock_seconds, blocking=False)
        acquired = bool(lock.acquire())
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    lock.release()
                except LockError:
                    pass  # expired during a very long audit; nothing left to release

    def claim_scheduled_run(self, token: str, seconds: float) -> bool:
        """Claim this scheduled audit; False when another beat's copy already did."""
        if seconds <= 0:
            return True
        return bool(self._redis.set(SCHEDULED_KEY, token, nx=True,
                                    px=max(1, round(seconds * 1000))))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
