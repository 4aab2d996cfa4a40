"""A client's own URL prefixes travel with its job: the worker holds every hop to them.

A client held to prefixes of its own (`tokens create --allowed-url`) has them written
into its job's control hash (`ocr:job:<id>` field `prefixes`, by the sender); the
worker checks the first URL and each redirect hop against them as well as
OCR_ALLOWED_URLS. Two real loopback HTTP servers, both under OCR_ALLOWED_URLS: "B"'s
answers a redirect into "A"'s prefix on the other, which counts what it is asked.

Runs in the test process; a real redis-server and a real worker (tests/harness.py,
the fake engine: what is tested is which URLs are read, not how).
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from PIL import Image

from tasks.client import OcrClient
from tasks.lifecycle.url_policy import narrow
from tasks.state.keys import job_key
from tests.harness import FAKE_PLUGINS, Worker, make_client, sent_past_the_gate


def png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (320, 200), 255).save(out, "PNG")
    return out.getvalue()


DOC = png()


class Server:
    """A loopback HTTP server that counts every request it gets.

    `/a/private.png` is a document; `/b/away` redirects to `target` (set once the
    other server is up).
    """

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.target = ""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(body=False)

            def do_GET(self) -> None:
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                server.requests.append(f"{self.command} {self.path}")
                if self.path.endswith(".png"):
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(DOC)))
                    self.end_headers()
                    if body:
                        self.wfile.write(DOC)
                elif self.path == "/b/away":
                    self.send_response(302)
                    self.send_header("Location", server.target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    b_server, a_server = Server(), Server()
    b_server.target = a_server.url("/a/private.png")
    yield b_server, a_server
    b_server.stop()
    a_server.stop()


@pytest.fixture(scope="module")
def allowed(servers: tuple[Server, Server]) -> str:
    return ",".join(server.url("/") for server in servers)


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], allowed: str) -> Worker:
    return start_worker(OCR_ENGINE="fake", OCR_ENGINE_PLUGINS=FAKE_PLUGINS,
                        OCR_CACHE_RESULTS="0", OCR_ALLOWED_URLS=allowed,
                        OCR_URL_TIMEOUT="10")


@pytest.fixture(scope="module")
def client(redis_url: str, allowed: str) -> Iterator[OcrClient]:
    ocr = make_client(redis_url, OCR_ALLOWED_URLS=allowed)
    yield ocr
    ocr.close()


def send_as(client: OcrClient, redis_url: str, url: str,
            prefixes: list[str] | None) -> dict[str, Any]:
    """Send a job by URL whose control hash names `prefixes`, as the sender writes them."""
    job_id = str(uuid.uuid4())
    if prefixes is not None:
        redis.Redis.from_url(redis_url).hset(job_key(job_id), "prefixes",
                                             json.dumps(prefixes))
    sent_past_the_gate(client, {"url": url, "filename": "doc.png"}, job_id=job_id, client="b")
    result = client.wait([job_id], timeout=120)[job_id]
    assert result["status"] != "TIMEOUT", result
    return dict(result)


def test_a_redirect_out_of_the_clients_prefix_is_not_followed(
        worker: Worker, client: OcrClient, redis_url: str,
        servers: tuple[Server, Server]) -> None:
    b_server, a_server = servers
    result = send_as(client, redis_url, b_server.url("/b/away"), [b_server.url("/b/")])
    assert result["status"] == "FAILURE", result
    assert result["error"]["code"] == "url_not_allowed"
    assert "GET /b/away" in b_server.requests or "HEAD /b/away" in b_server.requests
    assert a_server.requests == []  # A's document was never asked for


def test_a_first_url_outside_the_clients_prefix_is_never_asked(
        worker: Worker, client: OcrClient, redis_url: str,
        servers: tuple[Server, Server]) -> None:
    b_server, a_server = servers
    result = send_as(client, redis_url, a_server.url("/a/private.png"),
                     [b_server.url("/b/")])
    assert result["error"]["code"] == "url_not_allowed", result
    assert a_server.requests == []


def test_without_client_prefixes_the_global_list_alone_holds(
        worker: Worker, client: OcrClient, redis_url: str,
        servers: tuple[Server, Server]) -> None:
    # The same redirect from a job whose client has no prefixes of its own: followed,
    # both servers being under OCR_ALLOWED_URLS (what the tests above refuse is the
    # client's rule, not the global one).
    b_server, a_server = servers
    result = send_as(client, redis_url, b_server.url("/b/away"), None)
    assert result["status"] == "SUCCESS", result
    assert "GET /a/private.png" in a_server.requests
    a_server.requests.clear()


def test_narrow_keeps_the_urls_under_both_lists() -> None:
    wide = ["s3://docs/", "https://files.example.com/"]
    assert narrow(wide, None) == tuple(wide)
    assert narrow(wide, ["s3://docs/b/", "s3://other/"]) == ("s3://docs/b/",)
    assert narrow(["s3://docs/b/x/"], ["s3://docs/b/"]) == ("s3://docs/b/x/",)
    assert narrow(wide, ["https://files.example.com.evil/"]) == ()
    assert narrow(wide, []) == ()
