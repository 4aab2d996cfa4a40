"""A job's start and end in the fewest round trips, and what the end claim's one step keeps.

A real Redis (the tests' own database). The end claim stores the job's result record
in its own atomic step (`JobControl.claim_end`) and, with nothing to do between the
two, finishes the ending in it; a job's start writes its STARTED record with the read
of its end claim and cancel mark (`JobControl.at_start`). `StoringPorts` is a fake of
the queue layer's ports that gives a result record and records what else it was asked;
round trips are counted on the connection (`CountingConnection`, one per command sent
or pipeline). Faults are injected into the claim's step by a `JobControl` whose step
raises after running, or without running.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from tasks.errors import BadRequest, InputNotFound, TransientError
from tasks.lifecycle.claim_holders import holder_name
from tasks.lifecycle.job_exit import JobEnder
from tasks.records.jobs import Broadcast, JobStatus, Outcome, ResultRecord
from tasks.records.request import JobRequest
from tasks.records.results import DocumentResult
from tasks.settings import Settings
from tasks.state.callback_outbox import CallbackOutbox, Delivery
from tasks.state.job_control import ENDING_DONE, CarriedWrites, JobControl
from tasks.state.join import DocumentJoin
from tasks.state.keys import (
    CALLBACKS_DUE_KEY,
    CALLBACKS_WAKE_KEY,
    callback_key,
    job_ended_key,
    job_key,
    job_notice_key,
    preview_key,
)
from tasks.state.previews import PreviewStore
from tasks.state.stores import BlobStore
from tasks.state.usage import PageUsage, today
from tasks.state.usage_counts import JobPages

TTL = 600
BLOB = "ocr:blob:0123456789abcdef"


class CountingConnection(redis.Connection):
    """A connection that counts its round trips (each command, or pipeline, sent)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


@dataclass
class StoringPorts:
    """Fake `EndingPorts`: a result record for every ending; records the rest."""

    replicas: bool = False
    published: list[str] = field(default_factory=list)
    told: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)
    during_keep: Callable[[], None] | None = None
    event_topic: str | None = None  # where the claim's step publishes the event

    def result_record(self, outcome: Outcome) -> ResultRecord | None:
        text = json.dumps({"status": "SUCCESS", "result": outcome.public()})
        return ResultRecord(result_key(outcome.job_id), text, TTL)

    def publish(self, outcome: Outcome) -> None:
        self.published.append(outcome.job_id)

    def tell(self, outcome: Outcome) -> None:
        self.told.append(outcome.job_id)

    def told_by_claim(self, outcome: Outcome) -> Broadcast | None:
        if self.event_topic is None:
            return None
        return Broadcast(self.event_topic, json.dumps({"uuid": outcome.job_id}))

    def waits_for_replicas(self) -> bool:
        return self.replicas

    def keep(self, outcome: Outcome) -> None:
        self.kept.append(outcome.job_id)
        if self.during_keep is not None:
            self.during_keep()

    def record(self, outcome: Outcome) -> None:
        self.recorded.append(outcome.job_id)


class StepFails(JobControl):
    """A `JobControl` whose end claim's step raises: after running it, or instead."""

    def __init__(self, client: redis.Redis, ttl: int, *, runs: bool) -> None:
        super().__init__(client, ttl)
        self.runs = runs

    def claim_end(self, job_id: str, holder: str, record: ResultRecord | None = None, *,
                  ended: str = "", freed: Any = (), carried: Any = None,
                  told: Any = None, client: str | None = None, callbacks: Any = (),
                  summary: str = "") -> bool:
        if self.runs:
            super().claim_end(job_id, holder, record, ended=ended, freed=freed,
                              carried=carried, told=told, client=client,
                              callbacks=callbacks, summary=summary)
        raise TransientError("Redis went away with the claim's answer")


def result_key(job_id: str) -> str:
    return f"celery-task-meta-{job_id}"


