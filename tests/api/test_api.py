"""The HTTP API: the Procfile's `api` process, real Redis, a real worker (fake engine).

The fake engine is enough for the API's mechanics (uploads, tokens, isolation,
idempotency, progress, cancel); the engines themselves are tested elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from PIL import Image

from devkit.receivers import CallbackReceiver
from tasks.client import OcrClient
from tasks.state.api_jobs import ApiJobs
from tests.api_server import ApiServer, create_token, session, wait_end
from tests.harness import (
    FAST_PAGES,
    ROOT,
    RedisServer,
    Worker,
    eventually,
    fake_env,
    sent_past_the_gate,
)
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf, plain_pages

WORKER_ENV = fake_env("fake", "flaky-on-dark", "tesseract", **FAST_PAGES,
                      OCR_CONCURRENCY="2", FAKE_PAGE_SECONDS="0.4")
MAX_MB = "1"
SECRET = "webhook-secret"


def text_png(text: str = "Invoice 2024") -> bytes:
    """A short printed line, for the bundled engine (word boxes: pdf, hOCR, ALTO)."""
    from PIL import ImageDraw, ImageFont

    image = Image.new("L", (360, 60), 255)
    ImageDraw.Draw(image).text((10, 12), text, fill=0, font=ImageFont.load_default(size=30))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("roots")


@pytest.fixture(scope="module")
def callbacks(receiver: CallbackReceiver) -> dict[str, str]:
    """Workers and API alike: the receiver's host is listed; POSTs are signed."""
    return {"OCR_CALLBACK_ALLOWED_HOSTS": f"127.0.0.1:{receiver.port}",
            "OCR_CALLBACK_SECRET": SECRET}


