"""A batch's documents are its API client's jobs: their status, pages and corrections.

moto's S3 server, a worker with the fake engine and the control worker, the Procfile's
`api` process. Alice's batch of two one-page PNGs in `s3://src/` ends; each document's
job (its id from the manifest) answers Alice as a job she sent would: its status
(client, file name, output), its text result, its page's JSON and image, a line
corrected and reverted. Bob, another client, gets 404 for every one of them, the
correction included, and his own batch's documents are his alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.api_server import ApiServer, create_token, session
from tests.harness import FAST_PAGES, Worker, eventually, fake_env
from tests.image_fixtures import png
from tests.moto_s3 import MotoS3

OWN = ("--allowed-url", "s3://src/", "--allowed-url", "s3://out/")  # a client writes there
BATCH_ENV = {"OCR_ALLOWED_URLS": "s3://src/,s3://out/", "OCR_BATCH_WINDOW": "4",
             "OCR_BATCH_STEP_SECONDS": "0.2"}
NAMES = ["doc-0.png", "doc-1.png"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    for bucket in ("src", "out"):
        server.client().create_bucket(Bucket=bucket)
    for i, name in enumerate(NAMES):
        server.client().put_object(Bucket="src", Key=f"set/{name}",
                                   Body=png(200, (40 + i, 30 + i)))
    yield server
    server.stop()


def worker_env(s3: MotoS3, spool: Path) -> dict[str, str]:
    return {**fake_env(**FAST_PAGES, OCR_CONCURRENCY="2"), **BATCH_ENV,
            "OCR_URL_SPOOL_DIR": str(spool), **s3.env()}


def start_batch_service(tmp_path_factory: pytest.TempPathFactory, s3: MotoS3,
                        start_worker: Callable[..., Worker],
                        start_api: Callable[..., ApiServer]) -> ApiServer:
    """A worker (fake engine), the control worker and the API over `s3`'s buckets."""
    start_worker(**worker_env(s3, tmp_path_factory.mktemp("spool")))
    start_worker("control", **worker_env(s3, tmp_path_factory.mktemp("spool")))
    return start_api(**BATCH_ENV, **s3.env())


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, s3: MotoS3,
        start_worker: Callable[..., Worker], start_api: Callable[..., ApiServer]) -> ApiServer:
    return start_batch_service(tmp_path_factory, s3, start_worker, start_api)


@pytest.fixture(scope="module")
def alice(api: ApiServer, redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "alice", *OWN))


@pytest.fixture(scope="module")
def bob(api: ApiServer, redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "bob", *OWN))


def batch_ended(http: requests.Session, api: ApiServer, result_url: str) -> dict[str, Any]:
    """A batch of `s3://src/set/` into `result_url` sent by `http`'s client: its end."""
    answer = http.post(f"{api.url}/v1/batches", json={
        "source": "s3://src/set/", "result_url": result_url}, timeout=30)
    assert answer.status_code == 202, answer.text
    batch_id = answer.json()["id"]

    def ended() -> dict[str, Any] | None:
        info = http.get(f"{api.url}/v1/batches/{batch_id}", timeout=30).json()
        return dict(info) if info["state"] != "RUNNING" else None

    return dict(eventually(ended, 120, f"batch {batch_id} to end"))


def batch_jobs(http: requests.Session, api: ApiServer, s3: MotoS3,
               prefix: str) -> dict[str, str]:
    """A batch of `s3://src/set/` into `s3://out/<prefix>`, to its end: name -> job id."""
    info = batch_ended(http, api, f"s3://out/{prefix}")
    assert info["state"] == "SUCCESS", info
    body = s3.client().get_object(Bucket="out", Key=f"{prefix}manifest.jsonl")["Body"].read()
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert sorted(line["name"] for line in lines) == NAMES
    return {line["name"]: line["job_id"] for line in lines}


@pytest.fixture(scope="module")
def alices(alice: requests.Session, api: ApiServer, s3: MotoS3) -> dict[str, str]:
    return batch_jobs(alice, api, s3, "alice/")


def test_a_batch_document_is_its_clients_job(alice: requests.Session, api: ApiServer,
                                            alices: dict[str, str]) -> None:
    for name, job_id in alices.items():
        status = alice.get(f"{api.url}/v1/jobs/{job_id}", timeout=10)
        assert status.status_code == 200, status.text
        shown = status.json()
        assert shown["status"] == "SUCCESS" and shown["client"] == "alice", shown
        assert shown["filename"] == name and shown["output"] == "text", shown
        text = alice.get(f"{api.url}/v1/jobs/{job_id}/result?format=text", timeout=10)
        assert text.status_code == 200 and text.text.startswith("fake "), text.text
        page = alice.get(f"{api.url}/v1/jobs/{job_id}/pages/1", timeout=10)
        assert page.status_code == 200, page.text
        read = page.json()
        assert read["number"] == 1 and read["engine"] == "fake", read
        assert [line["text"] for line in read["lines"]] == [text.text.strip()]
        image = alice.get(f"{api.url}/v1/jobs/{job_id}/pages/1/image", timeout=10)
        assert image.status_code == 200, image.text
        assert image.headers["content-type"] == "image/webp"
        assert image.headers["cache-control"].startswith("private")
        assert image.content[:4] == b"RIFF" and image.content[8:12] == b"WEBP"
    listed = alice.get(f"{api.url}/v1/jobs", timeout=10).json()
    assert set(alices.values()) <= {job["id"] for job in listed["jobs"]}


def test_a_batch_documents_line_is_corrected_by_its_client(
        alice: requests.Session, api: ApiServer, alices: dict[str, str]) -> None:
    job_id = alices[NAMES[0]]
    line = alice.get(f"{api.url}/v1/jobs/{job_id}/pages/1", timeout=10).json()["lines"][0]
    url = f"{api.url}/v1/jobs/{job_id}/pages/1/lines/{line['id']}"
    put = alice.put(url, json={"text": "a person's reading"}, timeout=10)
    assert put.status_code == 200, put.text
    text = alice.get(f"{api.url}/v1/jobs/{job_id}/result?format=text", timeout=10).text
    assert "a person's reading" in text and line["text"] not in text
    assert alice.delete(url, timeout=10).status_code == 200
    text = alice.get(f"{api.url}/v1/jobs/{job_id}/result?format=text", timeout=10).text
    assert text.strip() == line["text"]


def test_another_clients_batch_documents_are_not_found(
        alice: requests.Session, bob: requests.Session, api: ApiServer, s3: MotoS3,
        alices: dict[str, str]) -> None:
    for job_id in alices.values():
        for part in ("", "/result?format=text", "/pages/1", "/pages/1/image"):
            answer = bob.get(f"{api.url}/v1/jobs/{job_id}{part}", timeout=10)
            assert answer.status_code == 404, (part, answer.text)
            assert answer.json()["error"]["code"] == "not_found"
        put = bob.put(f"{api.url}/v1/jobs/{job_id}/pages/1/lines/p1-l1",
                      json={"text": "forged"}, timeout=10)
        assert put.status_code == 404, put.text
    listed = bob.get(f"{api.url}/v1/jobs", timeout=10).json()
    assert not set(alices.values()) & {job["id"] for job in listed["jobs"]}
    # Bob's own batch of the same documents: his jobs, not Alice's
    bobs = batch_jobs(bob, api, s3, "bob/")
    for job_id in bobs.values():
        assert bob.get(f"{api.url}/v1/jobs/{job_id}/pages/1", timeout=10).status_code == 200
        assert alice.get(f"{api.url}/v1/jobs/{job_id}/pages/1", timeout=10).status_code == 404
