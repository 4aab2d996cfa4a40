"""What a fanned-out document's start and a page's record write to Redis, and in how many commands.

A real Redis (the tests' own, its INFO commandstats counting commands run inside
scripts too) holds the join; no Celery, no worker: the state layer alone.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from tasks.records.jobs import DocumentMeta, Job
from tasks.records.redis_target import RedisTarget
from tasks.records.request import JobRequest
from tasks.records.results import DocumentResult, PageRecord
from tasks.state.connection import connect
from tasks.state.join import DocumentJoin, ProgressWrite
from tasks.state.keys import doc_key, job_ended_key, job_key
from tasks.state.usage import PageUsage
from tasks.state.usage_counts import (
    JOB_PAGES_TTL,
    USAGE_TTL,
    JobPages,
    day_key,
    held_key,
    job_pages_key,
    month_key,
    quiet_jobs,
)

TOTAL = 6
NEW_YEARS_EVE = dt.datetime(2026, 12, 31, 23, 0, tzinfo=dt.UTC).timestamp()


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(RedisTarget(redis_url))
    client.flushdb()
    yield client


def meta_of(job_id: str) -> DocumentMeta:
    return DocumentMeta(Job(job_id, JobRequest("blob", filename="doc.pdf"), "fake", 0.0),
                        TOTAL, list(range(1, TOTAL + 1)), [], "ocr-fake",
                        DocumentResult(filename="doc.pdf", status=None))


def progress_of(job_id: str) -> ProgressWrite:
    return ProgressWrite(f"progress-{job_id}", '{"done": ', ', "total": 6}', 60)


def commands(store: redis.Redis) -> dict[str, int]:
    """Commands by name since the last CONFIG RESETSTAT (that one left out)."""
    return {name.removeprefix("cmdstat_"): int(stat["calls"])
            for name, stat in store.info("commandstats").items()
            if name != "cmdstat_config|resetstat"}


def test_a_documents_start_writes_its_progress_and_page_count_in_its_script(
        store: redis.Redis) -> None:
    join = DocumentJoin(store, 600)
    join.start(meta_of("warm"), [], progress_of("warm"))  # the script loaded
    store.config_resetstat()
    assert join.start(meta_of("job-1"), [], progress_of("job-1"))
    # EVALSHA; EXISTS, SET meta, DEL escalation and pages (one DEL), SET progress, HSET
    # total: no EXPIRE of a pages hash that is not there, no progress script of its own
    assert commands(store) == {"evalsha": 1, "exists": 1, "set": 2, "del": 1, "hset": 1}
    assert json.loads(store.get("progress-job-1") or b"") == {"done": 0, "total": 6}
    assert 0 < store.ttl("progress-job-1") <= 60
    assert store.hget(job_key("job-1"), "total") == b"6"
    assert store.exists(doc_key("job-1", "pages")) == 0


def test_a_documents_start_counts_its_text_layer_pages_done(store: redis.Redis) -> None:
    join = DocumentJoin(store, 600)
    pages = [PageRecord(1, "text", source="text-layer"), PageRecord(4, "more",
                                                                     source="text-layer")]
    assert join.start(meta_of("job-2"), pages, progress_of("job-2"))
    assert json.loads(store.get("progress-job-2") or b"") == {"done": 2, "total": 6}
    assert store.hlen(doc_key("job-2", "pages")) == 2
    assert 0 < store.ttl(doc_key("job-2", "pages")) <= 600


def test_a_documents_start_after_its_ending_writes_nothing(store: redis.Redis) -> None:
    store.set(job_ended_key("job-3"), "done")
    join = DocumentJoin(store, 600)
    assert not join.start(meta_of("job-3"), [], progress_of("job-3"))
    assert store.exists("progress-job-3", job_key("job-3"), doc_key("job-3", "meta")) == 0


def test_a_meta_keeps_the_previous_release_s_shape_and_its_escalation_beside_it(
        store: redis.Redis) -> None:
    """The escalation is kept apart, with the meta's TTL, read in the meta's one MGET."""
    join = DocumentJoin(store, 600)
    plain = meta_of("job-5")
    meta = replace(plain, job=replace(plain.job, request=replace(
        plain.request, escalate="vlm-api", escalate_below=0.6)), escalated=[2])
    store.config_resetstat()
    assert join.start(meta, [])
    assert commands(store) == {"evalsha": 1, "exists": 1, "set": 2, "del": 1}
    stored = json.loads(store.get(doc_key("job-5", "meta")) or b"")
    assert stored == json.loads(plain.to_json())  # what the previous release reads
    assert json.loads(store.get(doc_key("job-5", "escalation")) or b"") == {
        "escalate": "vlm-api", "escalate_below": 0.6, "escalated": [2]}
    assert 0 < store.ttl(doc_key("job-5", "escalation")) <= store.ttl(doc_key("job-5", "meta"))
    store.config_resetstat()
    assert join.meta("job-5") == meta
    assert join.running("job-5") == (meta, False)
    assert join.find("job-5") == meta
    assert commands(store) == {"mget": 3}
    assert doc_key("job-5", "escalation") in join.keys("job-5")
    assert join.start(plain, [])  # the split written again, without escalation
    assert store.exists(doc_key("job-5", "escalation")) == 0
    assert join.meta("job-5") == plain
    assert join.start(meta, [])
    join.cleanup("job-5")
    assert store.exists(doc_key("job-5", "meta"), doc_key("job-5", "escalation")) == 0


def test_a_page_task_s_read_of_its_document_is_one_exists_and_not_the_meta(
        store: redis.Redis) -> None:
    """Whether the document runs and was cancelled: one EXISTS, whatever the meta's size."""
    join = DocumentJoin(store, 600)
    assert join.runs("job-4") == (False, False)  # not fanned out, or ended
    assert join.start(meta_of("job-4"), [])
    store.config_resetstat()
    assert join.runs("job-4") == (True, False)
    assert commands(store) == {"exists": 1}
    store.set(doc_key("job-4", "cancel"), "1")  # as `JobControl.cancel` marks it
    assert join.runs("job-4") == (True, True)
    join.cleanup("job-4")
    assert join.runs("job-4") == (False, False)
    store.set(doc_key("job-4", "cancel"), "1")  # a cancel met before the split's write
    assert join.runs("job-4") == (False, True)


