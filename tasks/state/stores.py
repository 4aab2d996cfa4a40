"""Redis-backed storage beside Celery's result backend: input blobs and the result cache.

Used by clients (upload) and worker children (read, cache). Keys live under `ocr:`;
every key has a TTL.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from tasks.errors import BadRequest, InputNotFound
from tasks.records.redis_target import RedisTarget
from tasks.state import job_notices, lua
from tasks.state.boundary import transient_methods
from tasks.state.connection import hold_kept
from tasks.state.keys import (
    BLOB_PREFIX,
    OUTPUT_PREFIX,
    doc_key,
    job_cancelled_key,
    job_ended_key,
    job_key,
    output_key,
)
from tasks.state.previews import PreviewStore
from tasks.state.sent_fields import AS_SENT, as_sent
from tasks.state.webhook_secrets import WebhookSecrets

_BLOB_KEY = re.compile("^" + re.escape(BLOB_PREFIX) + r"[A-Za-z0-9_.-]{8,128}$")
# Inputs uploaded through the HTTP API: ocr:blob:api.<client>.<32 hex>; the key names
# the job owner (`api:<client>`) that alone may read it.
_OWNED_BLOB = re.compile("^" + re.escape(BLOB_PREFIX) + r"api\.(?P<client>[A-Za-z0-9_.-]+)"
                         r"\.[0-9a-f]{32}$")


# Writes the field/value pairs ARGV[2..] into the hash KEYS[1] and sets its TTL (ARGV[1]).
_REMEMBER = lua.Script("""
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
""")


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

    def get(self, key: str, most: int | None = None) -> bytes:
        """The stored input; with `most`, its first `most` + 1 bytes at the most.

        (A caller refusing inputs over `most` bytes never reads more of one.)
        """
        checked = _checked(key)
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


def _checked(key: object) -> str:
    if not isinstance(key, str) or not _BLOB_KEY.match(key):
        raise BadRequest("`blob` must be a key of the form ocr:blob:<id>")
    return key


@transient_methods("the result cache (Redis)")
class ResultCache:
    """Finished results by `cache_key`, kept as long as results are.

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


