"""Hardening: hostile broker messages, path races, leaking limits, callbacks.

Real redis-server and real worker processes (fake engines) throughout.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import http.server
import io
import ipaddress
import json
import os
import pickle
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from tasks.broker.layout import DEAD_LETTER_KEY
from tasks.broker.refusals import read_dead_letters
from tasks.broker.wakeups import wake
from tasks.client import OcrClient
from tasks.errors import (
    BadRequest,
    CallbackNotAllowed,
    ImageTooLarge,
    OcrError,
    PathNotAllowed,
)
from tasks.lifecycle.callback_urls import callback_target, checked_addresses, is_public
from tasks.lifecycle.callbacks import sign, verify
from tasks.lifecycle.inputs import check_callback_url, read_path
from tasks.pipeline import _png_strips as png_strips
from tasks.pipeline.images import decode_page, iter_image_pages, normalize, reduce_factor
from tasks.settings import Settings
from tasks.state.job_control import JobControl
from tests.harness import FAKE_PLUGINS, Worker, corpus, eventually, fake_env
from tests.held_records import held_items
from tests.image_fixtures import big_rgba_png, bomb_frame_tiff, filtered_png

FAKE_ENV = fake_env(OCR_CONCURRENCY="1")
QUEUE = "ocr"


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**FAKE_ENV, OCR_MAX_INPUT_MB="1")


@pytest.fixture(scope="module")
def raw_redis(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def envelope(task_id: str, body: str, content_type: str = "application/json",
             **headers: Any) -> bytes:
    """A kombu/Celery protocol-2 message as kombu's Redis transport stores it."""
    return json.dumps({
        "body": body, "content-encoding": "utf-8", "content-type": content_type,
        "headers": {"lang": "py", "task": "ocr.document", "id": task_id,
                    "root_id": task_id, "parent_id": None, "group": None, **headers},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": QUEUE},
                       "priority": 3, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())}}).encode()


def celery_body(kwargs: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(
        [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                      "chord": None}]).encode()).decode()


def ok_job(client: OcrClient) -> dict[str, Any]:
    job = client.submit(corpus("scan_tess_phototest.tif"))
    return client.wait([job], timeout=60)[job]


def push_rung(raw_redis: redis.Redis, queue: str, *messages: bytes) -> None:
    """LPUSH raw `messages` onto `queue` and ring its doorbell, as a publish does.

    Unrung, they would wait for an idle worker's doorbell wait to end (10 s: a stock
    Celery client's jobs, tests/clients/test_integration.py's send_task example).
    """
    with raw_redis.pipeline(transaction=False) as pipe:
        for message in messages:
            pipe.lpush(queue, message)
        wake(pipe, [queue])
        pipe.execute()


def wait_state(client: OcrClient, task_id: str, timeout: float = 30) -> dict[str, Any]:
    return client.wait([task_id], timeout=timeout)[task_id]


def test_malformed_messages_are_dead_lettered_and_the_worker_goes_on(
        worker: Worker, client: OcrClient, raw_redis: redis.Redis) -> None:
    raw_redis.delete(DEAD_LETTER_KEY)
    no_base64_id = str(uuid.uuid4())
    bodies = [b"not json", b"[]", b"null", b"{}",
              envelope(no_base64_id, "this is *not* base64!")]
    for body in bodies:
        raw_redis.lpush(QUEUE, body)
        assert ok_job(client)["status"] == "SUCCESS"  # the worker is alive after each
    letters = read_dead_letters(raw_redis)
    assert len(letters) == len(bodies)
    assert {d.code for d in letters} == {"malformed_message"}
    assert sorted(d.raw.encode() for d in letters) == sorted(bodies)
    assert all(d.queue == QUEUE and d.time > 0 for d in letters)
    assert 0 < raw_redis.ttl(DEAD_LETTER_KEY) <= 604800
    # the one whose id could be read has its FAILURE
    failed = wait_state(client, no_base64_id)
    assert failed["status"] == "FAILURE"
    assert failed["error"]["code"] == "malformed_message"
    assert "Unrecoverable" not in worker.log()
    assert worker.proc is not None and worker.proc.poll() is None


