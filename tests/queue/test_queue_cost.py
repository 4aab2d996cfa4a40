"""What a job costs the shared Redis: commands a one-page job and a scanned page.

And one connection pool per worker child. A redis-server of this module's own (INFO
commandstats counts the whole server: the module's worker and clients alone), a real
worker (2 children) with the fake engine (tests/fake_engines.py: queue mechanics only).
The job's bound is the goal (60 a job) plus a margin a loaded 2-core machine holds, the
page's what it reached (goal 40); bench/queue_cost.py gives the figures and
bench/README.md what a job still costs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from tasks.broker.stored_layout import FIXED_KEYS, UNACKED_KEY
from tasks.client import OcrClient
from tasks.state.keys import doc_key, job_notice_key
from tests.harness import FAST_PAGES, RedisServer, Worker, corpus, eventually, fake_env, make_client
from tests.held_records import held_count
from tests.image_fixtures import png

# Commands of one one-page job, its client's enqueue and wait included: the goal 60
# plus a margin a loaded 2-core machine holds (65.6-65.7 measured here; a polling
# client's wait alone cost 30-60 more). The fewest of ROUNDS rounds counts.
JOB_GOAL, JOB_MARGIN = 60, 8
ROUNDS = 3
# Commands a page of a 6-page scanned PDF read page by page, its share of the job
# included: what it reached (51.2 measured here, 54.5-54.7 by bench/queue_cost.py, on
# a quiet 2-core machine) and a margin;
# the goal is 40 (bench/README.md says where a page's commands go).
PAGE_BOUND = 64
IDLE_SECONDS = 3.0
JOBS = 6


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**fake_env(OCR_CONCURRENCY="2", OCR_SKIP_BLANK_PAGES="0",
                                   **FAST_PAGES))


def _calls(store: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stat["calls"])
            for name, stat in store.info("commandstats").items()}


def _idle_rate(store: redis.Redis) -> float:
    """The idle worker's commands a second, over IDLE_SECONDS from zeroed counts."""
    store.config_resetstat()
    started = time.monotonic()
    time.sleep(IDLE_SECONDS)  # the idle rate is a rate over time itself
    return sum(_calls(store).values()) / (time.monotonic() - started)


def _done(client: OcrClient, job_id: str) -> str:
    return str(client.wait([job_id], timeout=60)[job_id]["status"])


def test_a_one_page_job_costs_what_it_reached(worker: Worker, redis_url: str) -> None:
    """The fewest commands a job of ROUNDS rounds of JOBS took, the idle rate taken out.

    The idle worker's periodic work (a heartbeat, a sweep: a burst of commands) lands in
    a round or not; it only ever adds, so the round it missed is the jobs' own cost.
    """
    store = redis.Redis.from_url(redis_url)
    client = make_client(redis_url)
    rounds: list[tuple[float, dict[str, int]]] = []
    try:
        for n in range(2):  # connections made, first writes' TTLs set
            assert _done(client, client.submit(png(10 + n), filename="warm.png")) == "SUCCESS"
        idle = _idle_rate(store)
        for round_ in range(ROUNDS):
            store.config_resetstat()
            started = time.monotonic()
            for n in range(JOBS):  # one at a time: each job's wait is a wait of its own
                assert _done(client, client.submit(png(20 + 10 * round_ + n),
                                                   filename=f"{n}.png")) == "SUCCESS"
            calls = _calls(store)
            rounds.append(((sum(calls.values()) - idle * (time.monotonic() - started)) / JOBS,
                           calls))
    finally:
        client.close()
    per_job, calls = min(rounds, key=lambda r: r[0])
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:40]
    shown = [round(r[0], 1) for r in rounds]
    assert per_job <= JOB_GOAL + JOB_MARGIN, f"{shown} a job (idle {idle:.1f}/s): {top}"
    # the client learnt each ending from a blocking read, not by polling the result
    assert calls.get("xread", 0) >= JOBS and calls.get("xadd", 0) == JOBS, top
    assert calls.get("get", 0) <= 3 * JOBS, top


def test_a_scanned_page_costs_what_it_reached(worker: Worker, redis_url: str) -> None:
    """A 6-page scanned PDF, each page a page task, at what its pages reached.

    A page task asks whether its document runs and was cancelled once (not its meta),
    writes its job's progress and counts its page in its client's usage in the script
    that records it, and counts no start of a first delivery; a child looks for the
    job's page hold once.
    """
    store = redis.Redis.from_url(redis_url)
    client = make_client(redis_url)
    scan = corpus("scan_vicksburg_ocrlayer_6p.pdf")
    try:
        assert _done(client, client.submit(png(30), filename="warm.png")) == "SUCCESS"
        idle = _idle_rate(store)
        store.config_resetstat()
        started = time.monotonic()
        job = client.submit(scan, mode="ocr")
        result = client.wait([job], timeout=120)[job]
        seconds = time.monotonic() - started
        calls = _calls(store)
    finally:
        client.close()
    assert result["status"] == "SUCCESS" and len(result["pages"]) == 6, result
    per_page = (sum(calls.values()) - idle * seconds) / 6
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:40]
    assert per_page <= PAGE_BOUND, f"{per_page:.1f} a page (idle {idle:.1f}/s): {top}"
    assert calls.get("exists", 0) >= 6, top  # each page's document and cancel: one EXISTS
    assert calls.get("hexists", 0) <= 2, top  # the hold: once a child, not once a page