@transient_methods("job control (Redis)")
class JobControl:
    """Per-job facts clients and workers share: input blob, deadline, cancellation.

    `ocr:job:<id>` is a hash (fields `blob`, `deadline`, `filename`, `queue`, `client`,
    `owner`, `prefixes`, `cancelled`, `callback` and `callback_event`);
    `ocr:job:<id>:cancelled` holds the result of a cancelled job (pages done so far);
    `ocr:doc:<id>:cancel` marks a cancel asked, beside a fanned-out PDF's meta;
    `ocr:job:<id>:ended` is the claim of the one exit (tasks/lifecycle/job_exit.py).
    """

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self._ttl = ttl

    def remember(self, job_id: str, **fields: str) -> None:
        """Write `fields` into the job's control hash and give it its TTL, in one step."""
        pairs = [part for name, value in fields.items() for part in (name, value)]
        if pairs:
            _REMEMBER(self._redis, [job_key(job_id)], [self._ttl, *pairs])

    def remember_in(self, pipe: Any, job_id: str, fields: dict[str, str]) -> None:
        """`remember`, queued in `pipe` (no transaction; run by `lua.execute`)."""
        pairs = [part for name, value in fields.items() for part in (name, value)]
        if pairs:
            _REMEMBER.queue(pipe, [job_key(job_id)], [self._ttl, *pairs])

    def info(self, job_id: str) -> dict[str, str]:
        raw = self._redis.hgetall(job_key(job_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    def cancel(self, job_id: str) -> None:
        """Mark the job cancelled: in its control hash, and beside its document's meta.

        The second mark is what a fanned-out PDF's page tasks read with the meta
        (`DocumentJoin.running`).
        """
        pipe = self._redis.pipeline(transaction=False)
        _REMEMBER.queue(pipe, [job_key(job_id)], [self._ttl, "cancelled", "1"])
        pipe.set(doc_key(job_id, "cancel"), "1", ex=self._ttl)
        lua.execute(pipe)

    def at_start(self, job_id: str) -> tuple[bool, bool]:
        """Whether the job has ended (its end claim is set), and whether it is cancelled.

        One round trip (EXISTS, HMGET). Its `owner` and `accepted`, read with its cancel
        mark, are kept for `owner` and `accepted` (written once, before it was sent).
        """
        pipe: Any = self._redis.pipeline(transaction=False)
        ended, (cancelled, owner, accepted) = pipe.exists(job_ended_key(job_id)).hmget(
            job_key(job_id), "cancelled", *AS_SENT).execute()
        as_sent.keep(job_id, (owner, accepted))
        return bool(ended), cancelled is not None

    def claim_end(self, job_id: str, holder: str) -> bool:
        """Take the right to end the job (`ocr:job:<id>:ended`); once only.

        The claim names its `holder` (`<host>:<pid>`) until the ending is done
        (`mark_ended`), so that a holder killed halfway can be told (`end_holder`).
        """
        return bool(self._redis.set(job_ended_key(job_id), holder, nx=True, ex=self._ttl))

    def end_holder(self, job_id: str) -> str | None:
        """Who holds the job's end claim while its ending runs; None: unclaimed or done."""
        value = self._redis.get(job_ended_key(job_id))
        if value is None or _text(value) in (ENDING_DONE, "1"):
            return None
        return _text(value)

    def take_over_end(self, job_id: str, holder: str, new_holder: str) -> bool:
        """Move the claim from `holder` to `new_holder` (atomic); False if it moved."""
        return bool(_TAKE_OVER_END(self._redis, [job_ended_key(job_id)], [holder, new_holder]))

    def mark_ended(self, job_id: str, status: str = "",
                   freed: Sequence[str] = ()) -> None:
        """The ending is done: the claim no longer names a holder (its TTL kept).

        With `status`, the job's ending notice too, in the same round trip
        (tasks/state/job_notices.py): what waiting clients block on. The keys `freed`
        (the job's join and inputs) are deleted first, in that round trip too.
        """
        pipe = self._redis.pipeline(transaction=False)
        if freed:
            pipe.delete(*freed)
        pipe.set(job_ended_key(job_id), ENDING_DONE, xx=True, keepttl=True)
        if status:
            job_notices.announce(pipe, job_id, status, self._ttl)
        pipe.execute()

    def notify_ended(self, job_id: str, status: str) -> None:
        """Write the ending notice of a job ended outside the one exit (a refusal)."""
        job_notices.announce(self._redis.pipeline(transaction=False), job_id, status,
                             self._ttl).execute()

    def keep(self, job_id: str, target: RedisTarget, *, ending: bool = False) -> bool:
        """Hold until `target.min_replicas` replicas have the job's writes (Redis WAIT).

        Every write this process made so far, the job's record or `ending` (its end
        claim, result and all before) included: one more write to that key (its TTL
        unchanged) and a WAIT on it. False when the replicas did not answer within
        `target.replica_timeout` s.
        """
        key = job_ended_key(job_id) if ending else job_key(job_id)
        return hold_kept(self._redis, key, target, target.replica_timeout)

    def release_end(self, job_id: str) -> None:
        self._redis.delete(job_ended_key(job_id))

    def has_ended(self, job_id: str) -> bool:
        return bool(self._redis.exists(job_ended_key(job_id)))

    def record_callback(self, job_id: str, delivery: dict[str, Any], event: str = "") -> None:
        """How the job's `callback_url` delivery went (field `callback`, JSON).

        `event`: the ending it delivered (field `callback_event`), so that a message of
        the same delivery that comes back is not POSTed again.
        """
        fields = {"callback": json.dumps(delivery)}
        if event:
            fields["callback_event"] = event
        self.remember(job_id, **fields)

    def callback(self, info: dict[str, str]) -> dict[str, Any] | None:
        """The delivery record in a job's `info()`, or None before any attempt ended."""
        raw = info.get("callback")
        return json.loads(raw) if raw else None

    def client(self, job_id: str) -> str:
        """The client the job was sent under ("" when none was recorded)."""
        value = self._redis.hget(job_key(job_id), "client")
        return "" if value is None else _text(value)

    def accepted(self, job_id: str) -> float | None:
        """When the job's client enqueued it (epoch seconds; field `accepted`), if known."""
        value = self._as_sent(job_id, "accepted")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    def owner(self, job_id: str) -> str:
        """Who sent the job: `api:<client>` for the HTTP API, "" otherwise."""
        value = self._as_sent(job_id, "owner")
        return "" if value is None else _text(value)

    def _as_sent(self, job_id: str, field: str) -> Any:
        known = as_sent.get(job_id)
        if known is not None:
            return known[AS_SENT.index(field)]
        return self._redis.hget(job_key(job_id), field)

    def url_prefixes(self, job_id: str) -> tuple[str, ...] | None:
        """The sending client's own URL prefixes (field `prefixes`, a JSON list).

        None when the job names none (a client held to OCR_ALLOWED_URLS alone); an
        unreadable field holds the job to no URL at all (an empty tuple).
        """
        value = self._redis.hget(job_key(job_id), "prefixes")
        if value is None:
            return None
        try:
            prefixes = json.loads(value)
        except ValueError:
            return ()
        if not isinstance(prefixes, list):
            return ()
        return tuple(p for p in prefixes if isinstance(p, str))

    def check_references(self, job_id: str, blob: object, merge_from: object) -> None:
        """Refuse (`bad_request`) a job that names another owner's input or job.

        Called by workers before a job reads its input. `merge_from` must name a job
        of the same owner (jobs without one: owner ""); a blob uploaded through the
        HTTP API (`ocr:blob:api.<client>.<hex>`) only serves jobs of `api:<client>`,
        and a job of an API client only reads the blob recorded for it or for its
        `merge_from` job. Jobs from Celery-protocol senders have no owner: whoever can
        write to the broker is trusted (docs/security.md).
        """
        owner = self.owner(job_id)
        if isinstance(merge_from, str) and merge_from and self.owner(merge_from) != owner:
            raise BadRequest("`merge_from` names a job of another client")
        if not isinstance(blob, str):
            return
        owned = _OWNED_BLOB.match(blob)
        if owned and owner != f"api:{owned.group('client')}":
            raise BadRequest("`blob` names an input of another client")
        if owner:
            recorded = {_text(b) for b in self._redis.hmget(job_key(job_id), "blob")
                        if b is not None}
            if isinstance(merge_from, str) and merge_from:
                recorded |= {_text(b) for b in self._redis.hmget(job_key(merge_from),
                                                                  "blob") if b is not None}
            if blob not in recorded:
                raise BadRequest("`blob` is not this job's input")

    def store_progress(self, job_id: str, key: str | bytes, value: str | bytes, ttl: int,
                       total: int) -> bool:
        """SET progress `key` to `value` (EX `ttl`) and the page count, unless ended.

        Atomic (Lua): nothing is written once the job has ended (its end claim).

        The count (field `total`) outlives the progress record: a cancelled job's
        status keeps it (`tasks.state.job_state`).
        """
        return bool(_SET_PROGRESS_UNLESS_ENDED(
            self._redis, [job_ended_key(job_id), key, job_key(job_id)],
            [value, max(1, ttl), total]))

    def store_cancelled(self, job_id: str, result: dict[str, Any]) -> None:
        self._redis.set(job_cancelled_key(job_id), json.dumps(result), ex=self._ttl)

    def cancelled_result(self, job_id: str) -> dict[str, Any] | None:
        raw = self._redis.get(job_cancelled_key(job_id))
        return json.loads(raw) if raw else None


# The end claim's value once the ending finished (before, its holder's `<host>:<pid>`).
ENDING_DONE = "done"

_TAKE_OVER_END = lua.Script("""
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
""")

_SET_PROGRESS_UNLESS_ENDED = lua.Script("""
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('set', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('hset', KEYS[3], 'total', ARGV[3])
return 1
""")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
    def webhook_secrets(self) -> WebhookSecrets:
        """API clients' callback signing secrets, in the same Redis."""
        return WebhookSecrets(self.control._redis)
