"""Every job carries its client: from the sender, through fan-out and retries, to its result.

A real redis-server and a real worker with the fake engines (tests/fake_engines.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.client import OcrClient
from tasks.queue.routing import queue_for_engine
from tests.harness import Worker, corpus, eventually, fake_env, make_client
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf, plain_pages


@pytest.fixture(scope="module")
def healed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flags") / "healed"


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], healed: Path) -> Worker:
    return start_worker(**fake_env("transient-on-dark", OCR_CONCURRENCY="2",
                                   FAKE_HEALED_FLAG=str(healed)))


def _wait(client: OcrClient, job_id: str) -> dict[str, Any]:
    return client.wait([job_id], timeout=90)[job_id]


def test_a_job_shows_the_client_it_was_sent_under(worker: Worker, redis_url: str) -> None:
    alpha = make_client(redis_url)
    alpha.client = "alpha"
    try:
        image = _wait(alpha, alpha.submit(corpus("scan_tess_phototest.tif")))
        pdf = _wait(alpha, alpha.submit(image_pdf(plain_pages(3)), mode="ocr"))
        named = make_client(redis_url, OCR_CLIENT="beta")
        assert named.client == "beta"
        other = _wait(named, named.submit(png(120), filename="b.png"))
        named.close()
    finally:
        alpha.close()
    assert (image["status"], image["client"]) == ("SUCCESS", "alpha")
    assert (pdf["status"], len(pdf["pages"]), pdf["client"]) == ("SUCCESS", 3, "alpha")
    assert (other["status"], other["client"]) == ("SUCCESS", "beta")


def test_a_client_name_comes_from_the_login_when_none_is_set(redis_url: str) -> None:
    client = make_client(redis_url)
    try:
        assert client.client  # the test runner's user: a valid name, never empty here
    finally:
        client.close()


def test_a_foreign_sender_names_its_client_by_header(worker: Worker, client: OcrClient
                                                     ) -> None:
    blob = client._blobs.put(png(120))
    named = client.app.send_task("ocr.document", kwargs={"blob": blob},
                                 headers={"ocr_client": "gamma"}).id
    anonymous = client.app.send_task("ocr.document",
                                     kwargs={"blob": client._blobs.put(png(121))}).id
    invalid = client.app.send_task("ocr.document", kwargs={"blob": client._blobs.put(png(122))},
                                   headers={"ocr_client": "no spaces/allowed"}).id
    assert _wait(client, named)["client"] == "gamma"
    assert _wait(client, anonymous)["client"] == ""
    assert _wait(client, invalid)["client"] == ""


def test_a_job_refused_before_it_is_read_still_names_its_client(worker: Worker,
                                                                client: OcrClient) -> None:
    job = client.app.send_task("ocr.document", kwargs={"blob": "ocr:blob:missing-1234"},
                               headers={"ocr_client": "delta"}).id
    result = _wait(client, job)
    assert (result["status"], result["error"]["code"], result["client"]) == \
        ("FAILURE", "input_not_found", "delta")


def test_a_retried_job_keeps_its_client_header(worker: Worker, client: OcrClient,
                                               healed: Path) -> None:
    """A job sent by header only names its client only if every retry carried it on.

    No control hash records the client here: only the message header does.
    """
    blob = client._blobs.put(png(20))  # dark: the engine's service is away until healed
    job = client.app.send_task("ocr.document",
                               kwargs={"blob": blob, "engine": "transient-on-dark"},
                               queue=queue_for_engine("transient-on-dark"),
                               headers={"ocr_client": "epsilon"}).id
    eventually(lambda: "Retry in" in worker.log(), 60, "the job's first retry")
    healed.touch()
    result = _wait(client, job)
    assert (result["status"], result["client"]) == ("SUCCESS", "epsilon")
