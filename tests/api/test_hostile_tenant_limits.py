"""A hostile tenant against the limits and the callbacks.

The HTTP API as the Procfile starts it, on a real Redis. The bursts come first, while
no worker runs, so no job or batch ends while a burst is answered: every place taken
stays taken. A client limited to 3 jobs in flight fires 30 `POST /v1/jobs` at once,
so does one capped at 3 pages a day, and one limited to 1 running batch fires 20
`POST /v1/batches` at once (three such clients, one after another); each finds
exactly its limit accepted and the rest refused with their coded 429.

Then real workers (the fake engine, and the control worker) read from moto's S3, with
OCR_CALLBACK_SECRET empty: a job's ending, a batch's ending (`batch.ended`) and its
document's callback each reach a loopback receiver signed with the owner's own
secret; a client left without a secret has its callback refused, never sent unsigned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests

from devkit.receivers import CallbackReceiver
from tasks.lifecycle.callbacks import verify
from tests.api.test_batches import ended
from tests.api_server import ApiServer, create_token, session
from tests.harness import FAST_PAGES, ROOT, Worker, eventually, fake_env
from tests.image_fixtures import png
from tests.moto_s3 import MotoS3

ALLOWED = "s3://tenant-l/"


@pytest.fixture(scope="module")
def receiver() -> Iterator[CallbackReceiver]:
    receiving = CallbackReceiver()
    yield receiving
    receiving.server.shutdown()


@pytest.fixture(scope="module")
def callbacks(receiver: CallbackReceiver) -> dict[str, str]:
    """The receiver's host listed; no service-wide secret: owners' secrets sign."""
    return {"OCR_ALLOWED_URLS": ALLOWED, "OCR_CALLBACK_SECRET": "",
            "OCR_CALLBACK_ALLOWED_HOSTS": f"127.0.0.1:{receiver.port}"}


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer], callbacks: dict[str, str]) -> ApiServer:
    return start_api(**callbacks)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    server.client().create_bucket(Bucket="tenant-l")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., Worker], s3: MotoS3,
            callbacks: dict[str, str]) -> None:
    env = {**fake_env("fake", **FAST_PAGES), **callbacks, **s3.env(),
           "OCR_BATCH_STEP_SECONDS": "0.2"}
    start_worker(**env)
    start_worker("control", **env)


@pytest.fixture(scope="module")
def store(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def burst(count: int, post: Callable[[], requests.Response]) -> list[requests.Response]:
    """`count` requests, each on its own thread, released together."""
    start = threading.Barrier(count)

    def one(_: int) -> requests.Response:
        start.wait()
        return post()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def tally(answers: list[requests.Response]) -> dict[Any, int]:
    """(status, error code) -> how many answers had it."""
    seen: dict[Any, int] = {}
    for answer in answers:
        code = answer.json().get("error", {}).get("code") if answer.status_code != 202 \
            else None
        seen[(answer.status_code, code)] = seen.get((answer.status_code, code), 0) + 1
    return seen


def jobs_burst(api: ApiServer, token: str, count: int = 30) -> list[requests.Response]:
    """`count` simultaneous `POST /v1/jobs` of one client, each on a session of its own."""
    sessions = iter([session(token) for _ in range(count)])
    lock = threading.Lock()

    def post() -> requests.Response:
        with lock:
            http = next(sessions)
        return http.post(f"{api.url}/v1/jobs", json={"url": f"{ALLOWED}doc.png"},
                         timeout=60)

    return burst(count, post)


def test_30_simultaneous_jobs_of_a_client_limited_to_3_in_flight_take_3(
        api: ApiServer, redis_url: str, store: redis.Redis) -> None:
    token = create_token(redis_url, "three", "--allowed-url", ALLOWED,
                         "--jobs-in-flight", "3")
    answers = jobs_burst(api, token)
    assert tally(answers) == {(202, None): 3, (429, "quota_exceeded"): 27}, \
        [a.text for a in answers if a.status_code not in (202, 429)]
    accepted = {a.json()["id"] for a in answers if a.status_code == 202}
    assert {m.decode() for m in store.zrange("ocr:api:inflight:three", 0, -1)} == accepted
    listed = session(token).get(f"{api.url}/v1/jobs", timeout=30).json()
    assert {job["id"] for job in listed["jobs"]} == accepted, listed


def test_30_simultaneous_one_page_jobs_of_a_client_capped_at_3_pages_a_day_take_3(
        api: ApiServer, redis_url: str, store: redis.Redis) -> None:
    token = create_token(redis_url, "three-pages", "--allowed-url", ALLOWED,
                         "--pages-per-day", "3")
    answers = jobs_burst(api, token)
    assert tally(answers) == {(202, None): 3, (429, "page_quota_exceeded"): 27}, \
        [a.text for a in answers if a.status_code not in (202, 429)]
    accepted = {a.json()["id"].encode() for a in answers if a.status_code == 202}
    assert store.hgetall("ocr:usage:held:three-pages") == dict.fromkeys(accepted, b"1")


@pytest.mark.parametrize("client", ["one-batch", "one-batch-again", "one-batch-more"])
def test_20_simultaneous_batches_of_a_client_limited_to_1_take_1(
        api: ApiServer, redis_url: str, store: redis.Redis, client: str) -> None:
    token = create_token(redis_url, client, "--allowed-url", ALLOWED, "--batches", "1")
    sessions = [session(token) for _ in range(20)]
    turn = iter(range(20))
    lock = threading.Lock()

    def post() -> requests.Response:
        with lock:
            i = next(turn)
        return sessions[i].post(f"{api.url}/v1/batches", timeout=60, json={
            "source": f"{ALLOWED}in/", "result_url": f"{ALLOWED}out/{client}/{i}/"})

    answers = burst(20, post)
    assert tally(answers) == {(202, None): 1, (429, "batch_quota_exceeded"): 19}, \
        [a.text for a in answers if a.status_code not in (202, 429)]
    owned = [i for i in store.smembers("ocr:batches:running")
             if store.hget(b"ocr:batch:" + i, "client") == client.encode()]
    assert [i.decode() for i in owned] == \
        [a.json()["id"] for a in answers if a.status_code == 202]


def tokens_create(redis_url: str, name: str) -> dict[str, str]:
    """`submit.py tokens create NAME --json`: the token and its webhook secret."""
    done = subprocess.run(
        [sys.executable, "submit.py", "tokens", "create", name, "--json", "--allowed-url",
         ALLOWED], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_every_callback_is_signed_with_its_owners_secret(
        api: ApiServer, redis_url: str, store: redis.Redis, s3: MotoS3,
        receiver: CallbackReceiver, workers: None) -> None:
    owner, other = tokens_create(redis_url, "signer"), tokens_create(redis_url, "other")
    http = session(owner["token"])
    hook = f"http://127.0.0.1:{receiver.port}"
    s3.client().put_object(Bucket="tenant-l", Key="cb/one.png", Body=png(200, (31, 21)))
    s3.client().put_object(Bucket="tenant-l", Key="cb/docs/two.png", Body=png(190, (32, 22)))
    job = http.post(f"{api.url}/v1/jobs", timeout=30, json={
        "url": f"{ALLOWED}cb/one.png", "callback_url": f"{hook}/job"})
    assert job.status_code == 202, job.text
    made = http.post(f"{api.url}/v1/batches", timeout=30, json={
        "source": f"{ALLOWED}cb/docs/", "result_url": f"{ALLOWED}cb/out/",
        "callback_url": f"{hook}/batch", "document_callbacks": True})
    assert made.status_code == 202, made.text
    assert ended(http, api, made.json()["id"])["state"] == "SUCCESS"

    def posted() -> dict[str, tuple[dict[str, str], bytes]] | None:
        kinds = {}
        for headers, body in list(receiver.posts):
            sent = json.loads(body)
            kind = "job" if sent.get("id") == job.json()["id"] else \
                "batch" if sent.get("event") == "batch.ended" else "document"
            kinds[kind] = (headers, body)
        return kinds if len(kinds) == 3 else None

    kinds = eventually(posted, 90, lambda: f"three kinds of callback: {receiver.posts}")
    for kind, (headers, body) in kinds.items():
        assert "X-OCR-Signature" in headers, (kind, headers)
        stamp, signature = headers["X-OCR-Timestamp"], headers["X-OCR-Signature"]
        assert verify(body, owner["webhook_secret"], stamp, signature), kind
        assert not verify(body, other["webhook_secret"], stamp, signature), kind

    # a client no secret can sign for: its callback is refused, never sent unsigned
    store.delete("ocr:api:webhook:other")
    others = session(other["token"])
    unsigned = others.post(f"{api.url}/v1/jobs", timeout=30, json={
        "url": f"{ALLOWED}cb/one.png", "callback_url": f"{hook}/unsigned"})
    assert unsigned.status_code == 202, unsigned.text
    result = f"{api.url}/v1/jobs/{unsigned.json()['id']}/result?format=json"
    record = eventually(lambda: (lambda r: r.json().get("callback") if r.status_code == 200
                                 else None)(others.get(result, timeout=30)), 90,
                        "the refused callback's record")
    assert (record["status"], record["code"]) == ("refused", "callback_not_allowed"), record
    assert not [b for _, b in receiver.posts if json.loads(b).get("id") ==
                unsigned.json()["id"]]
