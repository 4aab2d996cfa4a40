"""A hostile tenant against result targets and its places in flight.

Real workers (the fake engines) and the control worker, a real Redis, moto's S3 and the
HTTP API. One bucket, `shared`, lies under OCR_ALLOWED_URLS. The golden set is
`s3://shared/golden/` (OCR_GOLDEN_SET) and `s3://shared/frozen/` is read-only
(OCR_READONLY_URLS), on the API and the workers alike. Clients:

- `bare`: a token without prefixes of its own: it reads only the shared prefix
  `s3://shared/in/` (OCR_SHARED_READ_URLS) and writes no result anywhere;
- `owner`: `s3://shared/` whole, so the golden set and the read-only prefix lie under
  its own prefixes;
- `other`: `s3://shared/other/`, whose object `bare` tries to overwrite;
- `two`, `one`: whole-bucket clients limited to 2 and 1 jobs in flight.

Probes: every `result_url` and batch target of `bare` is refused at the door
(`url_not_allowed`) and nothing is written, while its shared reads still work; none
of its reads outside the shared prefix (another client's object, a missing one, the
golden set) is asked, and each is answered alike; `owner` cannot
target the golden set or the read-only prefix, nor a batch target that holds them;
behind the door the workers hold the same rule (the operator's Celery client past a
door whose settings list no read-only prefix; a job whose record names no result
prefix). A client's jobs leave its jobs in flight when they end (success, failure,
cancel), whatever becomes of their results; a place whose job's record is gone no
longer counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import requests

from tasks.client import OcrClient
from tests.api_server import ApiServer, create_token, session
from tests.harness import FAST_PAGES, Worker, eventually, fake_env, sent_past_the_gate
from tests.image_fixtures import png
from tests.moto_s3 import MotoS3

BUCKET = "shared"
GOLDEN = f"s3://{BUCKET}/golden/"
FROZEN = f"s3://{BUCKET}/frozen/"
TRUTH = b"the golden set's own truth"
THEIRS = b"another client's report"
ENV = {"OCR_ALLOWED_URLS": f"s3://{BUCKET}/", "OCR_SHARED_READ_URLS": f"s3://{BUCKET}/in/",
       "OCR_GOLDEN_SET": GOLDEN,
       "OCR_READONLY_URLS": FROZEN, "OCR_BATCH_STEP_SECONDS": "0.2"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    store = server.client()
    store.create_bucket(Bucket=BUCKET)
    store.put_object(Bucket=BUCKET, Key="in/doc.png", Body=png(200, (61, 43)))
    store.put_object(Bucket=BUCKET, Key="in/other.png", Body=png(200, (62, 44)))
    store.put_object(Bucket=BUCKET, Key="golden/linn.png", Body=png(200, (63, 45)))
    store.put_object(Bucket=BUCKET, Key="golden/linn.gt.txt", Body=TRUTH)
    store.put_object(Bucket=BUCKET, Key="frozen/kept.txt", Body=TRUTH)
    store.put_object(Bucket=BUCKET, Key="other/report.txt", Body=THEIRS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, start_worker: Callable[..., Worker],
        start_api: Callable[..., ApiServer], s3: MotoS3) -> ApiServer:
    workers = {**fake_env("fake", "slow-on-dark", **FAST_PAGES, OCR_CONCURRENCY="2"),
               **ENV, **s3.env(), "OCR_URL_SPOOL_DIR": str(tmp_path_factory.mktemp("spool"))}
    start_worker(**workers)
    start_worker("control", **workers)
    return start_api(**ENV, **s3.env())


@pytest.fixture(scope="module")
def tenants(api: ApiServer, redis_url: str) -> dict[str, requests.Session]:
    whole = ("--allowed-url", f"s3://{BUCKET}/")
    return {"bare": session(create_token(redis_url, "bare")),
            "owner": session(create_token(redis_url, "owner", *whole)),
            "other": session(create_token(redis_url, "other", "--allowed-url",
                                          f"s3://{BUCKET}/other/")),
            "two": session(create_token(redis_url, "two", *whole, "--jobs-in-flight", "2")),
            "one": session(create_token(redis_url, "one", *whole, "--jobs-in-flight", "1"))}


@pytest.fixture(scope="module")
def store(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def objects(s3: MotoS3) -> dict[str, bytes]:
    """Every object of the bucket, by key."""
    listed = s3.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {o["Key"]: s3.client().get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            for o in listed}


def refused(answer: requests.Response) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "url_not_allowed", answer.text


def job(http: requests.Session, api: ApiServer, **body: Any) -> requests.Response:
    return http.post(f"{api.url}/v1/jobs", json=body, timeout=30)


def batch(http: requests.Session, api: ApiServer, target: str) -> requests.Response:
    return http.post(f"{api.url}/v1/batches", timeout=30,
                     json={"source": f"s3://{BUCKET}/in/", "result_url": target})


def ended(http: requests.Session, api: ApiServer, job_id: str) -> dict[str, Any]:
    def shown() -> dict[str, Any] | None:
        status = http.get(f"{api.url}/v1/jobs/{job_id}", timeout=30).json()
        return None if status["status"] in ("QUEUED", "RUNNING") else dict(status)

    return eventually(shown, 120, f"job {job_id} to end")


def test_a_client_without_prefixes_writes_no_result_anywhere(
        tenants: dict[str, requests.Session], api: ApiServer, s3: MotoS3,
        store: redis.Redis) -> None:
    bare = tenants["bare"]
    before = objects(s3)
    for target in (f"{GOLDEN}linn.gt.txt",                 # the golden set's truth
                   f"{GOLDEN}planted.gt.txt",              # a new document of its own
                   f"s3://{BUCKET}/other/report.txt",      # another client's object
                   f"s3://{BUCKET}/bare/"):                # anywhere at all
        refused(job(bare, api, url=f"s3://{BUCKET}/in/doc.png", result_url=target))
        upload = bare.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png(190))},
                           data={"result_url": target}, timeout=30)
        refused(upload)
    for target in (f"s3://{BUCKET}/bare-out/", GOLDEN):
        refused(batch(bare, api, target))
    assert bare.get(f"{api.url}/v1/jobs", timeout=30).json()["jobs"] == []  # none sent
    assert not store.keys("ocr:batch:*")
    # Reading under the shared prefix works: only writes are held.
    sent = job(bare, api, url=f"s3://{BUCKET}/in/doc.png")
    assert sent.status_code == 202, sent.text
    assert ended(bare, api, sent.json()["id"])["status"] == "SUCCESS"
    assert objects(s3) == before  # nothing written, nothing replaced


def test_a_client_without_prefixes_reads_nothing_outside_the_shared_ones(
        tenants: dict[str, requests.Session], api: ApiServer, client: OcrClient) -> None:
    """OCR_ALLOWED_URLS is the service's bound, not a grant to every client."""
    bare = tenants["bare"]
    answers = set()
    for url in (f"s3://{BUCKET}/other/report.txt",   # another client's object
                f"s3://{BUCKET}/other/missing.png",  # one that does not exist
                f"s3://{BUCKET}/golden/linn.png"):   # the golden set
        answer = job(bare, api, url=url)
        refused(answer)
        answers.add(answer.text)
    assert len(answers) == 1, answers  # the same answer: no word on what exists
    refused(bare.post(f"{api.url}/v1/batches", timeout=30, json={
        "source": f"s3://{BUCKET}/other/", "result_url": f"s3://{BUCKET}/other/out/"}))
    # Behind the door the worker holds the same rule: a job sent with the bare client's
    # empty list (as the API records it) is refused before anything is asked.
    sneaked = sent_past_the_gate(client, {"url": f"s3://{BUCKET}/other/report.txt",
                                          "filename": "report.txt"}, url_prefixes=())
    result = client.wait([sneaked], timeout=120)[sneaked]
    assert result["status"] == "FAILURE", result
    assert result["error"]["code"] == "url_not_allowed", result


