"""Pages per client per day and month (tasks/state/usage.py): counts, ranges, caps.

And the state's scripts run by SHA (tasks/state/lua.py), loaded again on NOSCRIPT.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
import redis

from tasks.errors import BadRequest, PageQuotaExceeded, TransientError
from tasks.state import lua
from tasks.state import usage as usage_module
from tasks.state.job_control import JobControl
from tasks.state.keys import API_CLIENTS_KEY, doc_key, job_key, usage_engines_key
from tasks.state.reservations import Reservations
from tasks.state.usage import PageCaps, PageUsage, date_range, over_cap
from tasks.state.usage_counts import held_key
from tests.losing_redis import losing_redis

NEW_YEARS_EVE = dt.datetime(2026, 12, 31, 23, 0, tzinfo=dt.UTC).timestamp()


def test_pages_by_day_and_month_and_the_caps(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    usage = PageUsage(client)
    usage.add("billing", 3, NEW_YEARS_EVE - 86400)
    usage.add("billing", 2, NEW_YEARS_EVE)
    usage.add("", 1, NEW_YEARS_EVE)
    usage.add("billing", 0, NEW_YEARS_EVE)  # nothing read: nothing written
    assert usage.used("billing", NEW_YEARS_EVE) == (2, 5)
    first, last = dt.date(2026, 12, 30), dt.date(2027, 1, 1)
    assert usage.by_day("billing", first, last) == {"2026-12-30": 3, "2026-12-31": 2}
    assert usage.every_client(first, last) == {"": {"2026-12-31": 1},
                                               "billing": {"2026-12-30": 3, "2026-12-31": 2}}
    assert 0 < client.ttl("ocr:usage:day:2026-12-31") <= 400 * 86400
    books = Reservations(client, 60, ended=lambda ids: [])

    def check(pages: int, caps: PageCaps) -> None:
        books.take("j", "billing", "", "", caps=caps, pages=pages, now=NEW_YEARS_EVE)
        books.usage.release("billing", "j")

    check(3, PageCaps(5, 8))  # 2 + 3 fits the day's 5
    with pytest.raises(PageQuotaExceeded) as over:
        check(4, PageCaps(5, 8))
    assert over.value.quota == {"period": "day", "cap": 5, "used": 2, "pages": 4,
                                "resets": "2027-01-01T00:00:00Z", "retry_after": 3601}
    with pytest.raises(PageQuotaExceeded) as monthly:
        check(4, PageCaps(None, 8))
    assert (monthly.value.quota["period"], monthly.value.quota["used"]) == ("month", 5)
    check(10**6, PageCaps(0, None))  # 0: no cap
    assert usage.caps("nobody") == PageCaps() and usage.caps("") == PageCaps()


def test_a_cap_a_day_on_one_engine(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.hset(usage_engines_key(dt.date(2026, 12, 31)), "vlm-api|billing", 2)
    client.hset(API_CLIENTS_KEY, "billing", json.dumps(
        {"engine_pages_per_day": {"vlm-api": 3, "rapidocr": 0}}))
    books = Reservations(client, 60, ended=lambda ids: [])
    caps = books.usage.caps("billing")
    assert caps.engines == (("vlm-api", 3),) and not caps.any  # 0: no cap on rapidocr
    books.engine_room("billing", "vlm-api", 1, caps, NEW_YEARS_EVE)  # 2 + 1 fits 3
    books.engine_room("billing", "tesseract", 10**6, caps, NEW_YEARS_EVE)
    with pytest.raises(PageQuotaExceeded) as over:
        books.take("j", "billing", "", "", caps=caps, pages=2, now=NEW_YEARS_EVE,
                   engine="vlm-api")  # the door's reservation
    assert over.value.quota["engine"] == "vlm-api" and over.value.quota["used"] == 2
    assert "cap of 3 vlm-api pages a day" in over.value.message
    # The worker's count of a job's pages: 2 read today and 2 more pass the cap of 3.
    with pytest.raises(PageQuotaExceeded):
        books.settle("j", "billing", 2, NEW_YEARS_EVE, engine="vlm-api")
    books.settle("j", "billing", 2, NEW_YEARS_EVE, engine="tesseract")


def test_a_monthly_cap_resets_on_the_first_of_the_next_month() -> None:
    refusal = over_cap("month", 10, 10, 1, dt.date(2026, 12, 31), NEW_YEARS_EVE)
    assert refusal.quota["resets"] == "2027-01-01T00:00:00Z"
    assert over_cap("month", 10, 10, 1, dt.date(2026, 2, 1))


def test_date_ranges() -> None:
    assert date_range(None, "2026-03-30") == (dt.date(2026, 3, 1), dt.date(2026, 3, 30))
    assert date_range("2026-01-01", "2026-01-01") == (dt.date(2026, 1, 1),) * 2
    for start, end in (("2026-02-30", None), ("2026-02-02", "2026-02-01"),
                       ("2025-01-01", "2026-12-31")):
        with pytest.raises(BadRequest):
            date_range(start, end)


def test_a_jobs_pages_count_once_each_and_once_for_each_engine(lone_redis_url: str) -> None:
    """A job's pages: one SADD of its numbers, one SADD and one HINCRBY for each engine.

    A page counted again counts no more; an engine new to a counted page counts alone.
    """
    client = redis.Redis.from_url(lone_redis_url)
    usage, day = PageUsage(client), dt.date(2026, 12, 31)
    client.config_resetstat()
    usage.add("billing", 0, NEW_YEARS_EVE, job="digital", numbers=range(1, 118),
              engines=[("text-layer",)] * 117)  # a born-digital PDF: one task
    calls = {name: stat["calls"] for name, stat in client.info("commandstats").items()}
    assert calls["cmdstat_sadd"] == 2, calls
    assert calls["cmdstat_hincrby"] == 3, calls  # the engines', the day's, the month's
    assert 0 < client.ttl("ocr:usage:day:2026-12-31:engines") <= 400 * 86400
    usage.add("billing", 0, NEW_YEARS_EVE, job="digital", numbers=[116, 117],
              engines=[("text-layer",)] * 2)  # read again: counted already
    usage.add("billing", 0, NEW_YEARS_EVE, job="scan", numbers=[1, 2, 3],
              engines=[("tesseract",), ("tesseract", "vlm-api"), ("tesseract",)])
    usage.add("billing", 0, NEW_YEARS_EVE, job="scan", numbers=[2, 3],
              engines=[("tesseract", "vlm-api")] * 2)  # page 3 read by a second engine
    assert usage.used("billing", NEW_YEARS_EVE) == (120, 120)
    assert usage.engines_by_day(day, day) == {
        "billing": {"2026-12-31": {"text-layer": 117, "tesseract": 3, "vlm-api": 2}}}
    many = range(1, 9002)  # more than one SADD's worth (4000 members a call)
    usage.add("bulk", 0, NEW_YEARS_EVE, job="bulk", numbers=many,
              engines=[("tesseract",)] * len(many))
    assert usage.used("bulk", NEW_YEARS_EVE) == (9001, 9001)
    assert usage.engines_by_day(day, day, "bulk") == {
        "bulk": {"2026-12-31": {"tesseract": 9001}}}


def test_a_script_the_server_lost_is_loaded_again_alone_or_in_a_pipeline(
        own_redis_url: str) -> None:
    """The state's scripts go by SHA (tasks/state/lua.py); NOSCRIPT loads them again."""
    client = redis.Redis.from_url(own_redis_url)
    usage, control = PageUsage(client), JobControl(client, 600)
    for _ in range(2):  # the second time, the server has them: no load
        client.script_flush()
        control.remember("job-1", filename="a.png")  # alone
        usage.add("billing", 0, NEW_YEARS_EVE, job="job-1", numbers=[1, 2])  # in a pipeline
        control.cancel("job-1")  # in a pipeline, before a SET
    assert client.hgetall(job_key("job-1")) == {b"filename": b"a.png", b"cancelled": b"1"}
    assert 0 < client.ttl(job_key("job-1")) <= 600
    assert usage.used("billing", NEW_YEARS_EVE) == (2, 2)  # each page once
    assert client.get(doc_key("job-1", "cancel")) == b"1"
    pipe = client.pipeline(transaction=False)
    pipe.set("plain", "1")
    pipe.lpush("plain", "x")  # WRONGTYPE: raised, as by pipe.execute()
    with pytest.raises(redis.ResponseError):
        lua.execute(pipe)


