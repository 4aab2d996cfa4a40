"""A waiting client's look at its jobs' ending notices (`EndingWatch`).

A real Redis (the tests' own database, then a redis-server of the test's own where it
is stopped); the notices are written as a job's ending writes them (`announce`).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from tasks.state import job_notices
from tasks.state.job_notices import EndingWatch, announce
from tests.harness import RedisServer


def _jobs(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


@pytest.mark.parametrize("protocol", [2, 3])
def test_the_ended_jobs_among_many_are_found_in_one_look(redis_url: str,
                                                         protocol: int) -> None:
    store = redis.Redis.from_url(redis_url, protocol=protocol)
    watch = EndingWatch(store)
    jobs = _jobs(300)
    for job in jobs[7::50]:
        announce(store, job, "SUCCESS", 60)
    assert watch.ended(jobs) == set(jobs[7::50])
    assert watch.ended([*jobs, *jobs[:3]], block=0) == set(jobs[7::50])  # repeated ids
    assert watch.ended([]) == set()


def test_a_blocking_look_answers_when_a_job_ends(redis_url: str) -> None:
    store = redis.Redis.from_url(redis_url)
    watch = EndingWatch(store)
    jobs = _jobs(50)
    assert watch.ended(jobs, block=0.2) == set()  # none ended: waits, then nothing
    ender = threading.Timer(0.3, announce, (store, jobs[40], "FAILURE", 60))
    ender.start()
    started = time.monotonic()
    try:
        assert watch.ended(jobs, block=10) == {jobs[40]}
    finally:
        ender.join()
    assert time.monotonic() - started < 8  # woken by the notice, not the block's end
    assert watch.ended(jobs[:40]) == set()


def test_names_kept_are_those_still_watched(redis_url: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Found jobs' names are dropped; those of watches given up at a bound."""
    monkeypatch.setattr(job_notices, "KEPT_NAMES", 10)
    store = redis.Redis.from_url(redis_url)
    watch = EndingWatch(store)
    given_up, watched = _jobs(30), _jobs(5)
    assert watch.ended(given_up) == set()
    announce(store, watched[0], "SUCCESS", 60)
    assert watch.ended(watched) == {watched[0]}
    assert set(watch._packed) == set(watched[1:])
    announce(store, watched[1], "SUCCESS", 60)
    assert watch.ended(watched) == set(watched[:2])  # an ended job asked again: found


def test_a_look_at_a_server_that_went_away_fails_and_the_next_one_reads(
        tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        store = redis.Redis.from_url(server.url(1), socket_timeout=5)
        watch = EndingWatch(store)
        jobs = _jobs(20)
        announce(store, jobs[3], "SUCCESS", 60)
        assert watch.ended(jobs) == {jobs[3]}
        server.stop()
        with pytest.raises(redis.ConnectionError):
            watch.ended(jobs, block=1)
        server.start()
        announce(store, jobs[5], "SUCCESS", 60)
        found = watch.ended(jobs)
        assert jobs[5] in found and found <= {jobs[3], jobs[5]}  # [3]: if the server kept it
    finally:
        server.stop()
