"""The HTTP API against hostile clients (issue 35): each reproduction of the issue.

Through the Procfile's `api` process, a real worker (fake engine) and a real Redis:
readiness that a flood of unknown queue names cannot stall, quotas on what a client
may park in Redis, per-client cache keys, the outbound address policy, output PDFs
without active content, and the smaller ones (deep JSON, disconnects, callbacks,
query-string credentials).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
import requests

from tasks.api._readiness import ReadinessCheck
from tasks.inference_server import ServerWatch
from tasks.settings import Settings
from tasks.state.liveness import PRESENCE_TTL, WorkerPresence
from tests.api_server import ApiServer, create_token, session
from tests.conftest import Worker
from tests.test_api import WORKER_ENV, png, send


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**WORKER_ENV)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
        worker: Worker) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path_factory.mktemp("api") / "api.log",
                       {"REDIS_URL": redis_url}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(scope="module")
def carol(api: ApiServer, redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "carol"))


def _ready(api: ApiServer, queue: str) -> tuple[int, dict[str, object], float]:
    answer = requests.get(f"{api.url}/readyz", params={"queue": queue}, timeout=60)
    return answer.status_code, answer.json(), time.monotonic()


# --- 1. readiness ------------------------------------------------------------------------

def test_presence_names_the_worker_and_its_queues(worker: Worker, store: redis.Redis) -> None:
    """Workers publish their queues; a record past its time is no longer live."""
    live = WorkerPresence(store).live_queues()
    node = next(n for n in live if worker.name in n)
    assert {"ocr", "ocr-fake", "ocr-control"} <= live[node]
    later = time.time() + PRESENCE_TTL * 3  # no heartbeat can refresh it by then
    assert node not in WorkerPresence(store).live_queues(now=later)


def test_readyz_answers_while_redis_is_paused(api: ApiServer, store: redis.Redis,
                                             worker: Worker) -> None:
    """Unauthenticated readiness never waits on the network.

    With every Redis command held (CLIENT PAUSE), 60 concurrent /readyz for unknown
    queues and one for `ocr` are all answered before the pause ends (before: each one
    pinged Redis, and each unknown queue took a lock for a 0.5 s broadcast).
    """
    assert _ready(api, "ocr")[0] == 200  # a snapshot with the worker in it exists
    pause = 8.0
    store.execute_command("CLIENT", "PAUSE", int(pause * 1000), "ALL")
    paused_until = time.monotonic() + pause
    queues = ["ocr", *(f"flood-{uuid.uuid4().hex}" for _ in range(60))]
    with concurrent.futures.ThreadPoolExecutor(len(queues)) as pool:
        answers = list(pool.map(lambda q: _ready(api, q), queues))
    assert all(done < paused_until for _, _, done in answers), \
        "a /readyz answer waited for Redis"
    status, body, _ = answers[0]
    assert status == 200 and body["ready"] is True and body["workers"] == []
    assert all(s == 503 and b["worker_count"] == 0 for s, b, _ in answers[1:])


def test_readyz_flood_leaves_authenticated_requests_served(
        api: ApiServer, carol: requests.Session) -> None:
    """A flood of /readyz for random queues leaves a client's requests served.

    400 of them from 50 connections while carol reads her job: every one of her
    requests is answered 200, every flood request 503.
    """
    job_id = send(carol, api, png())
    stop = threading.Event()
    flood: list[int] = []

    def flooder() -> None:
        with requests.Session() as http:
            while not stop.is_set() and len(flood) < 400:
                flood.append(http.get(f"{api.url}/readyz", timeout=60,
                                      params={"queue": uuid.uuid4().hex}).status_code)

    threads = [threading.Thread(target=flooder) for _ in range(50)]
    for thread in threads:
        thread.start()
    mine = []
    try:
        while any(t.is_alive() for t in threads) and len(mine) < 200:
            mine.append(carol.get(f"{api.url}/v1/jobs/{job_id}", timeout=60).status_code)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert mine and set(mine) == {200}
    assert flood and set(flood) == {503}


class _StuckPresence(WorkerPresence):
    """Presence records behind a network that stops answering once `stuck` is set."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.stuck = threading.Event()
        self.release = threading.Event()
        self.reads = 0

    def live_queues(self, now: float | None = None) -> dict[str, set[str]]:
        self.reads += 1
        if self.stuck.is_set():
            self.release.wait(60)
        return super().live_queues(now)


def test_readiness_state_is_bounded_and_needs_no_lock(store: redis.Redis,
                                                      worker: Worker) -> None:
    """Readiness keeps nothing per queue name and answers without a lock.

    5,000 distinct queue names: no Redis read among them, nothing kept per name; an
    answer comes while a refresh is stuck on the network.
    """
    presence = _StuckPresence(store)
    check = ReadinessCheck(presence, store, ServerWatch(Settings.from_env({})),
                           interval=3600)
    check.start()
    while check.refreshes == 0:  # the refresh thread's first look
        time.sleep(0.01)
    assert check("ocr").ready
    served = check.snapshot_queues
    reads = presence.reads
    answers = [check(f"q-{i}") for i in range(5000)]
    assert not any(a.ready for a in answers)
    assert presence.reads == reads and check.snapshot_queues == served
    presence.stuck.set()
    refresher = threading.Thread(target=check.refresh)
    refresher.start()
    try:
        while presence.reads == reads:  # the refresh is inside its network wait
            time.sleep(0.01)
        assert check("ocr", detailed=True).workers  # answered meanwhile
        assert refresher.is_alive()
    finally:
        presence.release.set()
        refresher.join()
        check.stop()
