"""A cache shared by every client: another client's re-send keeps no one's previews longer.

A real worker (the fake engine, the result cache on across clients,
OCR_CACHE_ACROSS_CLIENTS=1), a real Redis and the HTTP API. Alice reads a page; her
previews are made to look near their end; Bob re-sends the same bytes, answered from
the cache by reference to Alice's job. Alice's previews keep their own TTL, and Bob's
reference lives no longer than they do. Alice's own re-send still keeps hers as long
as her new job (tests/api/test_hostile_tenant_previews.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
import requests

from tasks.state.keys import PREVIEW_PREFIX, preview_source_key
from tests.api_server import ApiServer, create_token, session, wait_end
from tests.harness import FAST_PAGES, Worker, fake_env
from tests.image_fixtures import png

AGED = 60  # seconds: Alice's previews made to look that near their end


@pytest.fixture(scope="module")
def api(start_worker: Callable[..., Worker], start_api: Callable[..., ApiServer]
        ) -> ApiServer:
    start_worker(**fake_env(cache=True, **FAST_PAGES, OCR_CACHE_ACROSS_CLIENTS="1"))
    return start_api()


def send(http: requests.Session, api: ApiServer, data: bytes) -> str:
    answer = http.post(f"{api.url}/v1/jobs", files={"file": ("page.png", data)}, timeout=60)
    assert answer.status_code == 202, answer.text
    job_id = str(answer.json()["id"])
    assert wait_end(http, api, job_id, 120)["status"] == "SUCCESS"
    return job_id


def test_another_clients_resend_never_extends_the_previews_it_shows(
        api: ApiServer, redis_url: str) -> None:
    store = redis.Redis.from_url(redis_url)
    alice = session(create_token(redis_url, "alice"))
    bob = session(create_token(redis_url, "bob"))
    data = png(120, (300, 200))
    first = send(alice, api, data)
    own = list(store.scan_iter(match=f"{PREVIEW_PREFIX}{first}:*"))
    assert own
    for key in own:
        store.expire(key, AGED)
    resent = send(bob, api, data)
    cached = bob.get(f"{api.url}/v1/jobs/{resent}/result", params={"format": "json"},
                     timeout=30).json()
    assert cached["cached"], cached  # answered from Alice's read
    for key in own:  # not reset to a full day by Bob
        assert 0 < store.ttl(key) <= AGED, (key, store.ttl(key))
    assert 0 < store.ttl(preview_source_key(resent)) <= AGED
    shown = bob.get(f"{api.url}/v1/jobs/{resent}/pages/1/image", timeout=10)
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/webp"