@contextlib.contextmanager
def monitoring(store: redis.Redis, on_command: Callable[[dict[str, Any]], None]
               ) -> Iterator[None]:
    """MONITOR over the block: each command the server runs in it goes to `on_command`.

    The block's end is marked by an ECHO the watcher stops at, so that every command
    before it has been seen when the block returns.
    """
    marker = f"monitor-end-{os.getpid()}-{threading.get_ident()}"
    watching = threading.Event()
    ended = threading.Event()  # the marker seen: the watcher saw the whole block

    def watch() -> None:
        with store.monitor() as monitor:
            watching.set()  # MONITOR answered: every later command is seen
            for seen in monitor.listen():
                if seen["command"].split() == ["ECHO", marker]:
                    ended.set()
                    return
                on_command(seen)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert watching.wait(10)
    try:
        yield
    finally:
        store.echo(marker)  # the last command the watcher reads
        watcher.join(10)
    assert not watcher.is_alive()
    assert ended.is_set(), "the watcher stopped before the block's end (its error above)"


def test_a_page_task_reads_no_meta(worker: Worker, redis_url: str) -> None:
    """A scanned PDF's page tasks read with their messages' descriptors, not the meta.

    MONITOR sees every command naming the document's meta: the split writes it (in its
    script), each page task asks whether it is there (one EXISTS with the cancel mark),
    and only the merge of the last page reads it (one MGET, with its escalation), whatever
    the page count.
    """
    store = redis.Redis.from_url(redis_url)
    seen: list[list[str]] = []

    def on_command(command: dict[str, Any]) -> None:
        words = command["command"].split()
        if any(word.endswith(":meta") for word in words[1:]):
            seen.append(words)

    client = make_client(redis_url)
    with monitoring(store, on_command):
        try:
            job = client.submit(corpus("scan_vicksburg_ocrlayer_6p.pdf"), mode="ocr")
            result = client.wait([job], timeout=120)[job]
        finally:
            client.close()
    assert result["status"] == "SUCCESS" and len(result["pages"]) == 6, result
    meta = doc_key(job, "meta")
    named = [words for words in seen if meta in words]
    by_command = Counter(words[0].upper() for words in named)  # a script's: lower case
    assert by_command["MGET"] == 1 and by_command["GET"] == 0, named  # the merge's
    merge = next(words for words in named if words[0].upper() == "MGET")
    assert merge[1:] == [meta, doc_key(job, "escalation")], merge
    assert by_command["EXISTS"] >= 6, named  # each page's: the meta and the cancel mark
    assert set(by_command) <= {"SET", "MGET", "EXISTS", "DEL", "EVALSHA", "WAIT"}, named


def test_a_burst_s_acknowledgements_ride_on_the_fetches(worker: Worker, redis_url: str) -> None:
    """20 jobs at once: most acknowledgements go in the worker's next fetch, none is lost.

    MONITOR tells an acknowledgement sent alone (HDEL of the held records by the worker
    parent) from one the fetch script ran (the same HDEL inside a script). A delivered
    message costs one write at its fetch (HSET of its held record) and one at its
    acknowledgement (that HDEL): nothing else of the broker's in-flight keys is written.
    """
    store = redis.Redis.from_url(redis_url)
    alone: list[str] = []
    carried: list[str] = []
    held: list[str] = []
    others: list[str] = []

    def on_command(seen: dict[str, Any]) -> None:
        words = seen["command"].split()
        held_hash = len(words) > 2 and words[1].endswith("}:held")
        if words[0] == "HDEL" and held_hash:
            (carried if seen.get("client_type") == "lua" else alone).extend(words[2:])
        elif words[0] == "HSET" and held_hash:
            held.append(words[2])
        elif len(words) > 1 and words[1].startswith(UNACKED_KEY) and \
                words[0] not in ("HGET", "HKEYS", "HGETALL", "EXISTS", "ZRANGE",
                                 "SET", "HLEN"):  # reads; the sweep's lock
            others.append(seen["command"])

    # the module's earlier jobs acknowledged first: an acknowledgement that rides on a
    # later fetch would be seen here without the write of its record
    eventually(lambda: held_count(store) == 0 or None, 15, "earlier records acknowledged")
    client = make_client(redis_url)
    assert worker.proc is not None
    with monitoring(store, on_command):
        try:
            # The worker parent is held while the 20 are sent, so that they wait as one
            # burst: on a loaded machine a slowed sender would otherwise feed an idle
            # worker one job at a time, each acknowledged alone as it waits for the next.
            os.kill(worker.proc.pid, signal.SIGSTOP)
            try:
                jobs = [client.submit(png(80 + n), filename=f"{n}.png") for n in range(20)]
            finally:
                os.kill(worker.proc.pid, signal.SIGCONT)
            statuses = {r["status"] for r in client.wait(jobs, timeout=60).values()}
            assert statuses == {"SUCCESS"}
        finally:
            client.close()
        eventually(lambda: held_count(store) == 0 or None, 15, "every record acknowledged")
    assert not store.exists(*FIXED_KEYS)  # nothing of layouts 1 and 2
    assert len(set(alone) | set(carried)) >= 20, (alone, carried)
    assert len(carried) > len(alone), (len(carried), len(alone))
    # one write a message at its fetch, one at its acknowledgement, and no other
    assert len(held) == len(set(held)) and sorted(held) == sorted(alone + carried), \
        (held, alone, carried)
    assert not others, others


