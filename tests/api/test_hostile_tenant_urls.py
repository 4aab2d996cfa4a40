"""A hostile tenant against the gate's URLs: every hop of every read under its prefixes.

The fixtures of test_hostile_tenant.py (real workers with the fake engines, a real
Redis, moto's S3 server, the HTTP API), and a loopback http origin that decodes `%2F`
before it resolves `..` (Python's http.server: `/b/..%2fa/x` serves `/a/x`), logging
every request it is asked. Its `/a/` is tenant a's, its `/b/` tenant b's:

- `a`: `s3://tenant-a/` and `<origin>/a/`;
- `b`: `s3://tenant-b/` and `<origin>/b/`.

Probes: a batch's source that redirects into a's prefix (refused, nothing of a's
copied); a manifest line that redirects there (`url_not_allowed`, the target never
asked, not even a HEAD); `..%2f` through an API job, a manifest line and a redirect
hop (refused, a's text never returned); and the manifest's own lines: a refusal kept
beside a later line of the same URL, a duplicate read once, `{}` coded, a target that
holds its source refused at the door; and a multipart body cut before its closing
boundary (refused, nothing stored).
"""

# ruff: noqa: F811  (the fixtures of test_hostile_tenant.py are imported by name)
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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
    objects,
    put,
    s3,
    store,
)
from tests.api_server import ApiServer, create_token, session
from tests.harness import eventually
from tests.image_fixtures import png
from tests.moto_s3 import MotoS3

SECRET_SIZE = (81, 57)  # a's private page on the origin: its fake text names this size
SECRET_TEXT = f"fake {SECRET_SIZE[0]}x{SECRET_SIZE[1]}"


class Origin:
    """A loopback http origin over a folder: redirects, and a log of what it was asked."""

    def __init__(self, root: Path) -> None:
        self.asked: list[tuple[str, str]] = []  # (method, path as requested)
        self.redirects: dict[str, str] = {}
        asked, redirects = self.asked, self.redirects

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args: object) -> None:
                return

            def send_head(self) -> Any:
                asked.append((self.command, self.path))
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return super().send_head()

        self.root = root
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, path: str, body: bytes) -> str:
        file = self.root / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(body)
        return f"{self.url}{path}"

    def asked_for(self, path: str) -> list[str]:
        """The methods the origin was asked `path` with (a decoded `..` included)."""
        return [method for method, asked in self.asked
                if asked == path or Path(requests.utils.unquote(asked)).resolve()
                == Path(path).resolve()]


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    served = Origin(tmp_path_factory.mktemp("origin"))
    served.serve("/a/secret.png", png(150, SECRET_SIZE))
    yield served
    served.server.shutdown()


@pytest.fixture(scope="module")
def env(s3: MotoS3, manifests: Manifests, origin: Origin) -> dict[str, str]:
    return {"OCR_ALLOWED_URLS": f"s3://tenant-a/,s3://tenant-b/,{origin.url}/,"
                                f"{manifests.prefix}",
            "SSL_CERT_FILE": str(manifests.cert), **STEP, **s3.env()}


@pytest.fixture(scope="module")
def tenants(api: ApiServer, redis_url: str, origin: Origin
            ) -> dict[str, requests.Session]:
    return {"a": session(create_token(redis_url, "a", "--allowed-url", "s3://tenant-a/",
                                      "--allowed-url", f"{origin.url}/a/")),
            "b": session(create_token(redis_url, "b", "--allowed-url", "s3://tenant-b/",
                                      "--allowed-url", f"{origin.url}/b/"))}


def manifest_lines(s3: MotoS3, bucket: str, prefix: str) -> list[dict[str, Any]]:
    body = s3.client().get_object(Bucket=bucket, Key=f"{prefix}manifest.jsonl")["Body"]
    return [json.loads(line) for line in body.read().decode().splitlines()]


def no_secret(written: dict[str, bytes]) -> bool:
    return not any(SECRET_TEXT.encode() in body for body in written.values())