def test_a_script_lost_again_as_it_is_loaded_is_loaded_again_then_transient(
        own_redis_url: str) -> None:
    client = losing_redis(own_redis_url)
    control = JobControl(client, 600)
    client.script_flush()
    client.losses = lua.LOADS - 1
    control.remember("job-2", filename="b.png")
    assert client.hget(job_key("job-2"), "filename") == b"b.png"
    client.script_flush()
    client.losses = lua.LOADS
    with pytest.raises(TransientError) as raised:
        control.remember("job-2", filename="c.png")
    assert raised.value.retryable and raised.value.code == "transient"
    assert client.hget(job_key("job-2"), "filename") == b"b.png"


def test_a_workers_settle_reads_the_caps_again_before_it_refuses(
        own_redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker settles a job's hold to its page count; others' holds count too."""
    client = redis.Redis.from_url(own_redis_url)
    client.flushdb()
    books = Reservations(client, 60, lambda ids: [])
    client.hset(API_CLIENTS_KEY, "capped", json.dumps({"pages_per_day": 2}))
    books.usage.add("capped", 2)
    with pytest.raises(PageQuotaExceeded):
        books.settle("job", "capped", 1)
    client.hset(API_CLIENTS_KEY, "capped", json.dumps({"pages_per_day": 4}))
    books.settle("job", "capped", 1)  # a cap raised counts at once
    assert client.hget(held_key("capped"), "job") == b"1"
    books.settle("job", "capped", 2)  # its own hold is replaced, not added to
    with pytest.raises(PageQuotaExceeded):  # 2 read + 2 held by "job" + 1
        books.settle("other", "capped", 1)
    client.hset(API_CLIENTS_KEY, "capped", json.dumps({"pages_per_day": 1}))
    books.settle("job", "capped", 2)  # one lowered, within CAPS_SECONDS: as read a moment ago
    monkeypatch.setattr(usage_module, "CAPS_SECONDS", 0.0)
    with pytest.raises(PageQuotaExceeded):
        books.settle("job", "capped", 2)
