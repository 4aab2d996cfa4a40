"""A client reads the results of jobs that ended together in one round trip.

A real Redis (the tests' own database) and a real `OcrClient`; no worker: each job's
ending is written as a worker's would be (Celery's result record, the job's record,
its ending notice). Round trips are counted on the client's connection to the state
(`CountingConnection`, one per command sent or pipeline).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tasks.client import RESULTS_READ, OcrClient
from tasks.state.keys import job_key, job_notice_key
from tasks.state.stores import new_blob_key
from tests.harness import make_client, sent_past_the_gate


class CountingConnection(redis.Connection):
    """A connection that counts its round trips (each command, or pipeline, sent).

    A script's SCRIPT LOAD is not counted: it is sent once in a process, not per read.
    """

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        first = command[0] if isinstance(command, list) else command
        if b"\r\nSCRIPT\r\n$4\r\nLOAD\r\n" not in bytes(first)[:40]:
            CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def _ended(store: redis.Redis, client: Any, job_id: str, n: int,
           notice: bool = True) -> None:
    """Job `job_id` ended SUCCESS as a worker ends it: result, record, notice."""
    client.app.backend.store_result(job_id, {"id": job_id, "status": "SUCCESS",
                                             "text": f"page {n}", "pages": []}, "SUCCESS")
    store.hset(job_key(job_id), mapping={"filename": f"{n}.png", "client": "billing"})
    if notice:
        store.xadd(job_notice_key(job_id), {"status": "SUCCESS"})


def _counted(client: Any) -> None:
    """The client's Redis connection (its states' and its sender's) counts round trips."""
    kwargs = client._redis.connection_pool.connection_kwargs
    client._redis.connection_pool = redis.ConnectionPool(
        connection_class=CountingConnection, **kwargs)
    client._redis.ping()  # connected: its handshake's commands not counted


def _jobs_ended(store: redis.Redis, client: Any, name: str, count: int,
                notice: bool = True) -> list[str]:
    """`count` jobs ended (`_ended`), then the client's round trips counted from 0."""
    jobs = [f"{name}-{n}" for n in range(count)]
    for n, job_id in enumerate(jobs):
        _ended(store, client, job_id, n, notice)
    _counted(client)
    CountingConnection.sent = 0
    return jobs


def test_jobs_that_ended_together_are_read_in_one_round_trip(redis_url: str) -> None:
    store = redis.Redis.from_url(redis_url)
    client = make_client(redis_url)
    try:
        jobs = _jobs_ended(store, client, "batched", 5)
        results = client.wait(jobs, timeout=10, watch_workers=False)
        # five endings: one read of their notices (XREAD), one of their results
        assert CountingConnection.sent == 2
        for n, job_id in enumerate(jobs):
            assert (results[job_id]["status"], results[job_id]["text"],
                    results[job_id]["filename"], results[job_id]["client"]) == (
                "SUCCESS", f"page {n}", f"{n}.png", "billing")
        # one job alone
        CountingConnection.sent = 0
        assert client.result(jobs[2])["text"] == "page 2"
        assert CountingConnection.sent == 1
    finally:
        client.close()


def test_jobs_that_ended_without_a_notice_are_found_by_one_sweep(redis_url: str,
                                                                client: OcrClient) -> None:
    jobs = _jobs_ended(redis.Redis.from_url(redis_url), client, "unnoticed", 30,
                       notice=False)
    results = client.wait(jobs, timeout=10, watch_workers=False)
    assert [results[job_id]["text"] for job_id in jobs] == [f"page {n}" for n in range(30)]
    # the read of the notices (none: it blocks to the sweep), the sweep 1 s in (one read
    # of the thirty statuses), then one of their results
    assert CountingConnection.sent == 3


def test_jobs_whose_queue_no_worker_serves_say_so(redis_url: str, client: OcrClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = redis.Redis.from_url(redis_url)
    monkeypatch.setattr(client, "no_worker_grace", 0.5)
    jobs = [f"unserved-{n}" for n in range(20)]
    for job_id in jobs:
        store.hset(job_key(job_id), mapping={"queue": "ocr-nobody", "client": "billing"})
    store.hset(job_key(jobs[0]), "queue", "")  # a job whose record names no queue
    results = client.wait(jobs, timeout=6)
    assert {job_id for job_id in jobs
            if results[job_id].get("error", {}).get("code") == "no_worker"} == set(jobs[1:])
    assert results[jobs[0]]["status"] == "TIMEOUT"


def test_a_larger_batch_is_read_in_rounds_of_results_read(redis_url: str) -> None:
    store = redis.Redis.from_url(redis_url)
    client = make_client(redis_url)
    try:
        jobs = _jobs_ended(store, client, "many", RESULTS_READ + 3)
        results = client.results(jobs)
        assert CountingConnection.sent == 2
        assert [results[j]["text"] for j in jobs] == [f"page {n}" for n in range(len(jobs))]
    finally:
        client.close()


def test_a_job_s_input_is_stored_with_its_record_in_one_round_trip(redis_url: str) -> None:
    """The input, the job's record and its index entry: one round trip (then the send)."""
    store = redis.Redis.from_url(redis_url)
    client = make_client(redis_url)
    try:
        _counted(client)
        sent_past_the_gate(client, {"blob": new_blob_key(), "filename": "warm.png"},
                           input=b"\x89PNG warm")  # scripts loaded
        CountingConnection.sent = 0
        blob = new_blob_key()
        job_id = sent_past_the_gate(client, {"blob": blob, "filename": "in.png"},
                                    input=b"\x89PNG input")
        assert CountingConnection.sent == 1
        assert store.hget(job_key(job_id), "blob").decode() == blob
        assert store.get(blob) == b"\x89PNG input"
        assert 0 < store.ttl(blob) <= client.settings.blob_ttl
    finally:
        client.close()
