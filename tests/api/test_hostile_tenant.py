"""A hostile tenant against the gate: every door holds a client to its own rules.

Real workers (the fake engines), a real Redis, moto's S3 server, the HTTP API and a
loopback https server. Clients, each held to its own prefixes beside
OCR_ALLOWED_URLS (which lists both tenants' buckets and the https server):

- `a`: `s3://tenant-a/` (its private document is there);
- `b`: `s3://tenant-b/` and the https server;
- `c`: `s3://tenant-b/c/`, `--max-priority batch`, `--jobs-in-flight 3`, `--batches 1`.

Probes: a manifest line of b's naming a's object (refused line `url_not_allowed`, a's
text never written under b's target, no job sent for it); a batch above c's highest
priority (403) while c's plain job is 202 at `batch`; c's jobs in flight counted
across a batch and single jobs (the batch waits for room, a single job is 429), its
second batch refused (429 `batch_quota_exceeded`); lines with a bad option and an
unserved engine coded per line with the batch ending; a 10 MiB manifest line; a
100,000-line https manifest read once.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from tests.api.test_batches import ended, info, jobs_of
from tests.api_server import ApiServer, create_token, session
from tests.clients.test_object_storage import self_signed
from tests.harness import FAST_PAGES, Worker, eventually, fake_env
from tests.held_records import held_items
from tests.image_fixtures import png
from tests.moto_s3 import MotoS3

WINDOW = 4
STEP = {"OCR_BATCH_WINDOW": str(WINDOW), "OCR_BATCH_STEP_SECONDS": "0.2"}
SECRET_SIZE = (77, 55)  # a's private page: its fake text names this size


class Manifests:
    """A loopback https server of manifests; counts each path's GETs."""

    def __init__(self, directory: Path) -> None:
        self.bodies: dict[str, bytes] = {}
        self.gets: dict[str, int] = {}
        served, gets = self.bodies, self.gets

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
                self.answer(False)

            def do_GET(self) -> None:  # noqa: N802
                gets[self.path] = gets.get(self.path, 0) + 1
                self.answer(True)

            def answer(self, body: bool) -> None:
                data = served.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.send_header("ETag", f'"{len(data or b"")}"')
                self.end_headers()
                if body and data:
                    self.wfile.write(data)

        self.cert, key = self_signed(directory)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.prefix = f"https://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manifests]:
    served = Manifests(tmp_path_factory.mktemp("tls"))
    yield served
    served.server.shutdown()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    for bucket in ("tenant-a", "tenant-b"):
        server.client().create_bucket(Bucket=bucket)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(s3: MotoS3, manifests: Manifests) -> dict[str, str]:
    return {"OCR_ALLOWED_URLS": f"s3://tenant-a/,s3://tenant-b/,{manifests.prefix}",
            "SSL_CERT_FILE": str(manifests.cert), **STEP, **s3.env()}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
        start_worker: Callable[..., Worker], env: dict[str, str]) -> Iterator[ApiServer]:
    spool = str(tmp_path_factory.mktemp("spool"))
    workers = {**fake_env("fake", "slow-on-dark", **FAST_PAGES, OCR_CONCURRENCY="2"),
               **env, "OCR_URL_SPOOL_DIR": spool}
    start_worker(**workers)
    start_worker("control", **workers)
    server = ApiServer(tmp_path_factory.mktemp("api") / "api.log",
                       {"REDIS_URL": redis_url, **env}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tenants(api: ApiServer, redis_url: str, manifests: Manifests
            ) -> dict[str, requests.Session]:
    return {"a": session(create_token(redis_url, "a", "--allowed-url", "s3://tenant-a/")),
            "b": session(create_token(redis_url, "b", "--allowed-url", "s3://tenant-b/",
                                      "--allowed-url", manifests.prefix)),
            "c": session(create_token(redis_url, "c", "--allowed-url", "s3://tenant-b/c/",
                                      "--max-priority", "batch", "--jobs-in-flight", "3",
                                      "--batches", "1"))}


@pytest.fixture(scope="module")
def store(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def put(s3: MotoS3, bucket: str, key: str, body: bytes) -> str:
    s3.client().put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{key}"


def batch(http: requests.Session, api: ApiServer, source: str, target: str,
          status: int = 202, **options: Any) -> dict[str, Any]:
    answer = http.post(f"{api.url}/v1/batches", json={"source": source,
                                                      "result_url": target, **options},
                       timeout=30)
    assert answer.status_code == status, answer.text
    return dict(answer.json())


def manifest(s3: MotoS3, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    body = s3.client().get_object(Bucket=bucket, Key=f"{prefix}manifest.jsonl")["Body"]
    return {line["name"]: line for line in map(json.loads, body.read().decode().splitlines())}


def objects(s3: MotoS3, bucket: str, prefix: str) -> dict[str, bytes]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.client().get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in listed}


def test_a_manifest_line_into_another_clients_prefix_is_refused(
        tenants: dict[str, requests.Session], api: ApiServer, s3: MotoS3,
        store: redis.Redis) -> None:
    secret = put(s3, "tenant-a", "private/secret.png", png(120, SECRET_SIZE))
    own = put(s3, "tenant-b", "docs/own.png", png(200, (44, 33)))
    lines = [json.dumps({"url": own}), json.dumps({"url": secret}), secret]
    source = put(s3, "tenant-b", "lists/steal.jsonl", "\n".join(lines).encode())
    done = ended(tenants["b"], api, batch(tenants["b"], api, source,
                                          "s3://tenant-b/stolen/")["id"])
    assert done["state"] == "PARTIAL", done
    counts = done["documents"]
    assert (counts["done"], counts["failed"], counts["skipped"]) == (1, 1, 1), done
    body = s3.client().get_object(Bucket="tenant-b", Key="stolen/manifest.jsonl")["Body"]
    refused, again = [line for line in map(json.loads, body.read().decode().splitlines())
                      if line["name"] == "tenant-a/private/secret.png"]
    assert refused["status"] == "FAILURE" and refused["error"] == "url_not_allowed"
    assert refused["job_id"] == "" and refused["outputs"] == []
    assert again["error"] == "duplicate" and again["outputs"] == []  # the same line
    assert jobs_of(store, done["id"]) == 1  # the own document's job alone
    written = objects(s3, "tenant-b", "stolen/")
    assert "stolen/tenant-b/docs/own.png.txt" in written
    assert not any(key.startswith("stolen/tenant-a/") for key in written), sorted(written)
    size = f"fake {SECRET_SIZE[0]}x{SECRET_SIZE[1]}".encode()
    assert not any(size in body for body in written.values())
    # a's prefix as a batch's source: refused at the door
    answer = batch(tenants["b"], api, "s3://tenant-a/private/", "s3://tenant-b/x/",
                   status=400)
    assert answer["error"]["code"] == "url_not_allowed", answer


def test_a_batch_above_the_tokens_priority_is_403_and_a_plain_job_runs_at_batch(
        tenants: dict[str, requests.Session], api: ApiServer, s3: MotoS3,
        store: redis.Redis) -> None:
    c = tenants["c"]
    doc = put(s3, "tenant-b", "c/plain.png", png(210, (41, 31)))
    over = batch(c, api, "s3://tenant-b/c/in/", "s3://tenant-b/c/out/", status=403,
                 priority="interactive")
    assert over["error"]["code"] == "priority_not_allowed", over
    refused = c.post(f"{api.url}/v1/jobs", json={"url": doc, "priority": "normal"},
                     timeout=30)
    assert refused.status_code == 403, refused.text
    plain = c.post(f"{api.url}/v1/jobs", json={"url": doc}, timeout=30)
    assert plain.status_code == 202, plain.text
    job_id = plain.json()["id"]
    assert store.hget(f"ocr:job:{job_id}", "priority") == b"batch"
    eventually(lambda: c.get(f"{api.url}/v1/jobs/{job_id}", timeout=30).json()["status"]
               == "SUCCESS", 60, "c's plain job")


def test_jobs_in_flight_count_batch_documents_and_running_batches_are_bounded(
        tenants: dict[str, requests.Session], api: ApiServer, s3: MotoS3,
        store: redis.Redis) -> None:
    c = tenants["c"]
    for i in range(5):  # dark: slow-on-dark takes a minute a page
        put(s3, "tenant-b", f"c/dark/{i}.png", png(20, (50 + i, 40)))
    running = batch(c, api, "s3://tenant-b/c/dark/", "s3://tenant-b/c/dark-out/",
                    engine="slow-on-dark")["id"]
    eventually(lambda: info(c, api, running)["documents"]["running"] == 3, 60,
               "three documents in flight")
    single = c.post(f"{api.url}/v1/jobs", json={"url": "s3://tenant-b/c/plain.png"},
                    timeout=30)
    assert single.status_code == 429, single.text
    assert single.json()["error"]["code"] == "quota_exceeded"
    second = batch(c, api, "s3://tenant-b/c/dark/", "s3://tenant-b/c/two/", status=429)
    assert second["error"]["code"] == "batch_quota_exceeded", second
    shown = info(c, api, running)
    # the batch waits for room: 3 of its 5 documents sent, none failed for it
    assert shown["state"] == "RUNNING" and shown["documents"]["failed"] == 0, shown
    assert jobs_of(store, running) == 3 and store.zcard("ocr:api:inflight:c") == 3
    sent = [key.decode().removeprefix("ocr:job:") for key in store.scan_iter("ocr:job:*")
            if key.count(b":") == 2 and store.hget(key, "batch") == running.encode()]
    cancelled = c.post(f"{api.url}/v1/batches/{running}/cancel", timeout=30)
    assert cancelled.status_code == 200, cancelled.text
    assert ended(c, api, running, timeout=90)["state"] == "CANCELLED"
    eventually(lambda: not _messages_of(store, sent), 60,
               lambda: f"the cancelled jobs' messages gone: {_messages_of(store, sent)}")
    # what the batch and its jobs left in Redis expires
    left = [key for key in (*store.scan_iter(f"ocr:batch:{running}*"),
                            *(k for job in sent for k in store.scan_iter(f"ocr:job:{job}*")))
            if store.ttl(key) < 0]
    assert not left, left


def _messages_of(store: redis.Redis, job_ids: list[str]) -> list[str]:
    """Where a message of these jobs still is: a queue's list or lane, or held."""
    found = []
    lists = [k for pattern in ("ocr*", "ocr:lane:*", "{ocr*}:lane:*")
             for k in store.scan_iter(pattern)
             if store.type(k) == b"list"]
    for key in lists:
        found += [f"{key.decode()}: {job}" for item in store.lrange(key, 0, -1)
                  for job in job_ids if job.encode() in item]
    found += [f"held: {job}" for item in held_items(store).values()
              for job in job_ids if job.encode() in item]
    return found


def test_bad_option_lines_and_unserved_engines_are_coded_and_the_batch_ends(
        tenants: dict[str, requests.Session], api: ApiServer, s3: MotoS3,
        store: redis.Redis) -> None:
    docs = [put(s3, "tenant-b", f"opts/{i}.png", png(190, (60 + i, 30))) for i in range(3)]
    lines = [json.dumps({"url": docs[0]}),
             json.dumps({"url": docs[1], "options": {"output": "exe"}}),
             json.dumps({"url": docs[2], "options": {"engine": "nope"}}),
             json.dumps({"url": docs[2], "options": {"pages": "x-y"}}),
             "not a url at all"]
    source = put(s3, "tenant-b", "lists/opts.jsonl", "\n".join(lines).encode())
    done = ended(tenants["b"], api, batch(tenants["b"], api, source,
                                          "s3://tenant-b/opts-out/")["id"])
    assert done["state"] == "PARTIAL", done
    assert (done["documents"]["done"], done["documents"]["failed"]) == (1, 4), done
    by_name = manifest(s3, "tenant-b", "opts-out/")
    assert by_name["tenant-b/opts/0.png"]["status"] == "SUCCESS"
    assert by_name["tenant-b/opts/1.png"]["error"] == "bad_request"
    assert by_name["tenant-b/opts/2.png"]["error"] in ("unknown_engine", "invalid_pages")
    assert by_name["not a url at all"]["error"] == "bad_request"
    assert jobs_of(store, done["id"]) == 1
    assert store.llen("ocr-nope") == 0  # nothing waits on a queue no worker serves


def test_a_10_mib_manifest_line_fails_alone(tenants: dict[str, requests.Session],
                                            api: ApiServer, s3: MotoS3) -> None:
    first = put(s3, "tenant-b", "long/a.png", png(180, (45, 35)))
    last = put(s3, "tenant-b", "long/b.png", png(170, (46, 36)))
    huge = json.dumps({"url": first, "pad": "x" * (10 * 1024 * 1024)})
    body = "\n".join([json.dumps({"url": first}), huge, json.dumps({"url": last})])
    source = put(s3, "tenant-b", "lists/long.jsonl", body.encode())
    done = ended(tenants["b"], api, batch(tenants["b"], api, source,
                                          "s3://tenant-b/long-out/")["id"], timeout=90)
    assert done["state"] == "PARTIAL", done
    assert (done["documents"]["done"], done["documents"]["failed"]) == (2, 1), done
    codes = {line["error"] for line in manifest(s3, "tenant-b", "long-out/").values()}
    assert codes == {None, "line_too_long"}


def test_a_100000_line_https_manifest_is_read_once(
        tenants: dict[str, requests.Session], api: ApiServer, s3: MotoS3,
        manifests: Manifests) -> None:
    docs = [put(s3, "tenant-b", f"many/{i}.png", png(160 + i, (50, 30 + i)))
            for i in range(3)]
    padding = [" " * 30] * 99_997  # lines without a document: read, passed
    lines = [json.dumps({"url": docs[0]}), *padding[:50_000], json.dumps({"url": docs[1]}),
             *padding[50_000:], json.dumps({"url": docs[2]})]
    assert len(lines) == 100_000
    manifests.bodies["/many.jsonl"] = "\n".join(lines).encode()
    done = ended(tenants["b"], api, batch(tenants["b"], api,
                                          f"{manifests.prefix}many.jsonl",
                                          "s3://tenant-b/many-out/")["id"], timeout=120)
    assert done["state"] == "SUCCESS" and done["documents"]["done"] == 3, done
    assert manifests.gets["/many.jsonl"] == 1, manifests.gets