def test_a_batch_source_that_redirects_into_another_clients_prefix_is_refused(
        tenants: dict[str, requests.Session], api: ApiServer, s3: MotoS3,
        origin: Origin) -> None:
    a_doc = put(s3, "tenant-a", "listed/private.png", png(140, (70, 52)))
    origin.serve("/a/list.jsonl", json.dumps({"url": a_doc}).encode())
    source = f"{origin.url}/b/list.jsonl"
    origin.redirects["/b/list.jsonl"] = f"{origin.url}/a/list.jsonl"
    done = ended(tenants["b"], api, batch(tenants["b"], api, source,
                                          "s3://tenant-b/from-redirect/")["id"])
    assert done["state"] == "FAILURE", done
    assert done["error"]["code"] == "url_not_allowed", done
    assert done["documents"]["listed"] == 0, done
    written = objects(s3, "tenant-b", "from-redirect/")
    assert not any(".batch-source/" in key for key in written), sorted(written)
    assert not any(a_doc.encode() in body for body in written.values())
    assert origin.asked_for("/a/list.jsonl") == []  # the hop out was never asked


def test_a_manifest_line_that_redirects_out_is_refused_before_any_head(
        tenants: dict[str, requests.Session], api: ApiServer, s3: MotoS3,
        origin: Origin, store: redis.Redis) -> None:
    origin.redirects["/b/moved.png"] = f"{origin.url}/a/secret.png"
    line = f"{origin.url}/b/moved.png"
    source = put(s3, "tenant-b", "lists/moved.jsonl", json.dumps({"url": line}).encode())
    done = ended(tenants["b"], api, batch(tenants["b"], api, source,
                                          "s3://tenant-b/moved-out/")["id"])
    assert done["state"] == "FAILURE" and done["documents"]["failed"] == 1, done
    (refused,) = manifest_lines(s3, "tenant-b", "moved-out/")
    assert refused["error"] == "url_not_allowed", refused
    assert refused["source_version"] == {}, refused  # nothing of a's object recorded
    assert jobs_of(store, done["id"]) == 0
    assert origin.asked_for("/b/moved.png") == ["HEAD"]
    assert origin.asked_for("/a/secret.png") == []  # no HEAD, no GET of the target


