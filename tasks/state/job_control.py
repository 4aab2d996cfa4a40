"""A job's control record and its end claim: what clients and workers share about a job.

Runs in every process that sends, runs, cancels or ends jobs (clients, the `api`
process, worker pool children, the worker parent, the control worker). A job's start
reads its end claim and cancel mark in one round trip, writing its STARTED record in
it; its end takes the claim and stores its result in one atomic step, and where
nothing has to happen between the two (no callback, no replica to wait for) finishes
the ending in that step too (tasks/lifecycle/job_exit.py).
"""

from __future__ import annotations

import enum
import json
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import redis

from tasks.errors import BadRequest, InputNotFound
from tasks.records.jobs import Broadcast, ResultRecord
from tasks.records.redis_target import RedisTarget
from tasks.records.request import SEALED_OPTIONS, SEALED_TOKEN
from tasks.state import job_notices, job_scripts, lua
from tasks.state.boundary import transient_methods
from tasks.state.callback_outbox import CallbackOutbox, Delivery, write_parts
from tasks.state.keys import (
    BLOB_PREFIX,
    api_inflight_key,
    doc_key,
    job_cancelled_key,
    job_ended_key,
    job_key,
    job_notice_key,
    job_summary_key,
    sealed_key,
)
from tasks.state.replicas import hold_kept
from tasks.state.sent_fields import AS_SENT, as_sent, start_inputs

# Inputs uploaded through the HTTP API: ocr:blob:api.<client>.<32 hex>; the key names
# the job owner (`api:<client>`) that alone may read it.
_OWNED_BLOB = re.compile("^" + re.escape(BLOB_PREFIX) + r"api\.(?P<client>[A-Za-z0-9_.-]+)"
                         r"\.[0-9a-f]{32}$")


log = logging.getLogger(__name__)


class CarriedWrites:
    """The writes one job's ending carries in the end claim's round trip.

    Runs in worker pool children (a document's task, `tasks/queue/job_task.py`).
    - What it carries: a page's preview (`PreviewStore.queue_put`) and its count in the
      client's usage (`PageUsage.queue_counted`), queued as the job reads its pages.
    - When they go: `JobControl.claim_end` sends them in its pipeline, before the
      claim's own command. So they are in Redis by the time the result is, and cost the
      ending no round trip of their own.
    - A job that names a `result_url` writes its previews at once: their delivery beside
      the result object reads them.
    - A carried command that fails (a key of the wrong type, Redis out of memory) is
      logged and dropped, and the ending goes on: a preview is not the result.
    - Where the ending never runs (the child is killed, a transient error retries the
      task), nothing carried is written; the run that ends the job writes its own.
    - A script the server does not know (after a restart) is loaded and sent again after
      the claim (tasks/state/lua.py). Its count then lands just after the result.
    """

    def __init__(self) -> None:
        self._writes: list[tuple[str, Callable[[Any], None]]] = []

    def add(self, what: str, write: Callable[[Any], None]) -> None:
        """Carry `write` (it queues its commands on the pipeline it is given): `what` it is."""
        self._writes.append((what, write))

    def __len__(self) -> int:
        return len(self._writes)

    def queue(self, pipe: Any) -> list[str]:
        """Queue every carried write on `pipe`; what each command queued is part of."""
        names: list[str] = []
        for what, write in self._writes:
            before = len(pipe)
            write(pipe)
            names += [what] * (len(pipe) - before)
        self._writes.clear()
        return names

    @staticmethod
    def report(job_id: str, names: list[str], answers: list[Any]) -> None:
        """Log the carried commands of `names` whose `answers` (in order) are errors."""
        for what, answer in zip(names, answers, strict=False):
            if isinstance(answer, Exception):
                log.warning("job %s: %s not written with its ending: %s", job_id, what,
                            answer)


# Writes the field/value pairs ARGV[2..] into the hash KEYS[1] and sets its TTL (ARGV[1]).
_REMEMBER = lua.Script("""
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
""")


