"""The console's compare is bounded, and compares in flight starve no other client.

One Redis, one worker and the Procfile's `api` process. Alice's two text-layer PDF
pages of 6,000 lines each (made here with PyMuPDF) are past the compare's default line
bound: their compare page is refused 422 `compare_too_large`, shown as the console's
refusal. A second `api` process, whose operator raised the line and character bounds,
takes 45 such compares at once; while they are in flight, Bob's `GET /v1/jobs` answers,
and each compare ends with its rows or a coded refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pymupdf
import pytest
import requests

from tests.api_server import ApiServer, create_token, session, wait_end
from tests.harness import Worker

LINES = 6000
COMPARES = 45  # more than the API's thread pool holds (anyio's 40)


def text_layer_pdf(lines: list[str]) -> bytes:
    """One tall PDF page whose text layer holds `lines`, one text line each."""
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=14400)
    page.insert_text((10, 10), "\n".join(lines), fontsize=2, lineheight=1.1)
    return bytes(doc.tobytes(deflate=True))


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_CONCURRENCY="1")


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer], worker: Worker) -> ApiServer:
    return start_api()


@pytest.fixture(scope="module")
def lenient(start_api: Callable[..., ApiServer], worker: Worker) -> ApiServer:
    """An API whose compares take pages of any size, within their time bound."""
    return start_api(OCR_COMPARE_MAX_LINES="100000", OCR_COMPARE_MAX_CHARS="100000000",
                     OCR_COMPARE_TIMEOUT="20", OCR_API_HEAVY_WAIT="15")


@pytest.fixture(scope="module")
def tokens(redis_url: str) -> dict[str, str]:
    return {name: create_token(redis_url, name) for name in ("alice", "bob")}


def read(api: ApiServer, token: str, data: bytes, name: str) -> str:
    """A job sent and read to its end (SUCCESS); its id."""
    http = session(token)
    answer = http.post(f"{api.url}/v1/jobs", files={"file": (name, data)}, timeout=60)
    assert answer.status_code == 202, answer.text
    job_id = str(answer.json()["id"])
    status = wait_end(http, api, job_id, 180, request_timeout=60)
    assert status["status"] == "SUCCESS", status
    return job_id


@pytest.fixture(scope="module")
def readings(api: ApiServer, tokens: dict[str, str]) -> tuple[str, str]:
    """Alice's two readings of a page of LINES lines: every other line differs.

    Lines alike at every other place make difflib's matcher search the whole rest of
    the page once for each match it finds.
    """
    first = [f"line {i} of the page, as the first engine read it" for i in range(LINES)]
    second = [line if i % 2 else line.replace("first", "second")
              for i, line in enumerate(first)]
    return (read(api, tokens["alice"], text_layer_pdf(first), "first.pdf"),
            read(api, tokens["alice"], text_layer_pdf(second), "second.pdf"))


def signed_in(api: ApiServer, token: str) -> requests.Session:
    """A browser's session, signed in through the console's form (COMPARES connections)."""
    browser = requests.Session()
    browser.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=COMPARES))
    answer = browser.post(f"{api.url}/console/signin", data={"token": token},
                          headers={"Origin": api.url}, allow_redirects=False, timeout=60)
    assert answer.status_code == 303, answer.text
    return browser


def compare_url(api: ApiServer, readings: tuple[str, str]) -> str:
    first, second = readings
    return f"{api.url}/console/jobs/{first}/pages/1/compare/{second}"


def test_a_compare_past_the_line_bound_is_refused_with_its_code(
        api: ApiServer, tokens: dict[str, str], readings: tuple[str, str]) -> None:
    lines = session(tokens["alice"]).get(f"{api.url}/v1/jobs/{readings[0]}/pages/1",
                                         timeout=60).json()["lines"]
    assert len(lines) == LINES  # the text layer's lines, as the compare takes them
    answer = signed_in(api, tokens["alice"]).get(compare_url(api, readings), timeout=120)
    assert answer.status_code == 422, answer.text[:300]
    assert '<span class="code">compare_too_large</span>' in answer.text
    assert "OCR_COMPARE_MAX_LINES" in answer.text


def test_other_clients_are_answered_while_compares_are_in_flight(
        lenient: ApiServer, tokens: dict[str, str], readings: tuple[str, str]) -> None:
    """45 compares at once: Bob's jobs list answers, again and again, until they end.

    Each of Bob's lists is given a bounded wait; a compare holding the API's threads
    would hold Bob's list past it.
    """
    browser = signed_in(lenient, tokens["alice"])
    bob = session(tokens["bob"])
    url = compare_url(lenient, readings)
    pool = ThreadPoolExecutor(COMPARES)
    try:
        compares: list[Future[requests.Response]] = [
            pool.submit(browser.get, url, timeout=300) for _ in range(COMPARES)]
        answered_meanwhile = 0
        while not all(c.done() for c in compares):
            listed = bob.get(f"{lenient.url}/v1/jobs", timeout=30)
            assert listed.status_code == 200, listed.text
            answered_meanwhile += not all(c.done() for c in compares)
        answers = [c.result() for c in compares]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert answered_meanwhile
    # Each compare ends with its rows or a coded refusal: run past its time, or no turn.
    assert {a.status_code for a in answers} <= {200, 422, 503}
    refusals = [a for a in answers if a.status_code != 200]
    assert all('<span class="code">compare_too_large</span>' in a.text
               or '<span class="code">busy</span>' in a.text for a in refusals)
    ran = [a for a in answers if a.status_code == 200 or "OCR_COMPARE_TIMEOUT" in a.text]
    assert ran  # compares were run (a few at once): not all refused before a turn