def test_no_client_writes_under_the_golden_set_or_a_read_only_prefix(
        tenants: dict[str, requests.Session], api: ApiServer, s3: MotoS3) -> None:
    owner = tenants["owner"]
    before = objects(s3)
    for target in (f"{GOLDEN}linn.gt.txt", GOLDEN, f"{GOLDEN}new/", f"{FROZEN}kept.txt",
                   FROZEN):
        refused(job(owner, api, url=f"s3://{BUCKET}/in/doc.png", result_url=target))
    # A batch writes any name under its target: one that holds them is refused too.
    for target in (f"{GOLDEN}run/", FROZEN, f"s3://{BUCKET}/"):
        refused(batch(owner, api, target))
    assert objects(s3) == before
    # Its own place, outside them: written.
    sent = job(owner, api, url=f"s3://{BUCKET}/in/doc.png", result_url=f"s3://{BUCKET}/own/")
    assert sent.status_code == 202, sent.text
    job_id = sent.json()["id"]
    assert ended(owner, api, job_id)["status"] == "SUCCESS"
    written = set(objects(s3)) - set(before)
    assert f"own/{job_id}.txt" in written, written
    assert all(key.startswith(f"own/{job_id}.txt") for key in written), written


def test_the_workers_hold_the_same_rule_behind_the_door(
        api: ApiServer, client: OcrClient, s3: MotoS3) -> None:
    before = objects(s3)
    # The operator's Celery client writes under OCR_ALLOWED_URLS; its door's settings
    # list no read-only prefix here, so the worker refuses the golden set itself.
    golden = client.submit(f"s3://{BUCKET}/in/doc.png", result_url=f"{GOLDEN}linn.gt.txt")
    operator = client.submit(f"s3://{BUCKET}/in/doc.png", result_url=f"s3://{BUCKET}/ops/")
    # A job whose record names no result prefix, as the API sends a bare client's.
    scoped = sent_past_the_gate(client, {"url": f"s3://{BUCKET}/in/other.png",
                                         "filename": "other.png",
                                         "result_url": f"s3://{BUCKET}/scoped/"},
                                result_prefixes=())
    results = client.wait([golden, operator, scoped], timeout=120)
    assert results[golden]["status"] == "FAILURE", results[golden]
    assert results[golden]["error"]["code"] == "url_not_allowed", results[golden]
    assert results[scoped]["status"] == "SUCCESS", results[scoped]
    assert results[scoped]["result_object"]["error"]["code"] == "url_not_allowed"
    assert results[operator]["status"] == "SUCCESS", results[operator]
    written = set(objects(s3)) - set(before)
    assert written and all(key.startswith(f"ops/{operator}") for key in written), written
    assert objects(s3)[f"{GOLDEN.removeprefix(f's3://{BUCKET}/')}linn.gt.txt"] == TRUTH