@pytest.mark.parametrize("walk", ["..%2fa", "..%2Fa", "%2e%2e/a", ".%2e/a", "..%5ca"])
def test_an_encoded_slash_through_an_api_job_is_refused(
        tenants: dict[str, requests.Session], api: ApiServer, origin: Origin,
        walk: str) -> None:
    url = f"{origin.url}/b/{walk}/secret.png"
    answer = tenants["b"].post(f"{api.url}/v1/jobs", json={"url": url}, timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "url_not_allowed"
    assert origin.asked_for("/a/secret.png") == []


def test_an_encoded_slash_through_a_manifest_line_and_a_redirect_hop_is_refused(
        tenants: dict[str, requests.Session], api: ApiServer, s3: MotoS3,
        origin: Origin, store: redis.Redis) -> None:
    b = tenants["b"]
    # a redirect hop: b's own URL answers 302 to b/..%2fa/secret.png
    origin.serve("/b/hop.png", png(130, (40, 30)))
    origin.redirects["/b/hop.png"] = "/b/..%2fa/secret.png"
    job = b.post(f"{api.url}/v1/jobs", json={"url": f"{origin.url}/b/hop.png"}, timeout=30)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    shown = eventually(lambda: (lambda s: s if s["status"] in ("SUCCESS", "FAILURE")
                                else None)(b.get(f"{api.url}/v1/jobs/{job_id}",
                                                 timeout=30).json()), 60, "the hop's job")
    assert shown["status"] == "FAILURE", shown
    assert shown["error"]["code"] == "url_not_allowed", shown
    text = b.get(f"{api.url}/v1/jobs/{job_id}/result", timeout=30)
    assert SECRET_TEXT not in text.text
    # a manifest line
    line = f"{origin.url}/b/..%2fa/secret.png"
    source = put(s3, "tenant-b", "lists/walk.jsonl", json.dumps({"url": line}).encode())
    done = ended(b, api, batch(b, api, source, "s3://tenant-b/walk-out/")["id"])
    assert done["state"] == "FAILURE", done
    (refused,) = manifest_lines(s3, "tenant-b", "walk-out/")
    assert refused["error"] == "url_not_allowed", refused
    assert jobs_of(store, done["id"]) == 0
    assert no_secret(objects(s3, "tenant-b", "walk-out/"))
    assert origin.asked_for("/a/secret.png") == []


def test_every_manifest_line_has_its_own_line(
        tenants: dict[str, requests.Session], api: ApiServer, s3: MotoS3,
        store: redis.Redis) -> None:
    own = put(s3, "tenant-b", "lines/own.png", png(200, (62, 41)))
    lines = [json.dumps({"url": own, "options": {"output": "exe"}}),  # refused first
             json.dumps({"url": own}),                                # then read
             "{}",
             json.dumps({"url": own}),                                # a duplicate
             own,                                                     # the same, plain
             own.replace("s3://", "S3://").replace("/own", "/./own")]  # another spelling
    source = put(s3, "tenant-b", "lists/lines.jsonl", "\n".join(lines).encode())
    done = ended(tenants["b"], api, batch(tenants["b"], api, source,
                                          "s3://tenant-b/lines-out/")["id"])
    assert jobs_of(store, done["id"]) == 1, done  # the document read once
    written = manifest_lines(s3, "tenant-b", "lines-out/")
    assert len(written) == len(lines), written
    by_at = {line.get("line_at"): line for line in written}
    offsets = [sum(len(x) + 1 for x in lines[:i]) for i in range(len(lines))]
    assert sorted(by_at) == offsets, by_at
    assert [by_at[at]["error"] for at in offsets] == [
        "bad_request", None, "no_url", "duplicate", "duplicate", "duplicate"]
    assert by_at[offsets[1]]["status"] == "SUCCESS"
    assert by_at[offsets[3]]["duplicate_of"] == offsets[1]
    assert by_at[offsets[4]]["duplicate_of"] == offsets[1]
    assert by_at[offsets[5]]["duplicate_of"] == offsets[1]
    assert done["documents"]["done"] == 1 and done["documents"]["skipped"] == 3, done
    assert done["documents"]["failed"] == 2, done


@pytest.mark.parametrize("source,target", [
    ("s3://tenant-b/nest/in/", "s3://tenant-b/nest/"),       # the target holds the source
    ("s3://tenant-b/nest/", "s3://tenant-b/nest/out/"),      # the target inside it
    ("s3://tenant-b/nest/list.jsonl", "s3://tenant-b/nest/"),  # a manifest inside it
])
def test_a_target_that_overlaps_its_source_is_refused_at_the_door(
        tenants: dict[str, requests.Session], api: ApiServer, s3: MotoS3,
        source: str, target: str) -> None:
    put(s3, "tenant-b", "nest/in/doc.png", png(200, (30, 30)))
    answer = batch(tenants["b"], api, source, target, status=400)
    assert answer["error"]["code"] == "target_in_source", answer


def test_an_unterminated_multipart_body_is_refused(
        tenants: dict[str, requests.Session], api: ApiServer, store: redis.Redis) -> None:
    uploads = set(store.scan_iter("ocr:api:upload:*"))
    # A PNG's first bytes pass the door's sniff of the format; the multipart is the test.
    head = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="x.png"'
            b"\r\n\r\n\x89PNG\r\n\x1a\n")
    for body in (head + b"abc", head + b"abc\r\n--xy", head + b"abc\r\n--xyz\r\n"):
        answer = tenants["b"].post(
            f"{api.url}/v1/jobs", data=body, timeout=30,
            headers={"Content-Type": "multipart/form-data; boundary=xyz"})
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["code"] == "bad_request"
    assert set(store.scan_iter("ocr:api:upload:*")) <= uploads  # nothing left stored
    whole = tenants["b"].post(f"{api.url}/v1/jobs", data=head + b"abc\r\n--xyz--\r\n",
                              headers={"Content-Type": "multipart/form-data; boundary=xyz"},
                              timeout=30)
    assert whole.status_code == 202, whole.text  # the same body, closed: taken
