"""A batch whose manifest names an origin that sends its headers a line at a time.

The fixtures of test_hostile_tenant.py (real workers with the fake engine, the
control worker that drives batches, a real Redis, moto's S3 server, the HTTP API), and
the loopback origin of tests/clients/test_slow_origins.py. The workers' and the API's
OCR_URL_DEADLINE is a few seconds: the HEAD that pins the slow line's version is cut
then, and the line says `url_timeout`; the batch goes on with its other line.
"""

# ruff: noqa: F811  (the fixtures of test_hostile_tenant.py are imported by name)
from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
import requests

from tests.api.test_batches import ended, jobs_of
from tests.api.test_hostile_tenant import (  # noqa: F401 - the module's fixtures, reused
    STEP,
    Manifests,
    api,
    batch,
    manifests,
    put,
    s3,
    store,
)
from tests.api.test_hostile_tenant_urls import manifest_lines
from tests.api_server import ApiServer, create_token, session
from tests.clients.test_slow_origins import DEADLINE, Origin
from tests.moto_s3 import MotoS3


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    served = Origin()
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture(scope="module")
def env(s3: MotoS3, manifests: Manifests, origin: Origin) -> dict[str, str]:
    return {"OCR_ALLOWED_URLS": f"s3://tenant-b/,{origin.url}/",
            "OCR_URL_TIMEOUT": "10", "OCR_URL_DEADLINE": str(DEADLINE),
            "SSL_CERT_FILE": str(manifests.cert), **STEP, **s3.env()}


@pytest.fixture(scope="module")
def tenant(api: ApiServer, redis_url: str, origin: Origin) -> requests.Session:
    return session(create_token(redis_url, "slow", "--allowed-url", "s3://tenant-b/",
                                "--allowed-url", f"{origin.url}/"))


def test_a_manifest_line_whose_origin_sends_its_headers_slowly_is_url_timeout(
        tenant: requests.Session, api: ApiServer, s3: MotoS3, origin: Origin,
        store: redis.Redis) -> None:
    lines = [json.dumps({"url": f"{origin.url}/m/slow-head.png"}),
             json.dumps({"url": f"{origin.url}/m/doc.png"})]
    source = put(s3, "tenant-b", "lists/slow.jsonl", "\n".join(lines).encode())
    done = ended(tenant, api, batch(tenant, api, source, "s3://tenant-b/slow-out/")["id"],
                 timeout=90)
    assert done["documents"]["failed"] == 1 and done["documents"]["done"] == 1, done
    by_url = {line["source"]: line for line in manifest_lines(s3, "tenant-b", "slow-out/")}
    assert by_url[f"{origin.url}/m/slow-head.png"]["error"] == "url_timeout", by_url
    assert by_url[f"{origin.url}/m/doc.png"]["status"] == "SUCCESS", by_url
    assert origin.methods("/m/slow-head.png") == ["HEAD"]  # cut, never read
    assert jobs_of(store, done["id"]) == 1
