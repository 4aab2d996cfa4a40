"""A hostile tenant re-sending a cached document by URL: its results count in its quota.

A real worker (the fake engine, the result cache on), a real Redis, moto's S3 server
and the HTTP API. The document: a text-layer PDF page of 3,000 lines, whose result
(every line with its box and words) is far larger than the request that names it.
Probes: re-sends answered from the cache store no copy of the result (the Redis
length of each re-sent job's record measured) and read the same; each re-send
counts the result it keeps against the client's `--max-bytes`, until a 60-byte
request by URL is refused 429 `quota_exceeded`, and an upload too; another client is
not held by it. A client's batch past its quota waits, sending nothing, until its
stored bytes are back under it. A result past its end leaves the count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis
import requests

from tasks.state.keys import api_bytes_key, api_results_key, corrections_bytes_key
from tasks.state.stored_bytes import StoredResults, stored_now
from tests.api.test_batches import ended, info, jobs_of
from tests.api_server import ApiServer, create_token, session, wait_end
from tests.console.test_console_bounds import text_layer_pdf
from tests.harness import FAST_PAGES, Worker, fake_env
from tests.image_fixtures import png
from tests.moto_s3 import MotoS3

BUCKET = "tenant-q"
DOC = f"s3://{BUCKET}/big.pdf"
RESENDS = 3


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    server.client().create_bucket(Bucket=BUCKET)
    server.client().put_object(Bucket=BUCKET, Key="big.pdf", Body=text_layer_pdf(
        [f"line {i} of a long page, every word with its box" for i in range(3000)]))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(start_worker: Callable[..., Worker], start_api: Callable[..., ApiServer],
        s3: MotoS3) -> ApiServer:
    env = {"OCR_ALLOWED_URLS": f"s3://{BUCKET}/", "OCR_BATCH_STEP_SECONDS": "0.2",
           **s3.env()}
    workers = fake_env(cache=True, **FAST_PAGES, OCR_CONCURRENCY="2", **env)
    start_worker(**workers)
    start_worker("control", **workers)  # batches' steps
    return start_api(**env)


@pytest.fixture(scope="module")
def store(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def send(http: requests.Session, api: ApiServer, status: int = 202) -> requests.Response:
    answer = http.post(f"{api.url}/v1/jobs", json={"url": DOC}, timeout=60)
    assert answer.status_code == status, answer.text
    return answer


def read(http: requests.Session, api: ApiServer) -> str:
    """The document sent by URL and waited for to its SUCCESS; its job's id."""
    job_id = str(send(http, api).json()["id"])
    assert wait_end(http, api, job_id, 120)["status"] == "SUCCESS"
    return job_id


def result(http: requests.Session, api: ApiServer, job_id: str) -> dict:
    answer = http.get(f"{api.url}/v1/jobs/{job_id}/result", params={"format": "json"},
                      timeout=60)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_resends_refer_to_the_result_and_count_in_the_quota(
        api: ApiServer, redis_url: str, store: redis.Redis) -> None:
    # A first client's read of the document: how large its stored result is.
    probe = session(create_token(redis_url, "probe", "--allowed-url", f"s3://{BUCKET}/"))
    size = store.strlen(f"celery-task-meta-{read(probe, api)}")
    assert size > 200_000
    # Room for the read and its re-sends (each counts the result it keeps), not more.
    limit = (RESENDS + 1) * size - size // 2
    token = create_token(redis_url, "hoarder", "--allowed-url", f"s3://{BUCKET}/",
                         "--max-bytes", str(limit))
    hoarder = session(token)
    first = read(hoarder, api)
    whole = result(hoarder, api, first)
    assert not whole["cached"]
    resends = [read(hoarder, api) for _ in range(RESENDS - 1)]
    for job_id in resends:
        again = result(hoarder, api, job_id)
        assert again["cached"] and again["id"] == job_id
        assert again["pages"] == whole["pages"] and again["text"] == whole["text"]
        # no copy of the result: a record of its own fields, naming the first job
        assert store.strlen(f"celery-task-meta-{job_id}") < size // 50
    assert stored_now(store, api_bytes_key("hoarder"), corrections_bytes_key("hoarder"),
                      "hoarder") >= RESENDS * size
    # One more fits (the stored bytes are under the quota as it is sent) ...
    last = read(hoarder, api)
    assert result(hoarder, api, last)["cached"]
    # ... and then a 60-byte request by URL is refused, and so is an upload.
    refused = send(hoarder, api, 429)
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert refused.headers["Retry-After"]
    upload = hoarder.post(f"{api.url}/v1/jobs", files={"file": ("a.pdf", b"%PDF-1.4 x")},
                          timeout=60)
    assert upload.status_code == 429, upload.text
    assert upload.json()["error"]["code"] == "quota_exceeded"
    listed = hoarder.get(f"{api.url}/v1/jobs", timeout=60).json()["jobs"]
    assert len(listed) == RESENDS + 1  # nothing sent for the refused requests
    read(probe, api)  # another client is not held by it


def test_a_result_past_its_end_leaves_the_count(store: redis.Redis) -> None:
    """Counted with a 1 s TTL: after it, the client's stored bytes are back to none."""
    store.set("celery-task-meta-short", b"r" * 1000, ex=1)
    counted = StoredResults(store, 1).count("brief", "short")
    assert counted == 1000
    inputs, corrections = api_bytes_key("brief"), corrections_bytes_key("brief")
    assert stored_now(store, inputs, corrections, "brief") == 1000
    time.sleep(2.1)
    assert stored_now(store, inputs, corrections, "brief") == 0
    assert not store.exists("ocr:api:results:brief", "ocr:api:results:brief:bytes")


def test_a_batch_past_the_quota_waits_for_room(
        api: ApiServer, redis_url: str, store: redis.Redis, s3: MotoS3) -> None:
    """The client's results past its 10,000 bytes: its batch's document is not sent."""
    token = create_token(redis_url, "waiter", "--allowed-url", f"s3://{BUCKET}/",
                         "--max-bytes", "10000")
    waiter = session(token)
    s3.client().put_object(Bucket=BUCKET, Key="in/one.png", Body=png(200, (41, 31)))
    store.set("celery-task-meta-earlier", b"r" * 20_000, ex=3600)  # an earlier result
    assert StoredResults(store, 3600).count("waiter", "earlier") == 20_000
    made = waiter.post(f"{api.url}/v1/batches", timeout=30, json={
        "source": f"s3://{BUCKET}/in/", "result_url": f"s3://{BUCKET}/out/"})
    assert made.status_code == 202, made.text
    batch_id = made.json()["id"]
    time.sleep(3)  # steps every 0.2 s: each finds no room
    assert info(waiter, api, batch_id)["state"] == "RUNNING"
    assert jobs_of(store, batch_id) == 0
    store.delete(api_results_key("waiter"), f"{api_results_key('waiter')}:bytes")  # room
    done = ended(waiter, api, batch_id)
    assert done["state"] == "SUCCESS" and jobs_of(store, batch_id) == 1, done