@pytest.fixture(scope="module")
def healed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Once this file exists, the flaky-on-dark engine reads dark pages too."""
    return tmp_path_factory.mktemp("flaky") / "healed"


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], roots: Path, callbacks: dict[str, str],
           healed: Path) -> Worker:
    start_worker("control", **WORKER_ENV, **callbacks)  # the callback outbox's sender
    return start_worker(**WORKER_ENV, **callbacks, OCR_ALLOWED_ROOTS=str(roots),
                        FAKE_HEALED_FLAG=str(healed))


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer], roots: Path, worker: Worker,
        callbacks: dict[str, str]) -> ApiServer:
    return start_api(OCR_MAX_INPUT_MB=MAX_MB, OCR_ALLOWED_ROOTS=str(roots), **callbacks)


@pytest.fixture(scope="module")
def alice(api: ApiServer, redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "alice"))


@pytest.fixture(scope="module")
def bob(api: ApiServer, redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "bob"))


@pytest.fixture(scope="module")
def store(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def send(http: requests.Session, api: ApiServer, data: bytes, name: str = "scan.png",
         **fields: str) -> str:
    answer = http.post(f"{api.url}/v1/jobs", files={"file": (name, data)}, data=fields,
                       timeout=30)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["links"]["self"] == f"/v1/jobs/{body['id']}"
    return str(body["id"])


def keys(store: redis.Redis, pattern: str) -> set[bytes]:
    return set(store.scan_iter(match=pattern, count=1000))


def test_health_readiness_schema_and_docs(api: ApiServer, alice: requests.Session,
                                          worker: Worker) -> None:
    assert requests.get(f"{api.url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{api.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    # Without a token: no node names, no queue list; with one: both.
    assert ready.json()["ready"] and ready.json()["worker_count"] >= 1
    assert ready.json()["workers"] == [] and ready.json()["queues"] is None
    detailed = alice.get(f"{api.url}/readyz", timeout=10).json()
    assert any(worker.name in node for node in detailed["workers"]), detailed
    assert "ocr" in detailed["queues"]
    nobody = requests.get(f"{api.url}/readyz", params={"queue": "ocr-nosuch"}, timeout=10)
    assert nobody.status_code == 503 and nobody.json()["ready"] is False
    schema = requests.get(f"{api.url}/openapi.json", timeout=5).json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result",
            "/v1/jobs/{job_id}/events", "/healthz", "/readyz", "/v1/batches",
            "/v1/batches/{batch_id}", "/v1/batches/{batch_id}/cancel",
            "/v1/batches/{batch_id}/retry", "/v1/batches/{batch_id}/events"} <= \
        set(schema["paths"])
    # A job's `state` is one of the service's words: CANCELLED, never Celery's REVOKED.
    state = schema["components"]["schemas"]["JobInfo"]["properties"]["state"]
    shown = schema["components"]["schemas"][state["$ref"].rsplit("/", 1)[1]]["enum"]
    assert "CANCELLED" in shown and "REVOKED" not in shown, shown
    docs = requests.get(f"{api.url}/docs", timeout=5)
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    # The page's script is served by the API itself (no CDN).
    script = docs.text.split('src="')[1].split('"')[0]
    assert script.startswith("/") and requests.get(f"{api.url}{script}",
                                                   timeout=5).status_code == 200


def test_upload_poll_and_every_format(api: ApiServer, alice: requests.Session) -> None:
    text_job = send(alice, api, png(), "scan.png")
    markdown_job = send(alice, api, png(90), "scan.png", output="markdown")
    # pdf, hOCR and ALTO need word boxes: the bundled engine reads those.
    stored = {fmt: send(alice, api, text_png(), "line.png", output=fmt, engine="tesseract",
                        lang="eng", priority="interactive") for fmt in ("pdf", "hocr", "alto")}
    for job_id in (text_job, markdown_job, *stored.values()):
        status = wait_end(alice, api, job_id)
        assert status["status"] == "SUCCESS", status
        assert status["progress"]["done"] == status["progress"]["total"] >= 1

    text = alice.get(f"{api.url}/v1/jobs/{text_job}/result", timeout=10)
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert text.text == "fake 64x48 mean=200.0"
    whole = alice.get(f"{api.url}/v1/jobs/{text_job}/result?format=json", timeout=10)
    assert whole.headers["content-type"] == "application/json"
    assert whole.json()["status"] == "SUCCESS" and whole.json()["filename"] == "scan.png"
    refused = alice.get(f"{api.url}/v1/jobs/{text_job}/result?format=markdown", timeout=10)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "format_unavailable"

    markdown = alice.get(f"{api.url}/v1/jobs/{markdown_job}/result?format=markdown",
                         timeout=10)
    assert markdown.headers["content-type"] == "text/markdown; charset=utf-8"
    assert "mean=90.0" in markdown.text

    expected = {"pdf": ("application/pdf", b"%PDF", "line.png.ocr.pdf"),
                "hocr": ("text/html; charset=utf-8", b"ocr_page", "line.png.hocr"),
                "alto": ("application/xml", b"<alto", "line.png.alto.xml")}
    for fmt, job_id in stored.items():
        media, marker, name = expected[fmt]
        body = alice.get(f"{api.url}/v1/jobs/{job_id}/result?format={fmt}", timeout=10)
        assert body.status_code == 200, body.text
        assert body.headers["content-type"] == media
        assert marker in body.content and name in body.headers["content-disposition"]
        if fmt != "pdf":
            assert b"Invoice" in body.content
        record = alice.get(f"{api.url}/v1/jobs/{job_id}/result?format=json",
                           timeout=10).json()
        assert "key" not in record[fmt] and "input_blob" not in record  # storage is private
        assert record[fmt]["href"] == f"/v1/jobs/{job_id}/result?format={fmt}"
        assert record["lang"] == "eng"
    other = alice.get(f"{api.url}/v1/jobs/{stored['pdf']}/result?format=alto", timeout=10)
    assert other.status_code == 409 and other.json()["error"]["code"] == "format_unavailable"


def test_path_input_under_allowed_roots(api: ApiServer, alice: requests.Session,
                                        roots: Path) -> None:
    (roots / "on-share.png").write_bytes(png(120))
    answer = alice.post(f"{api.url}/v1/jobs", json={"path": str(roots / "on-share.png")},
                        timeout=10)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    assert wait_end(alice, api, job_id)["filename"] == "on-share.png"
    assert "mean=120.0" in alice.get(f"{api.url}/v1/jobs/{job_id}/result", timeout=10).text
    outside = alice.post(f"{api.url}/v1/jobs", json={"path": "/etc/passwd"}, timeout=10)
    assert outside.status_code == 400
    assert outside.json()["error"]["code"] == "path_not_allowed"


def test_bad_or_missing_token_is_401(api: ApiServer, alice: requests.Session,
                                     redis_url: str) -> None:
    for headers in ({}, {"Authorization": "Bearer ocr_not-a-token"},
                    {"Authorization": "Basic YTpi"}):
        answer = requests.get(f"{api.url}/v1/jobs/x", headers=headers, timeout=5)
        assert answer.status_code == 401, headers
        assert answer.json()["error"]["code"] == "unauthorized"
        assert answer.headers["www-authenticate"] == "Bearer"
    # A revoked token stops working at once.
    carol = session(create_token(redis_url, "carol"))
    assert carol.get(f"{api.url}/v1/jobs/x", timeout=5).status_code == 404
    done = subprocess.run([sys.executable, "submit.py", "tokens", "revoke", "carol"],
                          cwd=ROOT, env={"REDIS_URL": redis_url, "PYTHONPATH": str(ROOT),
                                         "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 0
    assert carol.get(f"{api.url}/v1/jobs/x", timeout=5).status_code == 401


def test_only_hashes_of_tokens_are_stored(api: ApiServer, redis_url: str,
                                          store: redis.Redis) -> None:
    token = create_token(redis_url, "dave")
    dump = b"".join(k + (store.dump(k) or b"") for k in keys(store, "ocr:api:*"))
    assert token.encode() not in dump
    listed = subprocess.run([sys.executable, "submit.py", "tokens", "list", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)})
    assert "dave" in listed.stdout and token not in listed.stdout


def test_other_clients_job_is_404(api: ApiServer, alice: requests.Session,
                                  bob: requests.Session) -> None:
    job_id = send(alice, api, png())
    for method, path in (("GET", ""), ("GET", "/result?format=json"), ("GET", "/events"),
                         ("DELETE", "")):
        answer = bob.request(method, f"{api.url}/v1/jobs/{job_id}{path}", timeout=10)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "not_found"
    assert wait_end(alice, api, job_id)["status"] == "SUCCESS"  # bob's DELETE did nothing


def test_worker_side_reference_check(api: ApiServer, alice: requests.Session,
                                     store: redis.Redis) -> None:
    """What a worker asks before a job reads its input (JobControl.check_references)."""
    from tasks.errors import BadRequest
    from tasks.state.job_control import JobControl

    job_id = send(alice, api, png())
    wait_end(alice, api, job_id)
    control = JobControl(store, 600)
    info = control.info(job_id)
    assert info["owner"] == "api:alice" and info["blob"].startswith("ocr:blob:api.alice.")
    alices_blob = info["blob"]
    control.check_references(job_id, alices_blob, None)  # its own input
    control.remember("retry-1", owner="api:alice", blob=alices_blob)
    control.check_references("retry-1", alices_blob, job_id)  # a retry of its own job
    control.remember("bobs-1", owner="api:bob", blob="ocr:blob:bobs-own-input")
    control.check_references("flower-1", "ocr:blob:someone-elses-0123", None)  # trusted path
    for other, blob, merge_from in (("flower-1", alices_blob, None),  # no owner, API blob
                                    ("bobs-1", alices_blob, None),  # another client's blob
                                    ("flower-1", None, job_id),  # another owner's job
                                    ("bobs-1", None, job_id),
                                    ("bobs-1", "ocr:blob:not-recorded-0123", None)):
        with pytest.raises(BadRequest):
            control.check_references(other, blob, merge_from)


def test_oversized_upload_is_413_and_nothing_is_stored(api: ApiServer,
                                                       alice: requests.Session,
                                                       store: redis.Redis) -> None:
    before = keys(store, "ocr:blob:*") | keys(store, "ocr:api:upload:*")
    jobs_before = keys(store, "ocr:api:job:*")
    big = png() + bytes(int(float(MAX_MB) * 1024 * 1024) + 1)
    declared = alice.post(f"{api.url}/v1/jobs", files={"file": ("big.png", big)}, timeout=30)
    # Without a Content-Length (chunked), the limit is met while the file streams in.
    chunked = alice.post(f"{api.url}/v1/jobs", timeout=30,
                         headers={"Content-Type": "multipart/form-data; boundary=xyz"},
                         data=iter([b'--xyz\r\nContent-Disposition: form-data; name="file"; '
                                    b'filename="big.png"\r\n\r\n', *(big[i:i + 65536] for i in
                                    range(0, len(big), 65536)), b"\r\n--xyz--\r\n"]))
    for answer in (declared, chunked):
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "input_too_large"
    after = keys(store, "ocr:blob:*") | keys(store, "ocr:api:upload:*")
    assert after <= before and keys(store, "ocr:api:job:*") == jobs_before


def test_idempotency_key_gives_one_job(api: ApiServer, alice: requests.Session,
                                       bob: requests.Session, store: redis.Redis) -> None:
    jobs_before = keys(store, "ocr:api:job:*")
    ids: list[str] = []
    replayed: list[str] = []

    def post() -> None:
        answer = alice.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png())},
                            headers={"Idempotency-Key": "order-42"}, timeout=30)
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
        replayed.append(answer.headers.get("idempotent-replayed", ""))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    post()  # and once more after the others
    assert len(ids) == len(replayed) == 5, (ids, replayed)  # no thread's request failed
    assert len(set(ids)) == 1 and replayed.count("true") == 4
    assert len(keys(store, "ocr:api:job:*") - jobs_before) == 1
    # The same key from another client is that client's own.
    other = bob.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png())},
                     headers={"Idempotency-Key": "order-42"}, timeout=30)
    assert other.status_code == 202 and other.json()["id"] != ids[0]
    assert wait_end(alice, api, ids[0])["status"] == "SUCCESS"
    # A replay answers the job as it stands now; the key with other options is refused.
    again = alice.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png())},
                       headers={"Idempotency-Key": "order-42"}, timeout=30)
    assert again.json()["status"] == "SUCCESS" and again.json()["id"] == ids[0]
    jobs_now = keys(store, "ocr:api:job:*")
    other_options = alice.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png())},
                               data={"output": "json"},
                               headers={"Idempotency-Key": "order-42"}, timeout=30)
    assert other_options.status_code == 409, other_options.text
    assert other_options.json()["error"]["code"] == "idempotency_key_reused"
    assert keys(store, "ocr:api:job:*") == jobs_now


def test_a_key_whose_claimant_died_before_sending_makes_a_job(
        api: ApiServer, alice: requests.Session, store: redis.Redis) -> None:
    """An API process killed between claiming an Idempotency-Key and sending its job.

    The key names a job that was never sent (no control record): a retry with that key
    waits for it a while (SEND_WAIT), then takes the key and sends a job of its own,
    which ends; it is never answered with the id of a job that will not run.
    """
    digest = hashlib.sha256(b"died-mid-send").hexdigest()
    never_sent = str(uuid.uuid4())
    store.set(f"ocr:api:idem:alice:{digest}", f"{never_sent} ", ex=3600)
    answer = alice.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png())},
                        headers={"Idempotency-Key": "died-mid-send"}, timeout=60)
    assert answer.status_code == 202, answer.text
    job = answer.json()["id"]
    assert job != never_sent and answer.headers.get("idempotent-replayed", "") != "true"
    assert wait_end(alice, api, job)["status"] == "SUCCESS"
    again = alice.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png())},
                       headers={"Idempotency-Key": "died-mid-send"}, timeout=60)
    assert again.json()["id"] == job  # the key now names the job that was sent


def test_a_queued_job_no_worker_can_take_says_so(api: ApiServer, alice: requests.Session,
                                                 store: redis.Redis, client: OcrClient) -> None:
    # A job of alice's on a queue no live worker consumes (sent past the door, as a
    # Celery client may): its status says no_worker instead of waiting at QUEUED.
    job_id = sent_past_the_gate(client, {"blob": client._blobs.put(png()), "filename": "a.png",
                                         "engine": "nobody"}, owner="api:alice")
    ApiJobs(store, 600, 600).remember("alice", job_id, "text", "a.png")
    status = alice.get(f"{api.url}/v1/jobs/{job_id}", timeout=10).json()
    assert status["status"] == "QUEUED" and status["error"]["code"] == "no_worker", status
    assert "'ocr-nobody'" in status["error"]["message"]
    assert alice.delete(f"{api.url}/v1/jobs/{job_id}", timeout=10).status_code == 202
    ended = wait_end(alice, api, job_id)
    assert ended["status"] == "CANCELLED" and ended["error"] is None
    assert ended["state"] == "CANCELLED"  # not Celery's REVOKED


def events(http: requests.Session, api: ApiServer, job_id: str) -> list[tuple[str, dict]]:
    seen: list[tuple[str, dict]] = []
    with http.get(f"{api.url}/v1/jobs/{job_id}/events", stream=True, timeout=120) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in answer.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                seen.append((name, json.loads(line[6:])))
    return seen


def test_events_stream_progress_then_end(api: ApiServer, alice: requests.Session) -> None:
    job_id = send(alice, api, image_pdf(plain_pages(6)), "six.pdf")
    seen = events(alice, api, job_id)
    names = [name for name, _ in seen]
    assert names[-1] == "end" and names.count("end") == 1
    assert seen[-1][1]["status"] == "SUCCESS"
    assert seen[-1][1]["progress"] == {"done": 6, "total": 6}
    partial = [data["progress"]["done"] for name, data in seen
               if name == "progress" and data["progress"]["total"] == 6]
    assert any(0 < done < 6 for done in partial), seen  # pages seen arriving
    assert partial == sorted(partial)


def test_a_status_read_can_wait_for_the_end(api: ApiServer, alice: requests.Session) -> None:
    """`?wait=` answers with the final status once the job ends (its ending notice)."""
    job_id = send(alice, api, image_pdf(plain_pages(3)), "three.pdf")
    answer = alice.get(f"{api.url}/v1/jobs/{job_id}?wait=60", timeout=90)
    assert answer.status_code == 200 and answer.json()["status"] == "SUCCESS", answer.text
    too_long = alice.get(f"{api.url}/v1/jobs/{job_id}?wait=61", timeout=10)
    assert too_long.status_code == 422


def test_delete_cancels_a_running_pdf(api: ApiServer, alice: requests.Session) -> None:
    job_id = send(alice, api, image_pdf(plain_pages(12)), "twelve.pdf")

    def a_page_done() -> dict[str, Any] | None:
        status = alice.get(f"{api.url}/v1/jobs/{job_id}", timeout=10).json()
        return dict(status) if status["progress"]["done"] >= 1 else None

    status = eventually(a_page_done, 60, "a page of twelve.pdf done", interval=0.05)
    assert status["status"] == "RUNNING", status
    answer = alice.delete(f"{api.url}/v1/jobs/{job_id}", timeout=10)
    assert answer.status_code == 202, answer.text
    final = wait_end(alice, api, job_id, timeout=60)
    assert (final["status"], final["state"]) == ("CANCELLED", "CANCELLED"), final
    assert 1 <= final["progress"]["done"] < 12
    assert final["progress"]["total"] == 12  # the pages it was to read, not those kept
    # its events stream ends at once, in the same words
    [(name, data)] = events(alice, api, job_id)
    assert name == "end" and (data["status"], data["state"]) == ("CANCELLED", "CANCELLED")
    result = alice.get(f"{api.url}/v1/jobs/{job_id}/result?format=json", timeout=10).json()
    assert result["status"] == "CANCELLED" and len(result["pages"]) >= 1
    text = alice.get(f"{api.url}/v1/jobs/{job_id}/result", timeout=10)
    assert text.status_code == 409 and text.json()["error"]["code"] == "cancelled"
    again = alice.delete(f"{api.url}/v1/jobs/{job_id}", timeout=10)
    assert again.status_code == 200 and again.json()["status"] == "CANCELLED"
    assert again.json()["state"] == "CANCELLED"


def test_signed_webhook_to_a_listed_host_and_refusals(api: ApiServer, alice: requests.Session,
                                                      receiver: CallbackReceiver) -> None:
    from tasks.lifecycle.callbacks import verify
    from tasks.state.webhook_secrets import WebhookSecrets

    hook = f"http://127.0.0.1:{receiver.port}/hooks/ocr?order=42"
    job_id = send(alice, api, png(), "hooked.png", callback_url=hook)
    assert wait_end(alice, api, job_id)["status"] == "SUCCESS"
    eventually(lambda: any(json.loads(body).get("id") == job_id for _, body in receiver.posts),
               30, "the job's callback")
    headers, body = next((h, b) for h, b in receiver.posts if json.loads(b)["id"] == job_id)
    assert json.loads(body)["status"] == "SUCCESS"
    # an API client's job is signed with that client's own secret
    # (tests/api/test_webhook_secrets.py), not with OCR_CALLBACK_SECRET
    own = WebhookSecrets(redis.Redis.from_url(api.env["REDIS_URL"])).signing("alice")
    assert own is not None
    assert verify(body, own.current, headers["X-OCR-Timestamp"], headers["X-OCR-Signature"])
    assert not verify(body, SECRET, headers["X-OCR-Timestamp"], headers["X-OCR-Signature"])
    assert not verify(body + b" ", own.current, headers["X-OCR-Timestamp"],
                      headers["X-OCR-Signature"])
    # Unlisted private, loopback and link-local targets are refused before any job exists.
    for url in ("http://10.1.2.3/hook", f"http://127.0.0.1:{receiver.port + 1}/hook",
                "http://169.254.169.254/latest", "http://localhost/hook"):
        answer = alice.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png())},
                            data={"callback_url": url}, timeout=10)
        assert answer.status_code == 400, (url, answer.text)
        assert answer.json()["error"]["code"] == "callback_not_allowed", url
        if ":" in url.split("//", 1)[1]:  # the entry to list is this host:port
            assert (f"add `127.0.0.1:{receiver.port + 1}` to OCR_CALLBACK_ALLOWED_HOSTS"
                    in answer.json()["error"]["message"]), answer.text


def test_retry_rereads_failed_pages_of_own_jobs_only(api: ApiServer, alice: requests.Session,
                                                     bob: requests.Session,
                                                     healed: Path) -> None:
    job_id = send(alice, api, image_pdf(plain_pages(4, dark=[2, 4])), "four.pdf",
                  engine="flaky-on-dark")
    first = wait_end(alice, api, job_id)
    assert first["status"] == "PARTIAL" and first["progress"] == {"done": 2, "total": 4}
    assert bob.post(f"{api.url}/v1/jobs/{job_id}/retry", timeout=10).status_code == 404
    healed.touch()
    answer = alice.post(f"{api.url}/v1/jobs/{job_id}/retry", json={"priority": "interactive"},
                        timeout=10)
    assert answer.status_code == 202, answer.text
    again = answer.json()["id"]
    assert wait_end(alice, api, again)["status"] == "SUCCESS"
    result = alice.get(f"{api.url}/v1/jobs/{again}/result?format=json", timeout=10).json()
    assert result["retry_of"] == job_id and len(result["pages"]) == 4
    assert bob.get(f"{api.url}/v1/jobs/{again}", timeout=10).status_code == 404
    done = alice.post(f"{api.url}/v1/jobs/{again}/retry", timeout=10)
    assert done.status_code == 400 and done.json()["error"]["code"] == "bad_request"


def test_per_client_limits_answer_429(api: ApiServer, redis_url: str) -> None:
    chatty = session(create_token(redis_url, "chatty", "--requests-per-minute", "3"))
    codes = [chatty.get(f"{api.url}/v1/jobs/x", timeout=5) for _ in range(4)]
    assert [a.status_code for a in codes[:3]] == [404] * 3
    assert codes[3].status_code == 429
    assert codes[3].json()["error"]["code"] == "rate_limited"
    assert 1 <= int(codes[3].headers["retry-after"]) <= 61

    busy = session(create_token(redis_url, "busy", "--jobs-in-flight", "1"))
    first = send(busy, api, image_pdf(plain_pages(10)), "ten.pdf")  # ~2 s of pages
    second = busy.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png())}, timeout=30)
    assert second.status_code == 429 and second.json()["error"]["code"] == "quota_exceeded"
    assert second.headers["retry-after"]
    wait_end(busy, api, first)
    send(busy, api, png())  # room again once the first has ended


def test_bad_requests_have_codes(api: ApiServer, alice: requests.Session) -> None:
    cases = [
        ({"files": {"file": ("a.png", png())}, "data": {"output": "docx"}}, 422),
        ({"files": {"file": ("a.png", png())}, "data": {"colour": "red"}}, 422),
        ({"files": {"file": ("a.png", b"")}}, 400),
        ({"json": {"pages": "1"}}, 400),
        ({"data": b"plain", "headers": {"Content-Type": "text/plain"}}, 415),
        ({"files": {"file": ("a.png", png())}, "data": {"engine": "tesserakt"}}, 422),
        ({"files": {"file": ("a.png", png())}, "data": {"pages": "3-1"}}, 422),
    ]
    for kwargs, code in cases:
        answer = alice.post(f"{api.url}/v1/jobs", timeout=10, **kwargs)  # type: ignore[arg-type]
        assert answer.status_code == code, (kwargs, answer.text)
        assert set(answer.json()["error"]) == {"code", "message", "retryable"}
    unknown = alice.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png())},
                         data={"engine": "tesserakt"}, timeout=10).json()["error"]
    assert unknown["code"] == "unknown_engine"
    assert all(name in unknown["message"] for name in ("tesseract", "rapidocr", "mlx-vlm"))


def stored_keys(store: redis.Redis) -> set[bytes]:
    """What a request can leave in Redis.

    Uploads, inputs and the bytes they count for, job records, idempotency keys,
    queues and their bindings.
    """
    return {k for pattern in ("ocr:api:upload:*", "ocr:blob:*", "ocr:api:bytes:*",
                              "ocr:api:job:*", "ocr:api:idem:*", "ocr:api:inflight:*",
                              "ocr:job:*", "ocr-*", "_kombu.binding.ocr-*")
            for k in keys(store, pattern)}


def left_behind(store: redis.Redis, before: set[bytes]) -> set[bytes]:
    """Keys stored since `before`, less those of jobs that were there already.

    Jobs of earlier tests in this module may still be ending (their `:ended` or
    `:cancelled` markers land late); a key under a job record of `before` is theirs.
    """
    jobs = {k for k in before if k.startswith((b"ocr:job:", b"ocr:api:job:"))}
    return {k for k in stored_keys(store) - before
            if not any(k.startswith(job + b":") for job in jobs)}


def test_an_unknown_engine_is_422_with_nothing_stored(api: ApiServer, redis_url: str,
                                                      store: redis.Redis) -> None:
    """`engine=tesserakt`: 422 unknown_engine, and no key of the request is left.

    The engine's field before the file (as requests sends form fields) and after it
    (as `curl -F file=@... -F engine=...` does), where the file has streamed into an
    upload key first; with an Idempotency-Key too. A client of its own: its bytes
    record is one the request would leave.
    """
    carol = session(create_token(redis_url, "carol"))
    before = stored_keys(store)
    upload = png() + bytes(700 * 1024)  # under the 1 MB limit: stored when it is read
    engine_first = [("engine", (None, "tesserakt")), ("file", ("a.png", upload))]
    file_first = [("file", ("a.png", upload)), ("engine", (None, "tesserakt"))]
    for fields, headers in ((engine_first, {}), (file_first, {}),
                            (file_first, {"Idempotency-Key": "carol-1"})):
        answer = carol.post(f"{api.url}/v1/jobs", files=fields, headers=headers, timeout=30)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "unknown_engine"
        assert not left_behind(store, before), left_behind(store, before)
    # The engine is checked as its field arrives, before the file after it is read: a
    # file over OCR_MAX_INPUT_MB (no Content-Length: measured as it streams) after
    # `engine=tesserakt` is refused for its engine, not its size.
    big = png() + bytes(int(float(MAX_MB) * 1024 * 1024) + 1)
    chunked = carol.post(f"{api.url}/v1/jobs", timeout=30,
                         headers={"Content-Type": "multipart/form-data; boundary=xyz"},
                         data=iter([b'--xyz\r\nContent-Disposition: form-data; name="engine"'
                                    b'\r\n\r\ntesserakt\r\n--xyz\r\nContent-Disposition: '
                                    b'form-data; name="file"; filename="big.png"\r\n\r\n',
                                    *(big[i:i + 65536] for i in range(0, len(big), 65536)),
                                    b"\r\n--xyz--\r\n"]))
    assert chunked.status_code == 422, chunked.text
    assert chunked.json()["error"]["code"] == "unknown_engine"
    assert not left_behind(store, before)
    # A language that does not exist: 422 unknown_language naming it, nothing stored.
    for lang in ("klingon", "eng+klingon"):
        answer = carol.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png())},
                            data={"lang": lang}, timeout=30)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["code"] == "unknown_language" and "'klingon'" in error["message"], error
        assert not left_behind(store, before)


def test_the_schemas_formats_are_the_table_of_formats() -> None:
    from typing import get_args

    from tasks.api._schemas import Output
    from tasks.records.formats import FORMATS
    assert set(get_args(Output)) == set(FORMATS)


def test_api_imports_no_engine_and_starts_fast(api: ApiServer, redis_url: str) -> None:
    code = ("import sys; from tasks.api.app import create_api; "
            "from worker_config import Settings; "
            f"create_api(Settings.from_env({{'REDIS_URL': {redis_url!r}}})); "
            "import scripts.run_api; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('pymupdf', 'fitz', 'mlx', 'mlx_vlm', 'tesserocr', 'PIL', 'numpy', 'torch')]; "
            "print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(ROOT),
                                                      "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    print(f"api process answered /healthz {api.startup_seconds:.2f} s after its start")


def test_fuzz_from_own_openapi_schema(tmp_path: Path) -> None:
    """Schemathesis against an API whose Redis (its own) no worker reads.

    Jobs it manages to send stay queued (no engine runs, no callback is POSTed).
    """
    import hypothesis
    import schemathesis
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )
    from schemathesis.core.failures import FailureGroup

    own_redis = RedisServer(tmp_path)
    own_redis.start()
    url = own_redis.url()
    server = ApiServer(tmp_path / "api.log", {"REDIS_URL": url, "OCR_MAX_INPUT_MB": MAX_MB,
                                              "OCR_CALLBACK_URL_PREFIXES": "http://127.0.0.1:9/"})
    server.start()
    try:
        token = create_token(url, "fuzzer")
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        checks = [not_a_server_error, status_code_conformance, content_type_conformance,
                  response_schema_conformance, response_headers_conformance]
        failures: list[str] = []
        calls: dict[str, list[int]] = {}
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path == "/readyz":
                continue  # its documented 503 (no worker here) counts as a server error

            @hypothesis.settings(max_examples=25, deadline=None, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck))
            @hypothesis.given(case=operation.as_strategy())
            def check(case: schemathesis.Case) -> None:
                response = case.call_and_validate(
                    base_url=server.url, checks=checks, timeout=30,
                    headers={"Authorization": f"Bearer {token}"})
                calls.setdefault(case.operation.label, []).append(response.status_code)

            try:
                check()
            except (AssertionError, FailureGroup) as exc:  # every operation's failures
                failures.append(f"{operation.label}: {exc}")
        assert not failures, "\n\n".join(failures)[:6000]
        print({label: sorted(set(codes)) for label, codes in calls.items()})
        assert len(calls) == 19, calls  # every operation but /readyz was called
        assert sum(len(codes) for codes in calls.values()) >= 60, calls
        # Redis gone: coded 503s, not 500s.
        own_redis.stop()
        down = requests.get(f"{server.url}/v1/jobs/x", timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
        assert down.status_code == 503 and down.json()["error"]["code"] == "transient"
        # /readyz answers from a snapshot refreshed every second: it says so soon.

        def redis_down() -> tuple[requests.Response] | None:  # a 503 Response is false
            ready = requests.get(f"{server.url}/readyz", timeout=30)
            return None if ready.json()["redis"] else (ready,)

        (ready,) = eventually(redis_down, 30, "/readyz to say Redis is down", interval=0.2)
        assert ready.status_code == 503 and ready.json()["redis"] is False
    finally:
        server.stop()
        own_redis.stop()
