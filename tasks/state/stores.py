"""Redis-backed storage beside Celery's result backend: input blobs and the result cache.

Used by clients (upload) and worker children (read, cache). Keys live under `ocr:`;
every key has a TTL.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

import redis

from tasks.errors import BadRequest, InputNotFound
from tasks.state.boundary import redis_retry, transient_methods
from tasks.state.keys import BLOB_PREFIX, CACHE_PREFIX, JOB_PREFIX, OUTPUT_PREFIX

_BLOB_KEY = re.compile("^" + re.escape(BLOB_PREFIX) + r"[A-Za-z0-9_.-]{8,128}$")


def connect(redis_url: str) -> redis.Redis:
    """A client that reconnects on its own and retries through a Redis restart.

    A command retries with backoff for about half a minute (`boundary.redis_retry`);
    the stores then raise `TransientError`.
    """
    return redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30,
                                health_check_interval=30, retry=redis_retry())


@transient_methods("the blob store (Redis)")
class BlobStore:
    """Inputs too large for a message, stored by the client under `ocr:blob:<id>`."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def put(self, data: bytes) -> str:
        key = f"{BLOB_PREFIX}{uuid.uuid4().hex}"
        self._redis.set(key, data, ex=self._ttl)
        return key

    def get(self, key: str) -> bytes:
        if not isinstance(key, str) or not _BLOB_KEY.match(key):
            raise BadRequest("`blob` must be a key of the form ocr:blob:<id>")
        data = self._redis.get(key)
        if data is None:
            raise InputNotFound(f"no input stored under {key} (expired or never uploaded)")
        return _bytes(data)

    def delete(self, key: object) -> None:
        """Delete an input blob; anything that is not a blob key is left alone."""
        if isinstance(key, str) and _BLOB_KEY.match(key):
            self._redis.delete(key)


def cache_key(data: bytes, options: dict[str, Any]) -> str:
    """Content hash of the input plus the options and engine identity that shape the result."""
    digest = hashlib.sha256(data)
    digest.update(json.dumps(options, sort_keys=True).encode())
    return CACHE_PREFIX + digest.hexdigest()


@transient_methods("the result cache (Redis)")
class ResultCache:
    """Finished results by `cache_key`, kept as long as results are."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self._redis.get(key)
        return json.loads(raw) if raw else None

    def put(self, key: str, result: dict[str, Any]) -> None:
        self._redis.set(key, json.dumps(result), ex=self._ttl)


@transient_methods("the output store (Redis)")
class OutputStore:
    """Files produced for the client (searchable PDFs), kept as long as results are."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def put(self, job_id: str, data: bytes) -> str:
        key = f"{OUTPUT_PREFIX}{job_id}"
        self._redis.set(key, data, ex=self._ttl)
        return key

    def get(self, key: str) -> bytes | None:
        if not key.startswith(OUTPUT_PREFIX):
            raise BadRequest("not an output key")
        data = self._redis.get(key)
        return None if data is None else _bytes(data)


@transient_methods("job control (Redis)")
class JobControl:
    """Per-job facts clients and workers share: input blob, deadline, cancellation.

    `ocr:job:<id>` is a hash (fields `blob`, `deadline`, `filename`, `cancelled`);
    `ocr:job:<id>:cancelled` holds the result of a cancelled job (pages done so far).
    """

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def remember(self, job_id: str, **fields: str) -> None:
        key = JOB_PREFIX + job_id
        pipe = self._redis.pipeline()
        pipe.hset(key, mapping=dict(fields))  # type: ignore[arg-type]
        pipe.expire(key, self._ttl)
        pipe.execute()

    def info(self, job_id: str) -> dict[str, str]:
        raw = self._redis.hgetall(JOB_PREFIX + job_id)
        return {_text(k): _text(v) for k, v in raw.items()}

    def cancel(self, job_id: str) -> None:
        self.remember(job_id, cancelled="1")

    def is_cancelled(self, job_id: str) -> bool:
        return bool(self._redis.hexists(JOB_PREFIX + job_id, "cancelled"))

    def store_cancelled(self, job_id: str, result: dict[str, Any]) -> None:
        self._redis.set(f"{JOB_PREFIX}{job_id}:cancelled", json.dumps(result), ex=self._ttl)

    def cancelled_result(self, job_id: str) -> dict[str, Any] | None:
        raw = self._redis.get(f"{JOB_PREFIX}{job_id}:cancelled")
        return json.loads(raw) if raw else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