def test_one_connection_pool_per_worker_child(worker: Worker, redis_url: str,
                                              redis_server: RedisServer) -> None:
    client = make_client(redis_url)
    try:  # pages, endings, metering, the poison guard: every module of a child at work
        jobs = [client.submit(png(40 + n), filename=f"{n}.png") for n in range(6)]
        assert {r["status"] for r in client.wait(jobs, timeout=60).values()} == {"SUCCESS"}
    finally:
        client.close()
    assert worker.proc is not None
    children = psutil.Process(worker.proc.pid).children()
    assert len(children) == 2
    store = redis.Redis.from_url(redis_url)
    field = json.dumps(["ocr_child_redis_pools", {}], sort_keys=True)

    def pools() -> dict[int, float] | None:
        found = {}
        for key in store.scan_iter("ocr:metrics:child:*"):
            pid = int(key.decode().rsplit(":", 1)[1])
            value = store.hget(key, field)
            if value is not None:
                found[pid] = float(value)
        return found if {c.pid for c in children} <= set(found) else None

    seen = eventually(pools, 30, "each child's gauges")
    assert {seen[c.pid] for c in children} == {1.0}, seen
    # And its sockets: Celery's result backend, kombu's connection and the event
    # dispatcher's (each holds one while the child runs one task at a time), and the
    # service's one pool, which holds as many as its threads used at once: the task's,
    # the metrics timer's (tasks/state/metrics.py, FLUSH_EVERY) and the model keeper's
    # heartbeat (tasks/engines/release.py).
    for child in children:
        to_redis = [c for c in child.net_connections("tcp")
                    if c.raddr and c.raddr.port == redis_server.port]
        assert len(to_redis) <= 3 + 3, \
            (child.pid, [(c.laddr.port, c.status) for c in to_redis])


def test_a_wait_blocks_on_the_ending_notice_without_polling(tmp_path: Path) -> None:
    """A job no worker takes, waited for 3 s: a few reads, not a poll every 0.2 s."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        url = server.url(2)
        store = redis.Redis.from_url(url)
        client = make_client(url)
        job = client.submit(png(7), filename="late.png")
        store.config_resetstat()
        answer = client.wait([job], timeout=3, watch_workers=False)[job]
        calls = _calls(store)
        assert answer["status"] == "TIMEOUT"
        assert calls.get("xread", 0) >= 1
        assert sum(calls.values()) <= 20, calls  # polling: about 15 looks of 3 reads
        # a notice ends the wait: the job's result is read (here: none stored, so the
        # reading of a job without one), where without it the wait would time out
        store.xadd(job_notice_key(job), {"status": "SUCCESS"})
        answer = client.wait([job], timeout=5, watch_workers=False)[job]
        assert answer["status"] != "TIMEOUT", answer
        client.close()
    finally:
        server.stop()


def test_every_ending_writes_one_notice(worker: Worker, redis_url: str) -> None:
    """Success, failure, a deadline the worker parent ends, a cancel: one notice each."""
    store = redis.Redis.from_url(redis_url)
    client = make_client(redis_url)
    try:
        jobs = {"ok": client.submit(png(60), filename="ok.png"),
                "bad": client.submit(b"%PDF-1.7 broken", filename="bad.pdf"),
                "late": client.submit(png(61), filename="late.png", deadline=0.001)}
        jobs["cancelled"] = client.submit(png(62), filename="gone.png")
        client.cancel([jobs["cancelled"]])
        results = client.wait(list(jobs.values()), timeout=60)
    finally:
        client.close()
    assert results[jobs["ok"]]["status"] == "SUCCESS"
    assert (results[jobs["bad"]]["status"], results[jobs["late"]]["status"]) == (
        "FAILURE", "FAILURE")
    for name, job in jobs.items():
        entries = store.xrange(job_notice_key(job))
        assert len(entries) == 1, name
        assert entries[0][1][b"status"].decode() == results[job]["status"], name
        assert 0 < store.ttl(job_notice_key(job)) <= 86400 * 30, name