@transient_methods("job control (Redis)")
class JobControl:
    """Per-job facts clients and workers share: input blob, deadline, cancellation.

    `ocr:job:<id>` is a hash (fields `blob`, `deadline`, `filename`, `queue`, `client`,
    `owner`, `prefixes`, `result_prefixes`, `cancelled` and `callback`);
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
            _REMEMBER.run(self._redis, [job_key(job_id)], [self._ttl, *pairs])

    def remember_in(self, pipe: Any, job_id: str, fields: dict[str, str]) -> None:
        """`remember`, queued in `pipe` (no transaction; run by `lua.execute`)."""
        pairs = [part for name, value in fields.items() for part in (name, value)]
        if pairs:
            _REMEMBER.queue(pipe, [job_key(job_id)], [self._ttl, *pairs])

    def info(self, job_id: str) -> dict[str, str]:
        raw = self._redis.hgetall(job_key(job_id))
        return {_text(k): _text(v) for k, v in raw.items()}

    def field_of(self, job_ids: list[str], name: str) -> list[str | None]:
        """Field `name` of each job's control hash, in order (None where unset): one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(job_key(job_id), name)
        return [None if value is None else _text(value) for value in pipe.execute()]

    def cancel(self, job_id: str) -> None:
        """Mark the job cancelled: in its control hash, and beside its document's meta.

        The second mark is what a fanned-out PDF's page tasks read with the meta
        (`DocumentJoin.running`).
        """
        pipe = self._redis.pipeline(transaction=False)
        _REMEMBER.queue(pipe, [job_key(job_id)], [self._ttl, "cancelled", "1"])
        pipe.set(doc_key(job_id, "cancel"), "1", ex=self._ttl)
        lua.execute(pipe)

    def at_start(self, job_id: str, started: ResultRecord | None = None,
                 input_blob: tuple[str, int] | None = None) -> tuple[bool, bool]:
        """Whether the job has ended (its end claim is set), and whether it is cancelled.

        One round trip. Its `owner` and `accepted`, read with its cancel mark, are kept
        for `owner` and `accepted` (written once, before it was sent). Unless the job
        has ended or is cancelled (a redelivery must not hide an ending already stored),
        `started`, its STARTED record, is stored in that round trip, and its input
        `input_blob` (a blob key, and the most bytes the job may read) is read in it,
        where the job's own record names that blob (its sender wrote it there), and
        kept for the job's own read (`BlobStore.get`: tasks/state/sent_fields.py), which
        follows the task's checks of what the job may name (`check_references`).
        """
        keys = [job_ended_key(job_id), job_key(job_id), job_key(job_id), job_key(job_id)]
        args: list[Any] = ["", "", "", "cancelled", *AS_SENT]
        if started is not None:
            keys[2] = started.key
            args[:2] = [started.text, started.ttl or ""]
        if input_blob is not None:
            keys[3], args[2] = input_blob
        ended, data, cancelled, *sent = job_scripts.AT_START.run(self._redis, keys, args)
        as_sent.keep(job_id, tuple(sent))
        if input_blob is not None and data is not None:
            start_inputs.keep(input_blob[0], input_blob[1], data)
        return bool(ended), cancelled is not None

    def claim_end(self, job_id: str, holder: str, record: ResultRecord | None = None, *,
                  ended: str = "", freed: Sequence[str] = (),
                  carried: CarriedWrites | None = None,
                  told: Broadcast | None = None, client: str | None = None,
                  callbacks: Sequence[Delivery] = (), summary: str = "") -> bool:
        """Take the right to end the job (`ocr:job:<id>:ended`); once only.

        The claim names its `holder` (`<host>:<pid>`) until the ending is done
        (`mark_ended`), so that a holder killed halfway can be told (`end_holder`).
        With `record`, the job's result record is stored and published (for Celery
        clients blocked on its key) in the same atomic step, only when the claim is
        taken; with `ended` (the job's status) too, the ending is done in that step as
        well, as `mark_ended(job_id, ended, freed, client)` does after it; with `told` (the
        ending's event for monitors, on this server's PUB/SUB) that step publishes it
        after the record; the job's `summary` (JSON: `tasks.records.jobs.job_summary`)
        is stored beside the record. The ending's `callbacks` go into the outbox in that
        step too (tasks/state/callback_outbox.py; with `record` only). The `carried`
        writes (`CarriedWrites`) go first in the same round trip, claimed or not.
        """
        pipe, names = None, []
        if carried:
            pipe = self._redis.pipeline(transaction=False)
            names = carried.queue(pipe)
        if record is None:
            answer = (self._redis if pipe is None else pipe).set(
                job_ended_key(job_id), holder, nx=True, ex=self._ttl)
        else:
            in_flight, member = _in_flight(job_id, client)
            outbox_keys, outbox_args = write_parts(list(callbacks), self._ttl)
            keys = [job_ended_key(job_id), record.key, job_notice_key(job_id), in_flight,
                    job_summary_key(job_id), *outbox_keys, *freed]
            args = [holder, self._ttl, record.text, record.ttl or "", ended, ENDING_DONE,
                    job_notices.FIELD, max(1, int(self._ttl)), member, len(callbacks),
                    *outbox_args[:2], *(("", "") if told is None
                                        else (told.topic, told.message)), summary,
                    *outbox_args[2:]]
            answer = (job_scripts.CLAIM_END.run(self._redis, keys, args) if pipe is None
                      else job_scripts.CLAIM_END.queue(pipe, keys, args))
        if pipe is None:
            return bool(answer)
        got = lua.answers(pipe)
        CarriedWrites.report(job_id, names, got)
        if isinstance(got[-1], Exception):
            raise got[-1]
        return bool(got[-1])

    def put_callbacks(self, callbacks: Sequence[Delivery]) -> None:
        """Write an ending's callbacks whose result the claim's step did not store."""
        CallbackOutbox(self._redis, self._ttl).put(list(callbacks))

    def end_holder(self, job_id: str) -> str | None:
        """Who holds the job's end claim while its ending runs; None: unclaimed or done."""
        value = self._redis.get(job_ended_key(job_id))
        if value is None or _text(value) in (ENDING_DONE, "1"):
            return None
        return _text(value)

    def take_over_end(self, job_id: str, holder: str, new_holder: str) -> bool:
        """Move the claim from `holder` to `new_holder` (atomic); False if it moved."""
        return bool(job_scripts.TAKE_OVER_END.run(self._redis, [job_ended_key(job_id)],
                                              [holder, new_holder]))

    def mark_ended(self, job_id: str, holder: str, status: str = "",
                   freed: Sequence[str] = (), client: str | None = None,
                   summary: str = "") -> EndMark:
        """The ending is done: the claim no longer names its `holder` (its TTL kept).

        With `status`, the job's ending notice too, in the same atomic step
        (tasks/state/job_notices.py): what waiting clients block on. The keys `freed`
        (the job's join and inputs) are deleted first, in that step too, and the job
        leaves the jobs in flight of its `client` (`ocr:api:inflight:<client>`, counted
        by tasks/state/client_rules.py; None: no client's), and its `summary` is
        stored (where given: an ending `claim_end` stored no record for). Only while the
        claim names `holder`: a server without the claim (its step was lost with a
        failover), or one where another holder claimed since, is left as it is.
        """
        in_flight, member = _in_flight(job_id, client)
        keys = [job_ended_key(job_id), job_notice_key(job_id), in_flight,
                job_summary_key(job_id), *freed]
        answer = int(job_scripts.MARK_ENDED.run(self._redis, keys, [
            holder, ENDING_DONE, status, job_notices.FIELD, max(1, int(self._ttl)),
            member, summary]))
        return {1: EndMark.DONE, 0: EndMark.LOST}.get(answer, EndMark.ELSEWHERE)

    def keep(self, job_id: str, target: RedisTarget, *, ending: bool = False) -> bool:
        """Hold until `target.min_replicas` replicas have the job's writes (Redis WAIT).

        Every write this process made so far, the job's record or `ending` (its end
        claim, result and all before) included: one more write to that key (its TTL
        unchanged) and a WAIT on it. False when the replicas did not answer within
        `target.replica_timeout` s.
        """
        key = job_ended_key(job_id) if ending else job_key(job_id)
        return hold_kept(self._redis, key, target, target.replica_timeout)

    def release_end(self, job_id: str, holder: str | None = None) -> None:
        """Drop the end claim; with `holder`, only while the claim names that holder."""
        if holder is None:
            self._redis.delete(job_ended_key(job_id))
        else:
            job_scripts.RELEASE_END.run(self._redis, [job_ended_key(job_id)], [holder])

    def has_ended(self, job_id: str) -> bool:
        return bool(self._redis.exists(job_ended_key(job_id)))

    def record_callback(self, job_id: str, delivery: dict[str, Any]) -> None:
        """How the job's `callback_url` delivery went (field `callback`, JSON)."""
        self.remember(job_id, callback=json.dumps(delivery))

    def callback(self, info: dict[str, str]) -> dict[str, Any] | None:
        """The delivery record in a job's `info()`, or None before any attempt ended."""
        raw = info.get("callback")
        return json.loads(raw) if raw else None

    def seal_in(self, pipe: Any, fields: dict[str, str], ttl: int) -> str:
        """Queue `fields` (SEALED_OPTIONS) in `pipe` under a fresh random name: that name."""
        token = secrets.token_hex(16)
        pipe.hset(sealed_key(token), mapping=fields)
        pipe.expire(sealed_key(token), ttl)
        return token

    def seal(self, fields: dict[str, str], ttl: int) -> str:
        """`seal_in` on its own: the fresh name `fields` are kept under."""
        with self._redis.pipeline() as pipe:
            token = self.seal_in(pipe, fields, ttl)
            pipe.execute()
        return token

    def unsealed(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """`kwargs` with the arguments their `sealed` names put back.

        InputNotFound when they are gone (expired); kwargs without a well-formed name
        are as they came (the request's decoding refuses a malformed one).
        """
        token = kwargs.get("sealed")
        if not isinstance(token, str) or not SEALED_TOKEN.match(token):
            return kwargs
        stored = {_text(k): _text(v) for k, v in self._redis.hgetall(sealed_key(token)).items()}
        if not stored:
            raise InputNotFound("the job's sealed arguments (password, ground truth) "
                                "have expired")
        return {**kwargs, **{k: v for k, v in stored.items() if k in SEALED_OPTIONS}}

    def sealed_password(self, token: str) -> str | None:
        """The password kept under the sealed name `token`; InputNotFound once it is gone."""
        return self.unsealed({"sealed": token}).get("password")

    def forget_sealed(self, token: str) -> None:
        """Delete the sealed arguments named `token` (read, and no longer needed)."""
        self._redis.delete(sealed_key(token))

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
        return self._prefixes(job_id, "prefixes")

    def result_prefixes(self, job_id: str) -> tuple[str, ...] | None:
        """Where the sending client writes results (field `result_prefixes`, a JSON list).

        None when the job names none (the operator's doors: under OCR_ALLOWED_URLS);
        empty for an API client without prefixes of its own: it writes nowhere. An
        unreadable field: nowhere.
        """
        return self._prefixes(job_id, "result_prefixes")

    def _prefixes(self, job_id: str, field: str) -> tuple[str, ...] | None:
        value = self._redis.hget(job_key(job_id), field)
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
        return bool(job_scripts.SET_PROGRESS_UNLESS_ENDED.run(
            self._redis, [job_ended_key(job_id), key, job_key(job_id)],
            [value, max(1, ttl), total]))

    def store_cancelled(self, job_id: str, result: dict[str, Any]) -> None:
        self._redis.set(job_cancelled_key(job_id), json.dumps(result), ex=self._ttl)

    def cancelled_result(self, job_id: str) -> dict[str, Any] | None:
        raw = self._redis.get(job_cancelled_key(job_id))
        return json.loads(raw) if raw else None


# The end claim's value once the ending finished (before, its holder's `<host>:<pid>`).
ENDING_DONE = "done"


class EndMark(enum.Enum):
    """What `JobControl.mark_ended` found: the claim its holder's, none, or another's."""

    DONE = "done"
    LOST = "lost"
    ELSEWHERE = "elsewhere"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _in_flight(job_id: str, client: str | None) -> tuple[str, str]:
    """The key and member an ending takes the job out of its client's jobs in flight by.

    No client: the job's end claim stands in for the key and no member is removed.
    """
    if client is None:
        return job_ended_key(job_id), ""
    return api_inflight_key(client), job_id