def counted(job_id: str, *numbers: int) -> JobPages:
    return JobPages("billing", job_id, numbers, dt.date(2026, 12, 31))


def test_a_pages_record_counts_it_in_its_clients_usage_in_the_same_script(
        store: redis.Redis) -> None:
    join = DocumentJoin(store, 600)
    usage = PageUsage(store)
    store.hset(held_key("billing"), "job-4", 2)  # held as the job was sent
    assert join.start(meta_of("job-4"), [], progress_of("job-4"))
    assert join.record("job-4", [PageRecord(1, "one")], progress_of("job-4"),
                       counted("job-4", 1)) == 1
    store.config_resetstat()
    assert join.record("job-4", [PageRecord(2, "two")], progress_of("job-4"),
                       counted("job-4", 2)) == 2
    # one script: the usage's SADD, EXPIRE, the day's and the month's HINCRBY (their
    # TTLs set as the client's counts began), the hold's HEXISTS, HINCRBY and HDEL; the
    # end claim's EXISTS, HSET, HLEN and the progress SET
    assert commands(store) == {"evalsha": 1, "sadd": 1, "expire": 1, "hincrby": 3,
                               "hexists": 1, "hdel": 1, "exists": 1, "hset": 1, "hlen": 1,
                               "set": 1}
    assert json.loads(store.get("progress-job-4") or b"") == {"done": 2, "total": 6}
    assert usage.used("billing", NEW_YEARS_EVE) == (2, 2)
    assert store.hgetall(held_key("billing")) == {}  # its pages counted: the hold is gone
    assert 0 < store.ttl(day_key(dt.date(2026, 12, 31))) <= USAGE_TTL
    assert 0 < store.ttl(month_key(dt.date(2026, 12, 31))) <= USAGE_TTL
    # delivered again: recorded again, counted once; after the ending, counted, not
    # recorded
    assert join.record("job-4", [PageRecord(2, "two")], None, counted("job-4", 2)) == 2
    store.set(job_ended_key("job-4"), "done")
    assert join.record("job-4", [PageRecord(3, "three")], progress_of("job-4"),
                       counted("job-4", 3)) == -1
    assert usage.used("billing", NEW_YEARS_EVE) == (3, 3)
    assert store.hlen(doc_key("job-4", "pages")) == 2
    assert json.loads(store.get("progress-job-4") or b"") == {"done": 2, "total": 6}
    assert 0 < store.ttl(job_pages_key("job-4")) <= JOB_PAGES_TTL


def test_a_job_without_a_hold_is_counted_without_its_sets_ttl_and_hold_again(
        store: redis.Redis) -> None:
    """Its set has its TTL from the process's first count; no hold comes after its send."""
    join = DocumentJoin(store, 600)
    assert join.start(meta_of("job-6"), [])
    assert join.record("job-6", [PageRecord(1, "one")], None, counted("job-6", 1)) == 1
    assert 0 < store.ttl(job_pages_key("job-6")) <= JOB_PAGES_TTL
    store.config_resetstat()
    assert join.record("job-6", [PageRecord(2, "two")], None, counted("job-6", 2)) == 2
    # SADD, the day's and the month's HINCRBY; EXISTS, HSET, HLEN: no EXPIRE, no HEXISTS
    assert commands(store) == {"evalsha": 1, "sadd": 1, "hincrby": 2, "exists": 1,
                               "hset": 1, "hlen": 1}
    assert PageUsage(store).used("billing", NEW_YEARS_EVE) == (2, 2)


def test_a_failed_record_forgets_the_jobs_counted_without_a_hold(store: redis.Redis) -> None:
    """Redis may have restarted without its data: the next counts set the TTL again."""
    join = DocumentJoin(store, 600)
    assert join.start(meta_of("job-7"), [])
    assert join.record("job-7", [PageRecord(1, "one")], None, counted("job-7", 1)) == 1
    assert quiet_jobs.knows("job-7")
    store.delete(doc_key("job-7", "pages"))
    store.set(doc_key("job-7", "pages"), "not a hash")  # the record's HSET fails
    with pytest.raises(redis.ResponseError):
        join.record("job-7", [PageRecord(2, "two")], None, counted("job-7", 2))
    assert not quiet_jobs.knows("job-7")