def test_jobs_leave_the_in_flight_set_when_they_end_whatever_their_results_become(
        tenants: dict[str, requests.Session], api: ApiServer, client: OcrClient,
        store: redis.Redis) -> None:
    """The client never asks the API about its jobs (a webhook client): they end alone.

    Their ends are followed in Redis (`OcrClient.wait`), not through the API, whose
    status answers are no part of a job's ending.
    """
    two = tenants["two"]
    places = "ocr:api:inflight:two"
    good = two.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png(200, (71, 51)))},
                    timeout=30)
    # A PNG's signature passes the door's sniff; the worker finds no image behind it.
    broken = b"\x89PNG\r\n\x1a\n" + b"not an image"
    bad = two.post(f"{api.url}/v1/jobs", files={"file": ("b.png", broken)}, timeout=30)
    assert good.status_code == bad.status_code == 202, (good.text, bad.text)
    ids = [good.json()["id"], bad.json()["id"]]
    results = client.wait(ids, timeout=120)
    assert [results[i]["status"] for i in ids] == ["SUCCESS", "FAILURE"], results
    eventually(lambda: store.zcard(places) == 0, 30,
               lambda: f"ended jobs still in flight: {store.zrange(places, 0, -1)}")
    # A cancelled one too: a dark page the slow engine sleeps on, cancelled as it runs.
    slow = two.post(f"{api.url}/v1/jobs", data={"engine": "slow-on-dark"},
                    files={"file": ("dark.png", png(20, (72, 52)))}, timeout=30)
    assert slow.status_code == 202, slow.text
    slow_id = slow.json()["id"]
    eventually(lambda: client.status(slow_id).status != "QUEUED", 60,
               "the slow job to start")
    cancel = two.delete(f"{api.url}/v1/jobs/{slow_id}", timeout=30)
    assert cancel.status_code == 202, cancel.text
    assert client.wait([slow_id], timeout=120)[slow_id]["status"] == "CANCELLED"
    eventually(lambda: store.zcard(places) == 0, 30,
               lambda: f"a cancelled job still in flight: {store.zrange(places, 0, -1)}")
    # Their results expire (deleted here): the client's two places are free all the same.
    for job_id in (*ids, slow_id):
        store.delete(f"celery-task-meta-{job_id}", f"ocr:job:{job_id}")
    again = [two.post(f"{api.url}/v1/jobs", files={"file": (f"{i}.png", png(200))},
                      timeout=30) for i in range(2)]
    assert [a.status_code for a in again] == [202, 202], [a.text for a in again]
    client.wait([a.json()["id"] for a in again], timeout=120)


def test_a_place_whose_job_is_gone_no_longer_counts(
        tenants: dict[str, requests.Session], api: ApiServer, store: redis.Redis) -> None:
    one = tenants["one"]
    places = "ocr:api:inflight:one"
    # A place taken an hour ago by a job whose records are gone (expired, or lost).
    store.zadd(places, {"lost-job": time.time() - 3600})
    sent = one.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png(200))}, timeout=30)
    assert sent.status_code == 202, sent.text
    assert b"lost-job" not in store.zrange(places, 0, -1)
    ended(one, api, sent.json()["id"])
    # A place just taken still counts: its sender writes the job's record next.
    store.zadd(places, {"being-sent": time.time()})
    held = one.post(f"{api.url}/v1/jobs", files={"file": ("b.png", png(200))}, timeout=30)
    assert held.status_code == 429, held.text
    assert held.json()["error"]["code"] == "quota_exceeded"
