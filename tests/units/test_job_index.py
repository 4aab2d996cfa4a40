"""The job lists' index (tasks/state/job_index.py) on a real redis-server.

And the small pieces around the lists: `submit.py jobs`' times, `no_cache`, text-layer
lines and the `language_unavailable` hint.
"""

from __future__ import annotations

import time

import pytest
import redis

from tasks.cli.listing import when
from tasks.engines import tessdata
from tasks.errors import BadRequest
from tasks.pipeline.documents import layer_text
from tasks.records.request import JobRequest
from tasks.state.job_index import ALL_FACTOR, Cursor, JobIndex, trims
from tasks.state.keys import JOBS_ALL_KEY, jobs_client_key


@pytest.fixture
def index(own_redis_url: str) -> JobIndex:
    return JobIndex(redis.Redis.from_url(own_redis_url), keep=3600, most=5)


def _ids(index: JobIndex, client: str | None, **kwargs: object) -> list[str]:
    page = index.page(client, kwargs.get("since"), kwargs.get("until"),  # type: ignore[arg-type]
                      kwargs.get("after"), int(kwargs.get("limit", 100)),  # type: ignore[arg-type]
                      lambda batch: [job_id for job_id, _ in batch])
    return page.items


def test_jobs_are_listed_per_client_newest_first_and_bounded(index: JobIndex) -> None:
    now = time.time()
    for i in range(8):
        index.add(f"a{i}", "alpha", now - 100 + i)
    index.add("b0", "beta", now - 50)
    index.add("old", "alpha", now - 7200)  # older than `keep`: dropped at once
    assert _ids(index, "alpha") == ["a7", "a6", "a5", "a4", "a3"]  # the newest `most`
    assert _ids(index, "beta") == ["b0"]
    assert _ids(index, None)[:3] == ["b0", "a7", "a6"]  # everyone's, newest first
    store = index._redis
    assert 0 < store.ttl(jobs_client_key("alpha")) <= 3600
    assert store.zcard(JOBS_ALL_KEY) <= 5 * ALL_FACTOR
    # A worker's "only if missing" keeps the time the sender listed.
    index.add("a7", "alpha", now, only_new=True)
    assert store.zscore(jobs_client_key("alpha"), "a7") == pytest.approx(now - 93)


def test_pages_follow_the_cursor_and_the_time_bounds(own_redis_url: str) -> None:
    index = JobIndex(redis.Redis.from_url(own_redis_url), keep=3600, most=100)
    now = time.time()
    for i in range(5):
        index.add(f"j{i}", "c", now - 10 + i)
    index.add("tie-a", "c", now - 1)  # the same time as j4...
    index.add("tie-b", "c", now - 1)  # ...and as each other: ordered by id, never lost
    seen: list[str] = []
    after = None
    while True:
        page = index.page("c", None, None, after, 2, lambda b: [i for i, _ in b])
        seen += page.items
        if page.next is None:
            break
        after = Cursor.decode(page.next.encode())
    assert sorted(seen) == sorted(["j0", "j1", "j2", "j3", "j4", "tie-a", "tie-b"])
    assert len(seen) == len(set(seen)) and seen[-1] == "j0"
    assert _ids(index, "c", since=now - 8, until=now - 7) == ["j3", "j2"]
    # A filter few jobs pass: described in batches, `wanted` decides.
    kept = index.page("c", None, None, None, 10, lambda b: [i for i, _ in b],
                      lambda job_id: job_id.startswith("tie"))
    assert sorted(kept.items) == ["tie-a", "tie-b"] and kept.next is None


def test_a_cursor_is_one_the_service_gave() -> None:
    assert Cursor.decode(Cursor(12.5, "id-1").encode()) == Cursor(12.5, "id-1")
    for bad in ("not-one", "", "W10", "WyJ4IiwxXQ"):  # [], ["x", 1]
        with pytest.raises(BadRequest):
            Cursor.decode(bad)


def test_submit_jobs_takes_times_as_people_write_them() -> None:
    now = 1_800_000_000.0
    assert when("30m", now) == now - 1800 and when("2h", now) == now - 7200
    assert when("7d", now) == now - 7 * 86400 and when("1700000000", now) == 1_700_000_000
    assert when("2026-11-24T10:00:00+00:00") == 1795514400.0
    with pytest.raises(Exception, match="not a time"):
        when("yesterday")


def test_no_cache_is_a_boolean_option_outside_the_cache_key() -> None:
    request = JobRequest.from_kwargs({"blob": "ocr:blob:abcdefgh", "no_cache": True}, ())
    assert request.no_cache
    assert "no_cache" not in request.cache_options("tesseract", None)
    with pytest.raises(BadRequest, match="no_cache"):
        JobRequest.from_kwargs({"blob": "ocr:blob:abcdefgh", "no_cache": "yes"}, ())


def test_a_text_layers_space_lines_are_blank_and_it_starts_at_its_text() -> None:
    assert layer_text(" \n \n  \nTitle\n \n \n \nBody  \n") == "Title\n\nBody"
    assert layer_text("  indented first line\nnext") == "  indented first line\nnext"
    assert layer_text("a\tb\n\x0c\n c") == "a\tb\n\x0c\n c"  # only lines of spaces alone


def test_a_missing_language_says_how_to_add_it() -> None:
    message = tessdata.unavailable(["deu"], ["eng", "fra"])
    assert message.startswith("no traineddata for deu on this worker; it has: eng, fra")
    assert message.endswith('OCR_LANGS="eng deu" make run')  # deu's wheel: tessdata's model
    # a language with no wheel comes as Debian's fast model, and the advice says so
    dutch = tessdata.unavailable(["nld"], ["eng"])
    assert 'OCR_LANGS="eng nld" make run' in dutch and "fast model" in dutch, dutch
    assert "docs/languages.md" in dutch, dutch
    # a code that is no language is never advised
    both = tessdata.unavailable(["deu", "klingon"], ["eng"])
    assert 'OCR_LANGS="eng deu" make run' in both, both
    assert both.endswith("; klingon is no tesseract language code (docs/languages.md "
                         "lists them)"), both
    assert "OCR_LANGS" not in tessdata.unavailable(["tlh"], ["eng"])


def test_one_add_in_trim_one_in_trims_by_rank_and_by_time(own_redis_url: str) -> None:
    index = JobIndex(redis.Redis.from_url(own_redis_url), keep=3600, most=5)
    store, key, now = index._redis, jobs_client_key("t"), time.time()
    plain = [f"p{i}" for i in range(400) if not trims(f"p{i}")][:20]
    index.add(plain[0], "t", now - 7200)  # older than `keep`: shown never, kept a while
    for n, job_id in enumerate(plain[1:]):
        index.add(job_id, "t", now - 100 + n)
    assert store.zcard(key) == 20  # no add trimmed: over `most` meanwhile
    assert _ids(index, "t") == plain[:-6:-1]  # shown: the newest `most`
    trimming = next(f"t{i}" for i in range(400) if trims(f"t{i}"))
    index.add(trimming, "t", now)
    assert store.zcard(key) == 5 and _ids(index, "t") == [trimming, *plain[:-5:-1]]
    assert sum(trims(f"job-{i}") for i in range(32_000)) == pytest.approx(1000, rel=0.1)
