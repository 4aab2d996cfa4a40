"""Redis-backed storage beside Celery's result backend: inputs, result cache, outputs.

Used by clients (upload) and worker children (read, cache). Keys live under `ocr:`;
every key has a TTL. `Stores` bundles them with the job's control record
(tasks/state/job_control.py) for the processes that run jobs.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from tasks.errors import BadRequest, InputNotFound
from tasks.state.boundary import transient_methods
from tasks.state.job_control import JobControl
from tasks.state.keys import BLOB_PREFIX, OUTPUT_PREFIX, output_key, result_key
from tasks.state.previews import PreviewStore
from tasks.state.sent_fields import start_inputs
from tasks.state.webhook_secrets import WebhookSecrets

_BLOB_KEY = re.compile("^" + re.escape(BLOB_PREFIX) + r"[A-Za-z0-9_.-]{8,128}$")


@transient_methods("the blob store (Redis)")
class BlobStore:
    """Inputs too large for a message, stored by the client under `ocr:blob:<id>`."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def put(self, data: bytes) -> str:
        key = new_blob_key()
        self.queue_put(self._redis, key, data)
        return key

    def queue_put(self, pipe: Any, key: str, data: bytes) -> None:
        """`put`'s command under `key`, queued on `pipe` (a job's record's round trip)."""
        pipe.set(_checked(key), data, ex=self._ttl)

    def get(self, key: str, most: int | None = None) -> bytes:
        """The stored input; with `most`, its first `most` + 1 bytes at the most.

        (A caller refusing inputs over `most` bytes never reads more of one.)
        """
        checked = _checked(key)
        kept = start_inputs.take(checked, most)  # read with the job's start
        if kept is not None:
            return _bytes(kept)
        data = self._redis.get(checked) if most is None else \
            self._redis.getrange(checked, 0, most)
        if data is None or (not data and not self._redis.exists(checked)):
            raise InputNotFound(f"no input stored under {key} (expired or never uploaded)")
        return _bytes(data)

    def delete(self, key: object) -> None:
        """Delete an input blob; anything that is not a blob key is left alone."""
        if keys := blob_keys([key]):
            self._redis.delete(*keys)


def blob_keys(keys: Iterable[object]) -> list[str]:
    """The blob keys among `keys` (what may be deleted as an input)."""
    return [key for key in keys if isinstance(key, str) and _BLOB_KEY.match(key)]


def new_blob_key() -> str:
    """A fresh blob key, for an input stored later (`BlobStore.queue_put`)."""
    return f"{BLOB_PREFIX}{uuid.uuid4().hex}"


def _checked(key: object) -> str:
    if not isinstance(key, str) or not _BLOB_KEY.match(key):
        raise BadRequest("`blob` must be a key of the form ocr:blob:<id>")
    return key


@transient_methods("the result cache (Redis)")
class ResultCache:
    """Finished results by `cache_key`, kept as long as results are.

    A hit stores no copy: its result refers to the job that read the document
    (`Outcome.stored`), whose result and files it keeps alive (`keep_source`).

    An entry remembers whether its input was an encrypted PDF: such a result may only
    be served to a request whose password opens the input (checked by the caller).
    """

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def get(self, key: str) -> tuple[dict[str, Any], bool] | None:
        """(result, input was encrypted), or None."""
        raw = self._redis.get(key)
        if not raw:
            return None
        entry = json.loads(raw)
        return dict(entry["result"]), bool(entry["encrypted"])

    def put(self, key: str, result: dict[str, Any], *, encrypted: bool) -> None:
        entry = {"result": result, "encrypted": encrypted}
        self._redis.set(key, json.dumps(entry), ex=self._ttl)

    def keep_source(self, source: str) -> None:
        """A hit refers to job `source`'s stored result and files: kept at least a TTL.

        Never shortened (EXPIRE ... GT): another hit may hold them longer. One round trip.
        """
        if not source:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key in (result_key(source), output_key(source)):
            pipe.expire(key, self._ttl, gt=True)
        pipe.execute()


@transient_methods("the output store (Redis)")
class OutputStore:
    """Files produced for the client (searchable PDFs), kept as long as results are."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def put(self, job_id: str, data: bytes) -> str:
        key = output_key(job_id)
        self._redis.set(key, data, ex=self._ttl)
        return key

    def previews(self) -> PreviewStore:
        """The jobs' page previews, kept as long as their outputs, in the same Redis."""
        return PreviewStore(self._redis, self._ttl)

    def get(self, key: str) -> bytes | None:
        if not key.startswith(OUTPUT_PREFIX):
            raise BadRequest("not an output key")
        data = self._redis.get(key)
        return None if data is None else _bytes(data)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


@dataclass
class Stores:
    """The Redis-backed stores a job uses."""

    blobs: BlobStore
    cache: ResultCache
    outputs: OutputStore
    control: JobControl

    @property
    def previews(self) -> PreviewStore:
        """The jobs' page previews (the outputs' TTL), in the same Redis."""
        return self.outputs.previews()

    @property
    def redis(self) -> redis.Redis:
        """The stores' Redis (what a result's reader reads beside it: corrections)."""
        return self.control._redis

    @property
    def webhook_secrets(self) -> WebhookSecrets:
        """API clients' callback signing secrets, in the same Redis."""
        return WebhookSecrets(self.control._redis)