@pytest.fixture
def store(own_redis_url: str) -> Iterator[redis.Redis]:
    pool = redis.ConnectionPool.from_url(own_redis_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    yield client
    client.close()


def outcome_for(job_id: str, **request: Any) -> Outcome:
    return Outcome(job_id, JobStatus.SUCCESS, JobRequest("blob", blob=BLOB, **request),
                   DocumentResult(status=JobStatus.SUCCESS, id=job_id, filename="x.png"))


def outbox(client: redis.Redis) -> list[Delivery]:
    """The deliveries waiting in the callback outbox, by id."""
    return CallbackOutbox(client, TTL).waiting()


def round_trips(action: Callable[[], Any]) -> tuple[Any, int]:
    before = CountingConnection.sent
    answer = action()
    return answer, CountingConnection.sent - before


def notice(client: redis.Redis, job_id: str) -> list[Any]:
    return client.xrange(job_notice_key(job_id))


def test_a_plain_ending_is_one_atomic_step(store: redis.Redis) -> None:
    """Claim, result and its PUBLISH, input freed, claim done and notice: one round trip."""
    control = JobControl(store, TTL)
    ports = StoringPorts()
    ender = JobEnder(control, DocumentJoin(store, TTL), ports)
    store.set(BLOB, b"input", ex=TTL)
    listener = store.pubsub()
    listener.subscribe(result_key("j1"))
    ender.end(outcome_for("warm"))  # the script loaded once (NOSCRIPT) before counting
    ended, trips = round_trips(lambda: ender.end(outcome_for("j1")))
    assert ended and trips == 1
    stored = json.loads(store.get(result_key("j1")))
    assert stored["result"]["id"] == "j1" and 0 < store.ttl(result_key("j1")) <= TTL
    assert store.get(job_ended_key("j1")) == ENDING_DONE.encode()
    assert 0 < store.ttl(job_ended_key("j1")) <= TTL
    assert [fields for _, fields in notice(store, "j1")] == [{b"status": b"SUCCESS"}]
    assert 0 < store.ttl(job_notice_key("j1")) <= TTL
    assert not store.exists(BLOB)
    deadline = time.monotonic() + 5
    message = None
    while message is None and time.monotonic() < deadline:
        message = listener.get_message(ignore_subscribe_messages=True, timeout=0.5)
    listener.close()
    assert message is not None and json.loads(message["data"])["result"]["id"] == "j1"
    assert ports.told == ["warm", "j1"] and ports.published == []
    assert ports.recorded == ["warm", "j1"] and ports.kept == ["warm", "j1"]


def messages(listener: Any, seconds: float) -> list[Any]:
    """What `listener` heard within `seconds` (subscriptions left out)."""
    heard, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            heard.append(json.loads(message["data"]))
    return heard


def test_the_monitors_event_is_published_by_the_claim_s_step(store: redis.Redis) -> None:
    """Handed over by the ports, the event goes in the claim's round trip; once only."""
    control = JobControl(store, TTL)
    ports = StoringPorts(event_topic="/0.celeryev/task.succeeded")
    ender = JobEnder(control, DocumentJoin(store, TTL), ports)
    listener = store.pubsub()
    listener.subscribe("/0.celeryev/task.succeeded")
    ender.end(outcome_for("warm"))
    ended, trips = round_trips(lambda: ender.end(outcome_for("e1")))
    assert ended and trips == 1
    assert not ender.end(outcome_for("e1"))  # ended already: no second event
    ended, _ = round_trips(lambda: ender.end(outcome_for("e2", callback_task="x.done")))
    heard = messages(listener, 1.0)
    listener.close()
    assert heard == [{"uuid": "warm"}, {"uuid": "e1"}, {"uuid": "e2"}]
    assert ports.told == [] and [d.target for d in outbox(store)] == ["x.done"]


def test_a_second_ender_stores_nothing(store: redis.Redis) -> None:
    control = JobControl(store, TTL)
    ports = StoringPorts()
    ender = JobEnder(control, DocumentJoin(store, TTL), ports)
    assert ender.end(outcome_for("j2"))
    first = store.get(result_key("j2"))
    later = outcome_for("j2")
    later.result = DocumentResult(status=JobStatus.SUCCESS, id="j2", filename="later.png")
    assert not ender.end(later)
    assert store.get(result_key("j2")) == first
    assert len(notice(store, "j2")) == 1 and ports.told == ["j2"]


def test_callbacks_are_written_in_the_step_that_stores_the_result(
        store: redis.Redis) -> None:
    """The outbox gets the job's callbacks with its result, once: a second ender adds none."""
    control = JobControl(store, TTL)
    store.hset(job_key("j3"), "owner", "api:acme")
    ports = StoringPorts()
    ender = JobEnder(control, DocumentJoin(store, TTL), ports)
    options = {"callback_task": "billing.done", "callback_queue": "billing",
               "callback_url": "https://example.com/hook"}
    seen: dict[str, Any] = {}
    ports.during_keep = lambda: seen.update(holder=control.end_holder("j3"),
                                            callbacks=len(outbox(store)),
                                            notice=notice(store, "j3"))
    assert ender.end(outcome_for("j3", **options))
    # with callbacks, the claim names its holder until its line is written
    assert seen == {"holder": holder_name(), "callbacks": 2, "notice": []}
    assert store.get(job_ended_key("j3")) == ENDING_DONE.encode()
    http, task = outbox(store)  # by id
    assert (task.id, task.kind, task.target, task.queue) == (
        "j3.SUCCESS.task", "task", "billing.done", "billing")
    assert task.body["id"] == "j3" and task.body["status"] == "SUCCESS"
    assert (http.id, http.target, http.owner) == (
        "j3.SUCCESS.http", "https://example.com/hook", "api:acme")
    assert http.body["event_id"] == "j3.SUCCESS" and 0 < store.ttl(http.key) <= TTL
    assert store.lrange(CALLBACKS_WAKE_KEY, 0, -1) == [b"1"]  # the sender's doorbell
    assert not ender.end(outcome_for("j3", **options))
    assert len(outbox(store)) == 2


def test_replicas_are_waited_for_before_the_notice(store: redis.Redis) -> None:
    control = JobControl(store, TTL)
    seen: dict[str, Any] = {}
    ports = StoringPorts(replicas=True,
                         during_keep=lambda: seen.update(notice=notice(store, "j4")))
    ender = JobEnder(control, DocumentJoin(store, TTL), ports)
    assert ender.end(outcome_for("j4"))
    assert seen == {"notice": []} and len(notice(store, "j4")) == 1


@pytest.mark.parametrize("callback", [False, True])
def test_an_ending_a_failover_may_have_lost_gives_its_claim_back(store: redis.Redis,
                                                                  callback: bool) -> None:
    """`keep` raises (written to a replaced primary): nothing told, the retry ends it.

    A claim kept would have the job's retry, and every redelivery of its message,
    ignored as ended: the job would never end.
    """
    control = JobControl(store, TTL)

    def replaced() -> None:
        raise TransientError("ended was written to a Redis primary the Sentinels have "
                             "replaced")

    ports = StoringPorts(replicas=True, during_keep=replaced)
    ender = JobEnder(control, DocumentJoin(store, TTL), ports)
    options = {"callback_task": "billing.done"} if callback else {}
    with pytest.raises(TransientError):
        ender.end(outcome_for("j4b", **options))
    assert not control.has_ended("j4b")
    assert ports.recorded == [] and notice(store, "j4b") == []
    ports.during_keep = None  # the retry, on the primary that stays
    assert ender.end(outcome_for("j4b", **options))
    assert store.get(job_ended_key("j4b")) == ENDING_DONE.encode()
    assert len(notice(store, "j4b")) == 1 and ports.recorded == ["j4b"]
    # the same ending written twice is one delivery
    assert [d.id for d in outbox(store)] == (["j4b.SUCCESS.task"] if callback else [])


@dataclass
class PublishingPorts(StoringPorts):
    """`StoringPorts` whose endings are stored by `publish` (as a failure's are)."""

    def result_record(self, outcome: Outcome) -> ResultRecord | None:
        return None


@pytest.mark.parametrize("ports_kind", [StoringPorts, PublishingPorts])
def test_an_ending_lost_after_keep_gave_up_is_written_again(store: redis.Redis,
                                                            ports_kind: type) -> None:
    """The claim's step lost with a primary whose replicas never confirmed it.

    `keep` gave up waiting and the ending went on (its callback sent) on the promoted
    replica, which holds neither claim nor result: the ending is written there again,
    the input freed once it stands, so that the job's restored message is ignored as
    ended (not run again, not failed on an input already freed).
    """
    control = JobControl(store, TTL)
    store.set(BLOB, b"input", ex=TTL)

    def failover() -> None:  # what the claim's step wrote is gone; the input is not
        store.delete(job_ended_key("j4d"), result_key("j4d"), CALLBACKS_DUE_KEY,
                     callback_key("j4d.SUCCESS.task"))

    ports = ports_kind(replicas=True, during_keep=failover)
    ender = JobEnder(control, DocumentJoin(store, TTL), ports)
    assert ender.end(outcome_for("j4d", callback_task="billing.done"))
    assert store.get(job_ended_key("j4d")) == ENDING_DONE.encode()
    assert control.at_start("j4d") == (True, False)  # the redelivery: ended
    assert len(notice(store, "j4d")) == 1 and not store.exists(BLOB)
    assert [d.target for d in outbox(store)] == ["billing.done"]  # written again too
    assert ports.recorded == ["j4d"]
    if ports_kind is StoringPorts:
        assert json.loads(store.get(result_key("j4d")))["status"] == "SUCCESS"
    else:
        assert ports.published == ["j4d", "j4d"]  # stored, then stored again


def test_an_ending_whose_claim_another_run_took_frees_nothing(store: redis.Redis) -> None:
    """After the failover a redelivery's run claimed first: its ending is left to it."""
    control = JobControl(store, TTL)
    store.set(BLOB, b"input", ex=TTL)

    def failover_then_claimed() -> None:
        store.delete(job_ended_key("j4e"), result_key("j4e"))
        assert control.claim_end("j4e", "elsewhere:2")

    ender = JobEnder(control, DocumentJoin(store, TTL),
                     StoringPorts(replicas=True, during_keep=failover_then_claimed))
    assert ender.end(outcome_for("j4e"))
    assert control.end_holder("j4e") == "elsewhere:2"
    assert store.exists(BLOB) and notice(store, "j4e") == []


def test_a_lost_ending_leaves_another_holder_s_claim(store: redis.Redis) -> None:
    """Given back only while the claim names this ender (another may have taken it)."""
    control = JobControl(store, TTL)

    def taken_over() -> None:
        store.set(job_ended_key("j4c"), "elsewhere:1", keepttl=True)
        raise TransientError("ended is not on the Redis primary")

    ender = JobEnder(control, DocumentJoin(store, TTL),
                     StoringPorts(replicas=True, during_keep=taken_over))
    with pytest.raises(TransientError):
        ender.end(outcome_for("j4c"))
    assert control.end_holder("j4c") == "elsewhere:1"


@pytest.mark.parametrize("callback", [False, True])
def test_a_step_that_ran_but_failed_to_answer(store: redis.Redis, callback: bool) -> None:
    """Done in its step: the job stays ended. Held by this ender: given back for its retry."""
    ports = StoringPorts()
    ender = JobEnder(StepFails(store, TTL, runs=True), DocumentJoin(store, TTL), ports)
    options = {"callback_task": "billing.done"} if callback else {}
    with pytest.raises(TransientError):
        ender.end(outcome_for("j5", **options))
    assert store.exists(job_ended_key("j5")) == (0 if callback else 1)
    # its callback written in the step: the retry's ending writes the same delivery
    assert ports.told == [] and len(outbox(store)) == (1 if callback else 0)


def test_a_step_that_did_not_run_leaves_another_holder_s_claim(store: redis.Redis) -> None:
    store.set(job_ended_key("j6"), "elsewhere:1", ex=TTL)
    ender = JobEnder(StepFails(store, TTL, runs=False), DocumentJoin(store, TTL),
                     StoringPorts())
    with pytest.raises(TransientError):
        ender.end(outcome_for("j6"))
    assert store.get(job_ended_key("j6")) == b"elsewhere:1"


def started(job_id: str) -> ResultRecord:
    return ResultRecord(result_key(job_id), '{"status": "STARTED"}', TTL)


def test_a_start_writes_its_record_in_its_one_round_trip(store: redis.Redis) -> None:
    control = JobControl(store, TTL)
    store.hset(job_key("s1"), mapping={"owner": "api:acme", "accepted": "12.5"})
    control.at_start("warm", started("warm"))  # the script loaded once before counting
    flags, trips = round_trips(lambda: control.at_start("s1", started("s1")))
    assert flags == (False, False) and trips == 1
    assert store.get(result_key("s1")) == b'{"status": "STARTED"}'
    assert 0 < store.ttl(result_key("s1")) <= TTL
    assert control.owner("s1") == "api:acme" and control.accepted("s1") == 12.5


def test_a_start_leaves_an_ended_or_cancelled_job_s_record(store: redis.Redis) -> None:
    control = JobControl(store, TTL)
    store.set(result_key("s2"), "SUCCESS record")
    store.set(job_ended_key("s2"), ENDING_DONE)
    assert control.at_start("s2", started("s2")) == (True, False)
    assert store.get(result_key("s2")) == b"SUCCESS record"
    store.hset(job_key("s3"), "cancelled", "1")
    assert control.at_start("s3", started("s3")) == (False, True)
    assert not store.exists(result_key("s3"))
    assert control.at_start("s4") == (False, False) and not store.exists(result_key("s4"))


def _jobs_of_input(store: redis.Redis, data: bytes,
                   *jobs: str) -> tuple[JobControl, BlobStore, str]:
    """An input stored, and `jobs` whose records name it, as their sender records them."""
    blobs = BlobStore(store, TTL)
    blob = blobs.put(data)
    for job_id in jobs:
        store.hset(job_key(job_id), "blob", blob)
    return JobControl(store, TTL), blobs, blob


def test_a_start_reads_the_input_its_job_then_reads_without_a_round_trip(
        store: redis.Redis) -> None:
    control, blobs, blob = _jobs_of_input(store, b"0123456789", "s5", "s6")
    control.at_start("warm", started("warm"))
    flags, trips = round_trips(lambda: control.at_start("s5", started("s5"), (blob, 4)))
    assert flags == (False, False) and trips == 1
    data, trips = round_trips(lambda: blobs.get(blob, most=4))
    assert (data, trips) == (b"01234", 0)  # the first `most` + 1 bytes, as GETRANGE reads
    assert round_trips(lambda: blobs.get(blob, most=4)) == (b"01234", 1)  # taken once
    # kept for the bound it was read with only; the whole input is read afresh
    control.at_start("s6", None, (blob, 4))
    assert round_trips(lambda: blobs.get(blob)) == (b"0123456789", 1)


def test_a_start_reads_no_input_of_an_ended_or_cancelled_job_nor_one_not_its_own(
        store: redis.Redis) -> None:
    control, blobs, blob = _jobs_of_input(store, b"input", "s7", "s8")
    store.set(job_ended_key("s7"), ENDING_DONE)
    store.hset(job_key("s8"), "cancelled", "1")
    assert control.at_start("s7", None, (blob, 100)) == (True, False)
    assert control.at_start("s8", None, (blob, 100)) == (False, True)
    assert round_trips(lambda: blobs.get(blob, most=100)) == (b"input", 1)
    # a message naming a blob its job's record does not name (another sender's input)
    store.hset(job_key("s12"), "blob", "ocr:blob:" + "1" * 32)
    control.at_start("s12", None, (blob, 100))
    control.at_start("s13", None, (blob, 100))  # no record at all
    assert round_trips(lambda: blobs.get(blob, most=100)) == (b"input", 1)
    gone = "ocr:blob:" + "0" * 32
    store.hset(job_key("s9"), "blob", gone)
    control.at_start("s9", None, (gone, 100))
    with pytest.raises(InputNotFound):
        blobs.get(gone, most=100)
    empty = blobs.put(b"")
    store.hset(job_key("s10"), "blob", empty)
    control.at_start("s10", None, (empty, 100))
    assert round_trips(lambda: blobs.get(empty, most=100)) == (b"", 0)


def _carrying(job_id: str, previews: PreviewStore, counted: JobPages) -> CarriedWrites:
    """What a one-page job's read carries to its ending: its preview and its page count."""
    carried = CarriedWrites()
    carried.add("the preview", functools.partial(previews.queue_put, job_id=job_id, page=1,
                                                 data=b"RIFF-webp"))
    carried.add("the count", functools.partial(PageUsage.queue_counted, counted=counted))
    return carried


def test_what_a_job_read_rides_with_its_ending(store: redis.Redis) -> None:
    """The preview and the page count go in the ending's one round trip, before its claim."""
    control = JobControl(store, TTL)
    ender = JobEnder(control, DocumentJoin(store, TTL), StoringPorts())
    previews = PreviewStore(store, TTL)
    day = today()
    ender.end(outcome_for("warm"), _carrying("warm", previews,  # scripts loaded
                                             JobPages("warm-client", "warm", (1,), day)))
    counted = JobPages("billing", "j10", (1,), day)
    ended, trips = round_trips(lambda: ender.end(outcome_for("j10"),
                                                 _carrying("j10", previews, counted)))
    assert ended and trips == 1
    assert previews.get("j10", 1) == b"RIFF-webp" and 0 < store.ttl(preview_key("j10", 1)) <= TTL
    assert int(store.hget(counted.keys()[1], "billing")) == 1
    assert store.get(job_ended_key("j10")) == ENDING_DONE.encode()
    # a second run of the job (redelivered) ends nothing and does not count its page twice
    again = _carrying("j10", previews, counted)
    assert not ender.end(outcome_for("j10"), again) and len(again) == 0
    assert int(store.hget(counted.keys()[1], "billing")) == 1


def test_a_carried_write_that_fails_is_logged_and_the_ending_stands(
        store: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    control = JobControl(store, TTL)
    ender = JobEnder(control, DocumentJoin(store, TTL), StoringPorts())
    counted = JobPages("broken", "j11", (1,), today())
    store.set(counted.keys()[1], "not a hash")  # the day's counts: the wrong type
    with caplog.at_level(logging.WARNING, logger="tasks.state.job_control"):
        assert ender.end(outcome_for("j11"), _carrying("j11", PreviewStore(store, TTL),
                                                       counted))
    assert store.get(job_ended_key("j11")) == ENDING_DONE.encode()
    assert store.exists(result_key("j11")) and store.exists(preview_key("j11", 1))
    [logged] = [r.getMessage() for r in caplog.records]
    assert logged.startswith("job j11: the count not written with its ending: ")
    assert "WRONGTYPE" in logged


@pytest.mark.parametrize(("state", "result"), [
    ("SUCCESS", {"status": "SUCCESS", "text": "ok"}), ("STARTED", {"pid": 7}),
    ("FAILURE", BadRequest("no such page"))])
def test_a_result_record_is_what_celery_itself_would_store(own_redis_url: str, state: str,
                                                           result: Any) -> None:
    """Written without Celery's backend, read back by it as its own (but the time)."""
    from tasks.queue.app import create_app
    from tasks.queue.result_records import result_record

    app = create_app(Settings.from_env({"REDIS_URL": own_redis_url}))
    backend = app.backend
    backend.store_result("celery-wrote", result, state)
    record = result_record(app, "we-wrote", result, state)
    store = backend.client
    store.set(record.key, record.text)
    theirs, ours = (backend.decode(store.get(result_key(job)))
                    for job in ("celery-wrote", "we-wrote"))
    assert (theirs.pop("date_done") is None) == (ours.pop("date_done") is None)
    assert (theirs.pop("task_id"), ours.pop("task_id")) == ("celery-wrote", "we-wrote")
    assert ours == theirs
