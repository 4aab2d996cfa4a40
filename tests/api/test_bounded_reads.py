"""Reads bounded by what they return: a tenant holding big results lists and reads status.

Real workers (the fake engine, its pages' text padded to PAGE_BYTES by
`FAKE_TEXT_BYTES`: big results made cheaply), a real Redis and the HTTP API. Client
`big` holds BIG_JOBS ended jobs of about 2 x PAGE_BYTES each (the page's text, and the
result's); client `small` one small job. `big` lists its jobs and reads their status
from several threads at once while `small` reads its own status: the API process's
peak RSS (VmHWM) grows by far less than one stored result, and MONITOR sees no read
of a result's key (`celery-task-meta-<id>`) in a list or a status read: the job's
summary alone (`ocr:job:<id>:summary`) is read. `small`'s status latency is printed
(a figure, never asserted).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests

from tests.api_server import ApiServer, create_token, session, wait_end
from tests.harness import Worker, fake_env
from tests.image_fixtures import png
from tests.queue.test_queue_cost import monitoring

PAGE_BYTES = 6_000_000
BIG_JOBS = 4


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
        start_worker: Callable[..., Worker]) -> Iterator[ApiServer]:
    start_worker(**fake_env(FAKE_TEXT_BYTES=str(PAGE_BYTES)))
    server = ApiServer(tmp_path_factory.mktemp("api") / "api.log",
                       {"REDIS_URL": redis_url}).start()
    yield server
    server.stop()


def peak_rss(api: ApiServer) -> int:
    """The API process's peak resident set so far (VmHWM), in bytes."""
    assert api.proc is not None
    with open(f"/proc/{api.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def send(http: requests.Session, api: ApiServer, size: tuple[int, int]) -> str:
    answer = http.post(f"{api.url}/v1/jobs", files={"file": ("page.png", png(size=size))},
                       timeout=30)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def own_session(token: str) -> requests.Session:
    """A reader thread's session (one is not shared between threads), a connection a request.

    A thread decoding a big answer on a loaded host may idle past the API's keep-alive
    (uvicorn's 5 s) before its next request, and a kept connection the API closes as
    that request goes out ends it unanswered (RemoteDisconnected, or a reset).
    """
    http = session(token)
    http.headers["Connection"] = "close"
    return http


def test_lists_and_status_reads_of_big_results_read_summaries_alone(
        api: ApiServer, redis_url: str) -> None:
    token = create_token(redis_url, "big")
    big = session(token)
    browser = requests.Session()
    signed = browser.post(f"{api.url}/console/signin", data={"token": token},
                          headers={"Origin": api.url}, allow_redirects=False, timeout=60)
    assert signed.status_code == 303, signed.text
    small = own_session(create_token(redis_url, "small"))
    store = redis.Redis.from_url(redis_url)
    ids = [send(big, api, (60 + i, 40)) for i in range(BIG_JOBS)]
    for job_id in ids:
        assert wait_end(big, api, job_id, timeout=180)["status"] == "SUCCESS"
    result_keys = {f"celery-task-meta-{job_id}" for job_id in ids}
    stored = min(int(store.strlen(key)) for key in result_keys)
    assert stored > PAGE_BYTES  # each result is big
    mine = send(small, api, (30, 20))
    assert wait_end(small, api, mine)["status"] == "SUCCESS"

    before = peak_rss(api)
    seen: list[list[str]] = []
    latencies: list[float] = []
    stop = threading.Event()

    def on_command(command: dict[str, Any]) -> None:
        seen.append(str(command["command"]).split())

    def lists() -> None:
        big = own_session(token)
        browser_of_mine = requests.Session()
        browser_of_mine.headers["Connection"] = "close"
        browser_of_mine.cookies.update(browser.cookies)
        for _ in range(3):
            listed = big.get(f"{api.url}/v1/jobs", params={"limit": 100}, timeout=120)
            assert listed.status_code == 200, listed.text
            jobs = {job["id"]: job for job in listed.json()["jobs"]}
            assert set(ids) <= set(jobs)
            assert all(jobs[i]["status"] == "SUCCESS" and jobs[i]["progress"]["done"] == 1
                       for i in ids)
            for job_id in ids:
                status = big.get(f"{api.url}/v1/jobs/{job_id}", timeout=120)
                assert status.status_code == 200
                assert status.json()["status"] == "SUCCESS"
            page = browser_of_mine.get(f"{api.url}/console/jobs", timeout=120)
            assert page.status_code == 200 and ids[0] in page.text
            page = browser_of_mine.get(f"{api.url}/console/jobs/{ids[0]}", timeout=120)
            assert page.status_code == 200 and 'id="page-1"' in page.text

    def other() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            answer = small.get(f"{api.url}/v1/jobs/{mine}", timeout=60)
            latencies.append(time.perf_counter() - started)
            assert answer.json()["status"] == "SUCCESS"

    with monitoring(store, on_command), ThreadPoolExecutor(5) as pool:
        watcher = pool.submit(other)
        readers = [pool.submit(lists) for _ in range(4)]
        try:
            for reader in readers:
                reader.result(timeout=300)  # what a reader raised is raised here
        finally:
            stop.set()
        watcher.result(timeout=60)
    grown = peak_rss(api) - before

    read_results = [command for command in seen
                    if command and command[0].strip('"').upper() in ("GET", "MGET")
                    and any(key.strip('"') in result_keys for key in command[1:])]
    assert read_results == []
    summary = f"ocr:job:{ids[0]}:summary"
    assert any(command[0].upper() == "GET" and command[1].strip('"') == summary
               for command in seen if len(command) == 2)
    # Four readers read every big job's status and list three times: the API's peak
    # grows by far less than one stored result (a decoded result is several times it).
    assert grown < stored / 2, (grown, stored)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies
    print(f"\nbounded reads: {BIG_JOBS} results of {stored / 1e6:.1f} MB; API peak RSS "
          f"grew {grown / 1e6:.1f} MB; small's status p50 "
          f"{statistics.median(latencies) * 1000:.1f} ms, p99 {quantiles[-1] * 1000:.1f} ms "
          f"over {len(latencies)} reads")


def test_a_status_read_removes_nothing(api: ApiServer, redis_url: str) -> None:
    """A GET of a job writes nothing: the one exit alone frees its place in flight."""
    reader = session(create_token(redis_url, "reader"))
    store = redis.Redis.from_url(redis_url)
    job_id = send(reader, api, (20, 20))
    assert wait_end(reader, api, job_id)["status"] == "SUCCESS"
    seen: list[list[str]] = []
    with monitoring(store, lambda command: seen.append(str(command["command"]).split())):
        assert reader.get(f"{api.url}/v1/jobs/{job_id}", timeout=30).status_code == 200
        assert reader.get(f"{api.url}/v1/jobs", timeout=30).status_code == 200
    writes = [command for command in seen if command and command[0].strip('"').upper()
              in ("ZREM", "DEL", "UNLINK", "HDEL", "SREM", "SET", "HSET")]
    assert writes == []


def test_page_views_of_big_results_take_turns_and_keep_none(
        api: ApiServer, redis_url: str) -> None:
    """A page of a big result is decoded in its client's heavy turn, and not kept.

    `pages` views page 1 of each of its BIG_JOBS big jobs from four threads, three
    times over, each decode in its one heavy turn (its share of
    OCR_API_HEAVY_CONCURRENCY=2; tests/units/test_ended_results.py holds the turn). A
    big result is read for each view (MONITOR sees each read of its key), never kept.
    The API's peak RSS growth is printed: a decoded result with its page's lines is
    many times its stored size.
    """
    token = create_token(redis_url, "pages")
    pages = session(token)
    store = redis.Redis.from_url(redis_url)
    ids = [send(pages, api, (70 + i, 40)) for i in range(BIG_JOBS)]
    for job_id in ids:
        assert wait_end(pages, api, job_id, timeout=180)["status"] == "SUCCESS"
    stored = min(int(store.strlen(f"celery-task-meta-{job_id}")) for job_id in ids)
    before = peak_rss(api)
    seen: list[list[str]] = []

    def views() -> None:
        mine = own_session(token)
        for _ in range(3):
            for job_id in ids:
                page = mine.get(f"{api.url}/v1/jobs/{job_id}/pages/1", timeout=300)
                assert page.status_code == 200, page.text
                assert page.json()["lines"]

    with ThreadPoolExecutor(4) as pool:
        for reader in [pool.submit(views) for _ in range(4)]:
            reader.result(timeout=600)  # what a reader raised is raised here
    grown = peak_rss(api) - before
    with monitoring(store, lambda command: seen.append(str(command["command"]).split())):
        for job_id in (ids[0], ids[0]):
            assert pages.get(f"{api.url}/v1/jobs/{job_id}/pages/1", timeout=120).ok

    def reads_of(job_id: str) -> int:
        return sum(1 for command in seen if len(command) == 2
                   and command[0].strip('"').upper() == "GET"
                   and command[1].strip('"') == f"celery-task-meta-{job_id}")

    print(f"\npage views: {BIG_JOBS} results of {stored / 1e6:.1f} MB, 4 readers; API peak "
          f"RSS grew {grown / 1e6:.1f} MB")
    assert reads_of(ids[0]) == 2
