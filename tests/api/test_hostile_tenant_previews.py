"""A hostile tenant re-sending a cached noise PDF: its previews are shared, not copied.

A real worker (the fake engine, the result cache on), a real Redis and the HTTP API.
The document: 3 pages of noise, which no image codec makes small. Probes: each page's
preview within its 150 KB budget; 20 re-sends answered from the cache that store no
preview bytes of their own (the Redis memory of the preview keys measured); a re-sent
job's page image served, to its own client only; after the first job's API record
is gone, the re-sent job's images still served, and the result and previews it shows
(the first job's, by reference) kept as long as its own result.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import redis
import requests
from PIL import Image

from tasks.pipeline.previews import PREVIEW_BUDGET
from tasks.state.keys import PREVIEW_PREFIX, api_job_key
from tests.api_server import ApiServer, create_token, session, wait_end
from tests.harness import FAST_PAGES, Worker, fake_env
from tests.pdf_fixtures import image_pdf

PAGES = 3
RESENDS = 20
AGED = 60  # seconds: the first job's records made to look that near their end


@pytest.fixture(scope="module")
def api(start_worker: Callable[..., Worker], start_api: Callable[..., ApiServer]
        ) -> ApiServer:
    start_worker(**fake_env(cache=True, **FAST_PAGES, OCR_CONCURRENCY="2"))
    return start_api()


@pytest.fixture(scope="module")
def store(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(scope="module")
def alice(redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "alice"))


@pytest.fixture(scope="module")
def bob(redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "bob"))


@pytest.fixture(scope="module")
def noise_pdf() -> bytes:
    """PAGES pages of grey noise, 1000 x 1300 pixels each at OCR_PDF_DPI (72)."""
    seeded = random.Random(90)
    width, height = 1000, 1300
    return image_pdf([Image.frombytes("L", (width, height), seeded.randbytes(width * height))
                      for _ in range(PAGES)], dpi=72)


def send(http: requests.Session, api: ApiServer, data: bytes) -> str:
    """A job of `data`, waited for to its SUCCESS; its id."""
    answer = http.post(f"{api.url}/v1/jobs", files={"file": ("noise.pdf", data)}, timeout=60)
    assert answer.status_code == 202, answer.text
    job_id = str(answer.json()["id"])
    status = wait_end(http, api, job_id, 120)
    assert status["status"] == "SUCCESS", status
    return job_id


def cached(http: requests.Session, api: ApiServer, job_id: str) -> bool:
    answer = http.get(f"{api.url}/v1/jobs/{job_id}/result", params={"format": "json"},
                      timeout=30)
    assert answer.status_code == 200, answer.text
    return bool(answer.json()["cached"])


def image(http: requests.Session, api: ApiServer, job_id: str, page: int
          ) -> requests.Response:
    return http.get(f"{api.url}/v1/jobs/{job_id}/pages/{page}/image", timeout=10)


def preview_keys(store: redis.Redis) -> list[bytes]:
    return sorted(store.scan_iter(match=f"{PREVIEW_PREFIX}*", count=1000))


def preview_memory(store: redis.Redis) -> int:
    """Bytes Redis holds for every preview key (MEMORY USAGE: value and overhead)."""
    return sum(int(store.memory_usage(key, samples=0) or 0) for key in preview_keys(store))


def test_cached_resends_share_the_first_job_s_bounded_previews(
        api: ApiServer, alice: requests.Session, bob: requests.Session,
        store: redis.Redis, noise_pdf: bytes) -> None:
    first = send(alice, api, noise_pdf)
    assert not cached(alice, api, first)
    images = []
    for page in range(1, PAGES + 1):
        shown = image(alice, api, first, page)
        assert shown.status_code == 200, shown.text
        assert len(shown.content) <= PREVIEW_BUDGET, (page, len(shown.content))
        images.append(shown.content)
    stored = {key: store.strlen(key) for key in preview_keys(store)}
    assert len(stored) == PAGES and max(stored.values()) <= PREVIEW_BUDGET, stored
    before = preview_memory(store)

    resends = [send(alice, api, noise_pdf) for _ in range(RESENDS)]
    assert all(cached(alice, api, job_id) for job_id in resends)
    # No preview bytes of their own: the first job's pages, and a small reference each.
    grown = preview_memory(store) - before
    assert grown <= before // 20, (grown, before)
    assert sum(store.strlen(key) for key in preview_keys(store)) <= \
        sum(stored.values()) + RESENDS * 200
    last = resends[-1]
    for page in range(1, PAGES + 1):
        shown = image(alice, api, last, page)
        assert shown.status_code == 200 and shown.content == images[page - 1]
        other = image(bob, api, last, page)  # another client reaches none of it
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"


def test_a_resent_job_s_previews_outlive_the_first_job(
        api: ApiServer, alice: requests.Session, store: redis.Redis) -> None:
    """The first job near its end, a re-send, then the first job's API record gone.

    The re-sent job shows the first job's pages and previews by reference: both are
    kept as long as its own result.
    """
    data = image_pdf([Image.frombytes("L", (600, 800), random.Random(7).randbytes(480_000))],
                     dpi=72)
    first = send(alice, api, data)
    own = [key for key in preview_keys(store) if key.decode().startswith(
        f"{PREVIEW_PREFIX}{first}:")]
    assert own
    for key in [*own, f"celery-task-meta-{first}".encode()]:  # the first job near its end
        store.expire(key, AGED)
    resent = send(alice, api, data)
    assert cached(alice, api, resent)
    result_ttl = store.ttl(f"celery-task-meta-{resent}")
    assert result_ttl > AGED
    # the first job's result, which the re-sent one refers to, kept as long as it
    assert store.ttl(f"celery-task-meta-{first}") >= result_ttl - 30
    store.delete(api_job_key(first))  # the first job's own record gone
    shown = image(alice, api, resent, 1)
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/webp"
    # The document's previews, wherever they are kept, live as long as the re-sent
    # job's result does (within the test's own seconds), not to the first job's end.
    for key in preview_keys(store):
        if key.decode().startswith((f"{PREVIEW_PREFIX}{first}:", f"{PREVIEW_PREFIX}{resent}:")):
            assert store.ttl(key) >= result_ttl - 30, (key, store.ttl(key), result_ttl)
