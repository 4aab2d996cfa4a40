"""A hostile tenant's slow compares against another client's heavy work.

One Redis, one worker and the Procfile's `api` process with two heavy turns
(OCR_API_HEAVY_CONCURRENCY), a turn awaited 5 s (OCR_API_HEAVY_WAIT) and compares
bounded by time alone (OCR_COMPARE_TIMEOUT, half a second: a compare of these pages
takes longer on any machine, loaded or not). Alice's two readings of a page of 6,000
lines make a compare that runs to its bound and ends 422 `compare_too_large`. She
sends 8 of them at once; while they are in flight, Bob's corrected hOCR (heavy work
too) is answered, again and again, with his correction, never 503 `busy`: Alice holds
no more than her share of the turns, her refused compares included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import requests

from tests.api_server import ApiServer, create_token, session, wait_end
from tests.console.test_console_bounds import compare_url, read, signed_in, text_layer_pdf
from tests.harness import Worker

LINES = 6000
COMPARES = 8
FIXED = "Zebras quietly juggle seventeen kumquats"


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_CONCURRENCY="1")


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer], worker: Worker) -> ApiServer:
    return start_api(OCR_COMPARE_MAX_LINES="100000", OCR_COMPARE_MAX_CHARS="100000000",
                     OCR_COMPARE_TIMEOUT="0.5", OCR_API_HEAVY_CONCURRENCY="2",
                     OCR_API_HEAVY_WAIT="5")


@pytest.fixture(scope="module")
def tokens(redis_url: str) -> dict[str, str]:
    return {name: create_token(redis_url, name) for name in ("alice", "bob")}


@pytest.fixture(scope="module")
def readings(api: ApiServer, tokens: dict[str, str]) -> tuple[str, str]:
    """Alice's two readings of a page: every other line differs (a slow compare)."""
    first = [f"line {i} of the page, as the first engine read it" for i in range(LINES)]
    second = [line if i % 2 else line.replace("first", "second")
              for i, line in enumerate(first)]
    return (read(api, tokens["alice"], text_layer_pdf(first), "first.pdf"),
            read(api, tokens["alice"], text_layer_pdf(second), "second.pdf"))


@pytest.fixture(scope="module")
def corrected(api: ApiServer, tokens: dict[str, str]) -> str:
    """Bob's hOCR job of a short page, its first line corrected; the job's id."""
    bob = session(tokens["bob"])
    answer = bob.post(f"{api.url}/v1/jobs", data={"output": "hocr"}, files={
        "file": ("short.pdf", text_layer_pdf([f"bob's line {i}" for i in range(20)]))},
        timeout=60)
    assert answer.status_code == 202, answer.text
    job_id = str(answer.json()["id"])
    assert wait_end(bob, api, job_id, 180)["status"] == "SUCCESS"
    line = bob.get(f"{api.url}/v1/jobs/{job_id}/pages/1", timeout=30).json()["lines"][0]
    fixed = bob.put(f"{api.url}/v1/jobs/{job_id}/pages/1/lines/{line['id']}",
                    json={"text": FIXED}, timeout=30)
    assert fixed.status_code == 200, fixed.text
    return job_id


def test_8_slow_compares_of_one_client_leave_another_clients_export_a_turn(
        api: ApiServer, tokens: dict[str, str], readings: tuple[str, str],
        corrected: str) -> None:
    browser = signed_in(api, tokens["alice"])
    bob = session(tokens["bob"])
    export = f"{api.url}/v1/jobs/{corrected}/result?format=hocr"
    pool = ThreadPoolExecutor(COMPARES)
    try:
        compares: list[Future[requests.Response]] = [
            pool.submit(browser.get, compare_url(api, readings), timeout=300)
            for _ in range(COMPARES)]
        time.sleep(3)  # the compares' reads done: they hold or await heavy turns
        exports = []
        while not all(c.done() for c in compares):
            answer = bob.get(export, timeout=60)
            exports.append((answer, sum(not c.done() for c in compares)))
        answers = [c.result() for c in compares]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    # Bob's exports while Alice's compares were in flight: each made, with his line.
    during = [answer for answer, in_flight in exports if in_flight]
    assert during, "no export was answered while the compares were in flight"
    for answer in during:
        assert answer.status_code == 200, answer.text[:300]
        assert all(f">{word}<" in answer.text for word in FIXED.split())  # hOCR words
    # Alice's own compares: run to their time bound in her turn, or refused busy.
    ran = [a for a in answers if "OCR_COMPARE_TIMEOUT" in a.text]
    assert ran and all(a.status_code == 422 for a in ran), [a.status_code for a in answers]
    busy = [a for a in answers if a not in ran]
    assert all(a.status_code == 503 and '<span class="code">busy</span>' in a.text
               for a in busy), [a.text[:200] for a in busy]