def test_pickled_message_fails_instead_of_pending(worker: Worker, client: OcrClient,
                                                  raw_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    body = base64.b64encode(pickle.dumps(((), {"data_b64": "AAAA"}, {}))).decode()
    push_rung(raw_redis, QUEUE, envelope(task_id, body, "application/x-python-serialize"))
    result = wait_state(client, task_id)
    assert result["status"] == "FAILURE" and result["error"]["code"] == "content_refused"
    assert read_dead_letters(raw_redis, 1)[0].task_id == task_id
    assert ok_job(client)["status"] == "SUCCESS"
    # The fetch held it (it has a delivery tag); the refusal removed the record, so it
    # is not restored after the visibility timeout.
    assert task_id.encode() not in b"".join(held_items(raw_redis).values())


def test_a_refused_message_ends_through_the_one_exit(
        worker: Worker, client: OcrClient, raw_redis: redis.Redis) -> None:
    """A refused job ends as any job does: its summary written, its place in flight freed.

    (Once, a status read freed the place; a read now changes nothing.)
    """
    task_id = str(uuid.uuid4())
    raw_redis.hset(f"ocr:job:{task_id}", mapping={"client": "refused-client"})
    raw_redis.zadd("ocr:api:inflight:refused-client", {task_id: time.time()})
    body = base64.b64encode(pickle.dumps(((), {"data_b64": "AAAA"}, {}))).decode()
    push_rung(raw_redis, QUEUE, envelope(task_id, body, "application/x-python-serialize"))
    result = wait_state(client, task_id)
    assert result["status"] == "FAILURE" and result["error"]["code"] == "content_refused"
    assert raw_redis.zscore("ocr:api:inflight:refused-client", task_id) is None
    summary = json.loads(raw_redis.get(f"ocr:job:{task_id}:summary") or "{}")
    assert summary["status"] == "FAILURE"
    assert summary["error"]["code"] == "content_refused"
    assert client.status(task_id).status == "FAILURE"


def test_oversized_inline_input_is_refused_before_decoding(
        worker: Worker, client: OcrClient, raw_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    data = base64.b64encode(b"\0" * 3 * 2**20).decode()  # 3 MB, limit 1 MB
    push_rung(raw_redis, QUEUE, envelope(task_id, celery_body({"data_b64": data})))
    result = wait_state(client, task_id)
    assert result["status"] == "FAILURE" and result["error"]["code"] == "input_too_large"
    letter = read_dead_letters(raw_redis, 1)[0]
    assert letter.code == "input_too_large" and letter.truncated
    assert letter.size > 4 * 2**20 and len(letter.raw) <= 4096 * 4
    assert "refused a message on queue ocr (input_too_large" in worker.log()
    assert ok_job(client)["status"] == "SUCCESS"


def test_dead_letter_list_is_capped(start_worker: Callable[..., Worker],
                                    raw_redis: redis.Redis, client: OcrClient) -> None:
    start_worker(**FAKE_ENV, OCR_DEAD_LETTER_MAX="3", OCR_QUEUES="ocr-capped")
    raw_redis.delete(DEAD_LETTER_KEY)
    push_rung(raw_redis, "ocr-capped", *(f"junk {n}".encode() for n in range(5)))
    # The worker pops them in order; each entry is pushed and the list trimmed in one
    # MULTI/EXEC: once the last one is in, the list is final.
    eventually(lambda: [d.raw for d in read_dead_letters(raw_redis)][:1] == ["junk 4"], 30,
               "the last junk message dead-lettered")
    assert raw_redis.llen("ocr-capped") == 0
    assert [d.raw for d in read_dead_letters(raw_redis)] == ["junk 4", "junk 3", "junk 2"]


# --- path inputs: opened once, no window between the check and the read -----------

class Swapper:
    """A thread turning `inbox/sub` from a directory into a link to `outside/sub` and back."""

    def __init__(self, inbox: Path, outside: Path, pause: float = 0) -> None:
        self.sub, self.parked, self.target = inbox / "sub", inbox / ".sub-parked", outside
        self.pause = pause
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.swaps = 0
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                os.rename(self.sub, self.parked)
                os.symlink(self.target, self.sub)
                time.sleep(self.pause)
                os.unlink(self.sub)
                os.rename(self.parked, self.sub)
                self.swaps += 1
                time.sleep(self.pause)
        except OSError as exc:  # raised in the test's thread, at the block's end
            self.error = exc

    def __enter__(self) -> Swapper:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        assert self.swaps > 0, "no swap ran: the race was not tried"


def race_dirs(tmp: Path, inside: bytes, secret: bytes) -> tuple[Path, Path]:
    inbox, outside = tmp / "inbox", tmp / "outside"
    (inbox / "sub").mkdir(parents=True)
    outside.mkdir()
    (inbox / "sub" / "page").write_bytes(inside)
    (outside / "page").write_bytes(secret)
    return inbox, outside


def test_path_swap_race_never_leaks(tmp_path: Path) -> None:
    """read_path against a thread swapping a directory for a link, 3000 reads."""
    inbox, outside = race_dirs(tmp_path, b"inside", b"SECRET")
    settings = Settings.from_env({"OCR_ALLOWED_ROOTS": str(inbox)})
    outcomes: Counter[str] = Counter()
    with Swapper(inbox, outside):
        for _ in range(3000):
            try:
                outcomes[read_path(str(inbox / "sub" / "page"), settings).decode()] += 1
            except OcrError as exc:
                outcomes[exc.code] += 1
    assert outcomes["SECRET"] == 0, outcomes
    assert outcomes["inside"] > 0 and outcomes["path_not_allowed"] > 0, outcomes
    assert set(outcomes) <= {"inside", "path_not_allowed", "input_not_found"}


def test_open_walk_follows_links_inside_the_roots(tmp_path: Path) -> None:
    inbox, _ = race_dirs(tmp_path, b"inside", b"SECRET")
    (inbox / "alias").symlink_to("sub")
    (inbox / "sub" / "page-link").symlink_to(inbox / "sub" / "page")
    settings = Settings.from_env({"OCR_ALLOWED_ROOTS": str(inbox)})
    assert read_path(str(inbox / "alias" / "page-link"), settings) == b"inside"
    assert read_path(str(inbox / "alias" / ".." / "sub" / "page"), settings) == b"inside"
    (inbox / "escape").symlink_to(tmp_path / "outside" / "page")
    with pytest.raises(PathNotAllowed):
        read_path(str(inbox / "escape"), settings)
    with pytest.raises(BadRequest):
        read_path(str(inbox / "sub"), settings)  # a directory
    (inbox / "loop").symlink_to(inbox / "loop")
    with pytest.raises(PathNotAllowed):
        read_path(str(inbox / "loop"), settings)


def test_path_race_through_a_worker_and_nul_byte(start_worker: Callable[..., Worker],
                                                 client: OcrClient, tmp_path: Path) -> None:
    """Jobs reading `inbox/sub/page` while it is swapped: none reads the outside image."""
    small = corpus("scan_tess_phototest.tif").read_bytes()  # 640x480
    secret = corpus("scan_linn.png").read_bytes()             # 2550x3300
    inbox, outside = race_dirs(tmp_path, small, secret)
    start_worker(**{**FAKE_ENV, "OCR_CONCURRENCY": "2"}, OCR_ALLOWED_ROOTS=str(inbox),
                 OCR_QUEUES="ocr-race")
    path = str(inbox / "sub" / "page")
    nul = client.app.send_task("ocr.document", kwargs={"path": path + "\0.png"},
                               queue="ocr-race").id
    assert wait_state(client, nul)["error"]["code"] == "bad_request"
    with Swapper(inbox, outside, pause=0.002):
        jobs = [client.app.send_task("ocr.document", kwargs={"path": path},
                                     queue="ocr-race").id for _ in range(150)]
        results = client.wait(jobs, timeout=300)
    texts = Counter(r.get("text", r.get("error", {}).get("code")) for r in results.values())
    assert not any("2550x3300" in str(t) for t in texts), texts
    assert any("640x480" in str(t) for t in texts), texts


# --- image limits: every frame checked, huge images reduced, memory bounded --------

def test_every_frame_is_checked_before_decoding() -> None:
    settings = Settings.from_env({})
    data = bomb_frame_tiff()
    with pytest.raises(ImageTooLarge, match="page 2 is 15000x15000"):
        next(iter_image_pages(data, "tiff", None, settings))
    assert next(iter_image_pages(data, "tiff", "1", settings))[3].size == (800, 600)


def test_decoded_size_is_estimated_before_decoding() -> None:
    data = big_rgba_png(3000)  # 36 MB decoded as RGBA
    tight = Settings.from_env({"OCR_MAX_DECODED_MB": "20"})
    with pytest.raises(ImageTooLarge, match="would take 34 MB decoded"):
        next(iter_image_pages(data, "png", None, tight))


def test_reduced_page_matches_a_whole_decode_reduced() -> None:
    """Strip-wise reduction gives the image a whole decode then reduce would give."""
    rgba = Image.new("RGBA", (2000, 1500), (0, 0, 0, 0))
    rgba.paste((200, 30, 30, 255), (100, 100, 1900, 400))
    rgba.paste((10, 10, 10, 128), (0, 700, 2000, 1500))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    settings = Settings.from_env({"OCR_MAX_RENDER_PIXELS": "400000"})
    page = next(iter_image_pages(buf.getvalue(), "png", None, settings))[3]
    expected = normalize(rgba).reduce(reduce_factor(rgba.size, 400000))
    assert page.mode == "RGB" and page.size == expected.size == (667, 500)
    diff = np.abs(np.asarray(page, dtype=int) - np.asarray(expected, dtype=int))
    assert diff.max() <= 2


@pytest.mark.parametrize("colour_type,channels,mode", [
    (0, 1, "L"), (2, 3, "RGB"), (4, 2, "LA"), (6, 4, "RGBA")])
def test_png_strips_reassemble_the_whole_image(colour_type: int, channels: int,
                                               mode: str) -> None:
    """Every PNG filter (0-4, row by row) across strip boundaries: bytes identical."""
    rng = np.random.default_rng(colour_type)
    y, x = np.mgrid[0:301, 0:257]
    pixels = ((x[..., None] * 3 + y[..., None] * 5 + rng.integers(0, 40, (301, 257, channels)))
              % 256).astype(np.uint8)
    data = filtered_png(pixels, colour_type)
    whole = Image.open(io.BytesIO(data))
    png = png_strips.layout(data)
    assert png is not None
    pieces = list(png_strips.strips(data, png, rows=64))
    assert [p.height for p in pieces] == [64, 64, 64, 64, 45]
    assert all(p.mode == mode for p in pieces)
    assert b"".join(p.tobytes() for p in pieces) == whole.tobytes()
    assert np.array_equal(np.asarray(whole).reshape(301, 257, channels), pixels)


def test_png_strips_refuse_what_they_cannot_split() -> None:
    buf = io.BytesIO()
    Image.new("P", (10, 10)).save(buf, "PNG")
    assert png_strips.layout(buf.getvalue()) is None  # palette: decoded whole instead
    data = filtered_png(np.zeros((50, 40, 3), np.uint8), 2)
    png = png_strips.layout(data)
    assert png is not None
    claims_more = dataclasses.replace(png, height=60)  # rows missing from the stream
    with pytest.raises(OSError, match="after 50 of its 60 rows"):
        list(png_strips.strips(data, claims_more, rows=16))


def test_huge_jpeg_is_decoded_reduced() -> None:
    buf = io.BytesIO()
    Image.new("L", (8000, 6000), 255).save(buf, "JPEG")
    settings = Settings.from_env({"OCR_MAX_RENDER_PIXELS": "4000000"})
    image = Image.open(io.BytesIO(buf.getvalue()))
    page = decode_page(image, 1, settings)
    assert image.size == (2000, 1500)  # libjpeg's 1/4 DCT scaling: never decoded whole
    assert page.size == (2000, 1500) and page.mode == "L"


@pytest.fixture(scope="module")
def peak_worker(start_worker: Callable[..., Worker]) -> Worker:
    plugins = FAKE_PLUGINS + ",peak-memory=tests.fake_engines:PeakMemoryEngine"
    return start_worker(**{**FAKE_ENV, "OCR_ENGINE": "peak-memory",
                           "OCR_ENGINE_PLUGINS": plugins, "OCR_MAX_TASKS_PER_CHILD": "1",
                           "OCR_QUEUES": "ocr-peak"})


@pytest.mark.slow
def test_huge_png_keeps_the_child_small(peak_worker: Worker, client: OcrClient) -> None:
    """The issue's 13,300² RGBA PNG (4.3 GB in a child before): reduced, peak bounded."""
    data = big_rgba_png()
    assert len(data) < 2**20
    job = client.app.send_task("ocr.document", queue="ocr-peak",
                               kwargs={"data_b64": base64.b64encode(data).decode()}).id
    result = wait_state(client, job, timeout=240)
    assert result["status"] == "SUCCESS", result
    size, peak = re.fullmatch(r"fake (\d+x\d+) mean=\S+ peak_mb=(\d+)",
                              result["text"]).groups()  # type: ignore[union-attr]
    width, height = map(int, size.split("x"))
    assert width * height <= 40_000_000 and width == height == 4434
    print(f"child peak RSS {peak} MB")
    assert int(peak) < 700  # 4.3 GB decoded whole; 300-345 MB measured in strips


def test_bomb_frame_tiff_through_a_worker(worker: Worker, client: OcrClient) -> None:
    job = client.app.send_task("ocr.document", kwargs={
        "data_b64": base64.b64encode(bomb_frame_tiff()).decode()}).id
    result = wait_state(client, job)
    assert result["error"]["code"] == "image_too_large", result


# --- callbacks: allow-list, normalisation, no redirects, signatures -----------------

def policy(**env: str) -> Settings:
    return Settings.from_env(env)


@pytest.mark.parametrize("url,env,code", [
    ("http://10.0.0.5/hook", {}, "callback_not_allowed"),
    ("http://127.0.0.1:8080/hook", {}, "callback_not_allowed"),
    ("http://[::ffff:127.0.0.1]/hook", {}, "callback_not_allowed"),
    ("http://169.254.169.254/latest/meta-data", {}, "callback_not_allowed"),
    ("http://LOCALHOST/hook", {}, "callback_not_allowed"),
    ("https://hooks.example.com/x", {"OCR_CALLBACK_ALLOWED_HOSTS": "other.example.com"},
     "callback_not_allowed"),
    ("https://hooks.example.com:8443/x",
     {"OCR_CALLBACK_ALLOWED_HOSTS": "hooks.example.com:443"}, "callback_not_allowed"),
    ("https://hooks.example.com/hooks/../../admin",
     {"OCR_CALLBACK_URL_PREFIXES": "https://hooks.example.com/hooks/"},
     "callback_not_allowed"),
    ("https://hooks.example.com/hooks/%2e%2e/admin",
     {"OCR_CALLBACK_URL_PREFIXES": "https://hooks.example.com/hooks/"},
     "callback_not_allowed"),
    ("https://user:pw@hooks.example.com/", {}, "bad_request"),
    ("ftp://hooks.example.com/", {}, "bad_request"),
    ("https://hooks.example.com/a\\..\\b", {}, "bad_request"),
])
def test_callback_url_refused(url: str, env: dict[str, str], code: str) -> None:
    with pytest.raises(OcrError) as refused:
        check_callback_url(url, policy(**env))
    assert refused.value.code == code


def test_callback_url_normalised_and_allowed() -> None:
    listed = policy(OCR_CALLBACK_ALLOWED_HOSTS="127.0.0.1:9000,Hooks.Example.com")
    assert check_callback_url("HTTP://127.0.0.1:9000/a/./b/../c?x=1#frag", listed) \
        == "http://127.0.0.1:9000/a/c?x=1"
    assert check_callback_url("https://hooks.example.com:443/x", listed) \
        == "https://hooks.example.com/x"
    prefixed = policy(OCR_CALLBACK_URL_PREFIXES="https://hooks.example.com/hooks/")
    assert check_callback_url("https://hooks.example.com/hooks/a/../b", prefixed) \
        == "https://hooks.example.com/hooks/b"
    assert check_callback_url("https://93.184.216.34/x", policy()) == "https://93.184.216.34/x"


def test_every_resolved_address_is_checked_at_send_time() -> None:
    def resolver(*addresses: str) -> Callable[..., list[tuple[Any, ...]]]:
        return lambda host, port, **_: [(socket.AF_INET, socket.SOCK_STREAM, 6, "",
                                         (a, port)) for a in addresses]

    target = callback_target("https://hooks.example.com/x", policy())
    assert len(checked_addresses(target, resolver("93.184.216.34"))) == 1
    with pytest.raises(CallbackNotAllowed):
        checked_addresses(target, resolver("93.184.216.34", "192.168.1.10"))
    listed = callback_target("https://hooks.example.com/x",
                             policy(OCR_CALLBACK_ALLOWED_HOSTS="hooks.example.com"))
    assert len(checked_addresses(listed, resolver("192.168.1.10"))) == 1
    with pytest.raises(CallbackNotAllowed) as refused:
        checked_addresses(target, resolver("192.168.1.10"))
    assert "add `hooks.example.com:443` to OCR_CALLBACK_ALLOWED_HOSTS" in str(refused.value)


@pytest.mark.parametrize("url,env", [
    ("http://127.0.0.1:8080/hook", {}), ("http://[::1]:9000/h", {}),
    ("http://LOCALHOST/hook", {}),
    ("https://hooks.example.com:8443/x", {"OCR_CALLBACK_ALLOWED_HOSTS": "hooks.example.com:443"}),
])
def test_a_callback_refusal_gives_the_entry_that_allows_it(url: str, env: dict[str, str]
                                                          ) -> None:
    """The refusal names the host:port entry; that entry in the setting lets the URL in."""
    with pytest.raises(CallbackNotAllowed) as refused:
        check_callback_url(url, policy(**env))
    found = re.search(r"add `([^`]+)` to OCR_CALLBACK_ALLOWED_HOSTS", refused.value.message)
    assert found, refused.value.message
    assert check_callback_url(url, policy(OCR_CALLBACK_ALLOWED_HOSTS=found[1]))


def test_sign_and_verify() -> None:
    body, now = b'{"id": "x"}', 1_700_000_000
    signature = sign(body, "s3cret", now)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert verify(body, "s3cret", str(now), signature, now=now + 10)
    assert not verify(body + b" ", "s3cret", str(now), signature, now=now)
    assert not verify(body, "other", str(now), signature, now=now)
    assert not verify(body, "s3cret", str(now), signature, now=now + 301)


class Hook(http.server.BaseHTTPRequestHandler):
    """Verifies signed callbacks; `/redirect` answers 302 to the `internal` server."""

    seen: list[tuple[str, str, bool]] = []   # (server, path, signature valid)
    redirect_to = ""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        valid = verify(raw, "s3cret", self.headers.get("X-OCR-Timestamp", ""),
                       self.headers.get("X-OCR-Signature", ""))
        self.seen.append((str(self.server.server_address[1]), self.path, valid))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
        else:
            self.send_response(200 if valid else 401)
        self.end_headers()

    do_GET = do_POST  # noqa: N815 (a followed 302/303 arrives as a GET)

    def log_message(self, *args: Any) -> None:
        pass


def serve() -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def hooks(start_worker: Callable[..., Worker]) -> Iterator[tuple[int, int]]:
    """(listed port, internal port): a worker whose allow-list names the first only."""
    listed, internal = serve(), serve()
    port, other = listed.server_address[1], internal.server_address[1]
    Hook.redirect_to = f"http://127.0.0.1:{other}/admin"
    env = {**FAKE_ENV, "OCR_CALLBACK_SECRET": "s3cret",
           "OCR_CALLBACK_ALLOWED_HOSTS": f"127.0.0.1:{port}"}
    start_worker(**env, OCR_QUEUES="ocr-hooks")
    start_worker("control", **env)  # the callback outbox's sender
    yield port, other
    listed.shutdown()
    internal.shutdown()


def callback_job(client: OcrClient, url: str) -> dict[str, Any]:
    job = client.app.send_task("ocr.document", queue="ocr-hooks", kwargs={
        "data_b64": base64.b64encode(corpus("scan_linn.png").read_bytes()).decode(),
        "callback_url": url}).id
    return wait_state(client, job)


def test_signed_callback_to_a_listed_loopback_host(hooks: tuple[int, int],
                                                   client: OcrClient) -> None:
    port, _ = hooks
    Hook.seen.clear()
    assert callback_job(client, f"http://127.0.0.1:{port}/done")["status"] == "SUCCESS"
    eventually(lambda: len(Hook.seen) >= 1, 30, "the callback at the hook")
    assert Hook.seen == [(str(port), "/done", True)]


def delivery_of(client: OcrClient, url: str) -> dict[str, Any]:
    """How a POST to `url` went, recorded on its job.

    Sent as an `ocr.http_callback` message (an older release's), which only puts it
    into the outbox; the control worker sends it.
    """
    job_id = str(uuid.uuid4())
    client.app.send_task("ocr.http_callback", queue="ocr-hooks", kwargs={"job_id": job_id},
                         args=[url, {"id": job_id, "event_id": f"{job_id}.SUCCESS"}])
    control = JobControl(redis.Redis.from_url(client.settings.redis_url), 600)
    return dict(eventually(lambda: control.callback(control.info(job_id)), 30,
                           f"the delivery of {url} recorded"))


def test_redirect_is_not_followed(hooks: tuple[int, int], client: OcrClient) -> None:
    port, internal = hooks
    Hook.seen.clear()
    assert delivery_of(client, f"http://127.0.0.1:{port}/redirect") == {
        "status": "rejected", "code": "callback_rejected", "attempts": 1,
        "http_status": 302}
    # The hook records a request before it answers: a followed redirect would have
    # reached `internal` before the delivery was recorded.
    assert Hook.seen == [(str(port), "/redirect", True)]  # nothing reached `internal`
    assert str(internal) not in str(Hook.seen)


def test_unlisted_private_callback_is_refused(hooks: tuple[int, int],
                                              client: OcrClient) -> None:
    _, internal = hooks
    Hook.seen.clear()
    result = callback_job(client, f"http://127.0.0.1:{internal}/admin")
    assert result["status"] == "FAILURE"
    assert result["error"]["code"] == "callback_not_allowed", result
    # at send time too: a name that resolves to a non-public address
    host = socket.gethostname()
    assert not all(is_public(ipaddress.ip_address(info[4][0]))
                   for info in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM))
    assert delivery_of(client, f"http://{host}:{internal}/admin") == {
        "status": "refused", "code": "callback_not_allowed", "attempts": 1}
    assert Hook.seen == []


# --- no document text in the worker's log -------------------------------------------

def test_no_document_text_in_the_worker_log(worker: Worker, client: OcrClient) -> None:
    result = ok_job(client)
    text = result["text"]
    assert text.startswith("fake 640x480 mean=")
    eventually(lambda: f"ocr.document[{result['id']}] succeeded" in worker.log(), 30,
               "the task's success line")
    log = worker.log()
    line = next(x for x in log.splitlines() if f"ocr.document[{result['id']}] succeeded" in x)
    assert line.endswith("(result not logged)"), line
    assert "mean=" not in log and text not in log
    job_line = next(x for x in log.splitlines() if "ocr.job {" in x and result["id"] in x)
    assert '"outcome": "SUCCESS"' in job_line


def test_malformed_broadcast_does_not_stop_the_worker(worker: Worker, client: OcrClient,
                                                      raw_redis: redis.Redis) -> None:
    """Remote-control broadcasts come by PUBLISH; a junk one is dead-lettered too."""
    channel = f"/{raw_redis.connection_pool.connection_kwargs['db']}.celery.pidbox"
    for body in (b"[]", b'{"properties": null}'):
        assert raw_redis.publish(channel, body) >= 1  # the worker's pattern got it
    eventually(lambda: "fanout:" in worker.log(), 30, "the junk broadcasts' refusal")
    assert client.app.control.ping(timeout=5)  # remote control still answers
    assert ok_job(client)["status"] == "SUCCESS"
    assert any(d.queue.startswith("fanout:") for d in read_dead_letters(raw_redis))
