"""Batches (`/v1/batches`) against real workers, a real Redis and moto's S3 server.

A few dozen small generated one-page images in `s3://src/`, the fake engine (each
document's output names its page's size and shade, so every output is checked to be
its own document's), a window of 4 documents.

- Two bad documents: the batch ends PARTIAL, its manifest has a line per document with
  its status, pages, error code and output, and every output is readable.
- Sent again: nothing is read (every document skipped); one object changed: only it.
- retry: only the failed documents are read again (one of them repaired).
- cancel: the running documents are cancelled and no more start.
- The workers killed halfway and started again: the batch ends, every document has its
  line, and no document was read twice beyond the window.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from devkit.receivers import CallbackReceiver
from tests.api_server import ApiServer, create_token, session
from tests.harness import FAST_PAGES, ROOT, Worker, eventually, fake_env
from tests.held_records import held_items
from tests.image_fixtures import png
from tests.moto_s3 import MotoS3

WINDOW = 4
ALLOWED = "s3://src/,s3://out/"
BATCH_ENV = {"OCR_ALLOWED_URLS": ALLOWED, "OCR_BATCH_WINDOW": str(WINDOW),
             "OCR_BATCH_STEP_SECONDS": "0.2"}
BAD = b"this is not an image at all"
OWN = ("--allowed-url", "s3://src/", "--allowed-url", "s3://out/")  # a client writes there


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    for bucket in ("src", "out"):
        server.client().create_bucket(Bucket=bucket)
    yield server
    server.stop()


def worker_env(s3: MotoS3, tmp: Path, **extra: str) -> dict[str, str]:
    return {**fake_env("fake", "slow-on-dark", **FAST_PAGES, OCR_CONCURRENCY="2"),
            **BATCH_ENV, "OCR_URL_SPOOL_DIR": str(tmp), **s3.env(), **extra}


@pytest.fixture(scope="module")
def hooks(receiver: CallbackReceiver) -> dict[str, str]:
    """Workers and API alike: the receiver's host is listed for callbacks."""
    return {"OCR_CALLBACK_ALLOWED_HOSTS": f"127.0.0.1:{receiver.port}"}


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], s3: MotoS3, hooks: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Worker:
    return start_worker(**worker_env(s3, tmp_path_factory.mktemp("spool"), **hooks))


@pytest.fixture(scope="module")
def control(start_worker: Callable[..., Worker], s3: MotoS3, hooks: dict[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Worker:
    """The control worker (a thread pool): batch steps and cancels never wait for OCR."""
    return start_worker("control", **worker_env(s3, tmp_path_factory.mktemp("spool"),
                                                 **hooks))


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer], worker: Worker, control: Worker, s3: MotoS3,
        hooks: dict[str, str]) -> ApiServer:
    return start_api(**{**BATCH_ENV, **hooks, **s3.env()})


@pytest.fixture(scope="module")
def alice(api: ApiServer, redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "alice", *OWN))


def fill(s3: MotoS3, prefix: str, count: int, bad: tuple[int, ...] = (),
         shade: int = 200) -> dict[str, bytes]:
    """`count` one-page PNGs of distinct sizes under `s3://src/<prefix>`; `bad` ones not."""
    written = {}
    for i in range(count):
        name = f"doc-{i:03d}.png"
        body = BAD if i in bad else png(shade, (40 + i, 30 + i))
        s3.client().put_object(Bucket="src", Key=prefix + name, Body=body)
        written[name] = body
    return written


def start(http: requests.Session, api: ApiServer, prefix: str, **options: Any) -> str:
    answer = http.post(f"{api.url}/v1/batches", json={
        "source": f"s3://src/{prefix}", "result_url": f"s3://out/{prefix}", **options},
        timeout=30)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def info(http: requests.Session, api: ApiServer, batch_id: str) -> dict[str, Any]:
    answer = http.get(f"{api.url}/v1/batches/{batch_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def ended(http: requests.Session, api: ApiServer, batch_id: str,
          timeout: float = 120) -> dict[str, Any]:
    return eventually(lambda: (lambda b: b if b["state"] != "RUNNING" else None)(
        info(http, api, batch_id)), timeout, lambda: f"batch {batch_id} did not end: "
        f"{info(http, api, batch_id)}", interval=0.3)


def manifest(s3: MotoS3, prefix: str) -> dict[str, dict[str, Any]]:
    body = s3.client().get_object(Bucket="out", Key=f"{prefix}manifest.jsonl")["Body"].read()
    lines = [json.loads(line) for line in body.decode().splitlines()]
    return {line["name"]: line for line in lines}


def jobs_of(store: redis.Redis, batch_id: str) -> int:
    """How many jobs the batch sent (each job's record names its batch)."""
    return sum(1 for key in store.scan_iter("ocr:job:*")
               if key.count(b":") == 2 and store.hget(key, "batch") == batch_id.encode())


@pytest.fixture(scope="module")
def store(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(scope="module")
def first(alice: requests.Session, api: ApiServer, s3: MotoS3) -> dict[str, Any]:
    """A batch of 14 documents, two of them bad, run to its end."""
    fill(s3, "set1/", 14, bad=(3, 9))
    batch_id = start(alice, api, "set1/")
    return ended(alice, api, batch_id)


def test_two_bad_documents_end_partial_with_a_complete_manifest(
        first: dict[str, Any], s3: MotoS3, store: redis.Redis) -> None:
    assert first["state"] == "PARTIAL", first
    docs = first["documents"]
    assert (docs["total"], docs["done"], docs["failed"], docs["running"]) == (14, 12, 2, 0)
    assert first["pages"] == {"done": 12, "failed": 0}
    lines = manifest(s3, "set1/")
    assert sorted(lines) == [f"doc-{i:03d}.png" for i in range(14)]
    for i, (name, line) in enumerate(sorted(lines.items())):
        assert line["source"] == f"s3://src/set1/{name}"
        assert line["source_version"]["etag"] and line["options_digest"]
        if i in (3, 9):
            assert line["status"] == "FAILURE" and line["error"], line
            assert line["outputs"] == []
            continue
        assert line["status"] == "SUCCESS" and line["error"] is None, line
        assert line["pages"] == 1 and line["engine"] == "fake" and line["seconds"] >= 0
        assert line["outputs"] == [f"s3://out/set1/{name}.txt"]
        text = s3.client().get_object(Bucket="out", Key=f"set1/{name}.txt")["Body"].read()
        assert text.decode().startswith(f"fake {40 + i}x{30 + i} "), text
    assert jobs_of(store, first["id"]) == 14
    assert not store.exists(f"ocr:batch:{first['id']}:flight")


def test_sent_again_reads_nothing_and_a_changed_object_alone_is_read(
        first: dict[str, Any], alice: requests.Session, api: ApiServer, s3: MotoS3,
        store: redis.Redis) -> None:
    again = ended(alice, api, start(alice, api, "set1/"))
    # the state is the collection's: the two that failed were skipped, and still failed
    assert again["documents"]["skipped"] == 14 and again["state"] == "PARTIAL", again
    assert again["documents"]["skipped_failed"] == 2
    assert jobs_of(store, again["id"]) == 0
    s3.client().put_object(Bucket="src", Key="set1/doc-005.png", Body=png(120, (99, 77)))
    changed = ended(alice, api, start(alice, api, "set1/"))
    docs = changed["documents"]
    assert (docs["done"], docs["skipped"]) == (1, 13), changed
    assert jobs_of(store, changed["id"]) == 1
    line = manifest(s3, "set1/")["doc-005.png"]
    assert line["job_id"] != "" and line["status"] == "SUCCESS"
    text = s3.client().get_object(Bucket="out", Key="set1/doc-005.png.txt")["Body"].read()
    assert text.startswith(b"fake 99x77 "), text


def test_retry_reads_the_failed_documents_only(first: dict[str, Any],
                                               alice: requests.Session, api: ApiServer,
                                               s3: MotoS3, store: redis.Redis) -> None:
    s3.client().put_object(Bucket="src", Key="set1/doc-003.png", Body=png(150, (43, 33)))
    before = jobs_of(store, first["id"])  # counted before the retry's first step sends
    answer = alice.post(f"{api.url}/v1/batches/{first['id']}/retry", timeout=30)
    assert answer.status_code == 202, answer.text
    retried = ended(alice, api, first["id"])
    assert retried["state"] == "PARTIAL", json.dumps([retried, manifest(s3, "set1/")])
    assert (retried["documents"]["done"], retried["documents"]["failed"]) == (13, 1)
    assert jobs_of(store, first["id"]) == before + 2
    lines = manifest(s3, "set1/")
    assert lines["doc-003.png"]["status"] == "SUCCESS"
    assert lines["doc-009.png"]["status"] == "FAILURE"
    assert len(lines) == 14


def test_another_client_cannot_see_a_batch(first: dict[str, Any], api: ApiServer,
                                           redis_url: str) -> None:
    bob = session(create_token(redis_url, "bob"))
    for answer in (bob.get(f"{api.url}/v1/batches/{first['id']}", timeout=30),
                   bob.post(f"{api.url}/v1/batches/{first['id']}/cancel", timeout=30)):
        assert answer.status_code == 404, answer.text


def test_a_source_outside_the_allowed_prefixes_is_refused(alice: requests.Session,
                                                          api: ApiServer) -> None:
    answer = alice.post(f"{api.url}/v1/batches", json={
        "source": "s3://elsewhere/x/", "result_url": "s3://out/x/"}, timeout=30)
    assert answer.status_code in (400, 403), answer.text


def test_cancel_stops_the_running_documents_and_starts_no_more(
        alice: requests.Session, api: ApiServer, s3: MotoS3, store: redis.Redis) -> None:
    fill(s3, "dark/", 12, shade=20)  # slow-on-dark: each page takes a minute
    batch_id = start(alice, api, "dark/", engine="slow-on-dark")
    eventually(lambda: info(alice, api, batch_id)["documents"]["running"] == WINDOW, 60,
               "the window filled")
    answer = alice.post(f"{api.url}/v1/batches/{batch_id}/cancel", timeout=30)
    assert answer.status_code == 200 and answer.json()["cancel_requested"], answer.text
    done = ended(alice, api, batch_id, timeout=60)
    assert done["state"] == "CANCELLED", done
    assert jobs_of(store, batch_id) == WINDOW
    assert done["documents"]["running"] == 0


def test_a_manifest_source_with_a_missing_object_and_the_end_webhook(
        alice: requests.Session, api: ApiServer, s3: MotoS3, receiver: CallbackReceiver) -> None:
    store = s3.client()
    for name, shade in (("a.png", 190), ("b.png", 180), ("c.png", 170)):
        store.put_object(Bucket="src", Key=f"listed/{name}", Body=png(shade, (33, 22)))
    entries = [json.dumps({"url": "s3://src/listed/a.png"}), "s3://src/listed/b.png", "",
               json.dumps({"url": "s3://src/listed/missing.png"}),
               json.dumps({"url": "s3://src/listed/c.png", "options": {"output": "json"}})]
    store.put_object(Bucket="src", Key="lists/m.jsonl", Body="\n".join(entries).encode())
    answer = alice.post(f"{api.url}/v1/batches", json={
        "source": "s3://src/lists/m.jsonl", "result_url": "s3://out/m/",
        "callback_url": f"http://127.0.0.1:{receiver.port}/done",
        "document_callbacks": True}, timeout=30)
    assert answer.status_code == 202, answer.text
    done = ended(alice, api, answer.json()["id"])
    assert done["state"] == "PARTIAL", done
    assert (done["documents"]["done"], done["documents"]["failed"]) == (3, 1), done
    lines = manifest(s3, "m/")
    assert lines["src/listed/missing.png"]["error"] == "input_not_found"
    assert lines["src/listed/c.png"]["outputs"] == ["s3://out/m/src/listed/c.png.json"]
    assert lines["src/listed/a.png"]["source_version"]["etag"]
    result = json.loads(store.get_object(Bucket="out", Key="m/src/listed/c.png.json")
                        ["Body"].read())
    assert result["text"].startswith("fake 33x22 mean=170"), result
    posted = eventually(lambda: [json.loads(body) for _, body in receiver.posts
                                 if json.loads(body).get("id") == done["id"]], 30,
                        "the end's webhook")
    assert posted[0]["status"] == "PARTIAL" and posted[0]["failed"] == 1, posted
    jobs = {line["job_id"] for line in lines.values() if line["job_id"]}
    assert len(jobs) == 3
    eventually(lambda: jobs <= {json.loads(body).get("id") for _, body in receiver.posts},
               30, "each document's job summary")
    events = alice.get(f"{api.url}/v1/batches/{done['id']}/events", timeout=30).text
    assert events.startswith("event: end\n") and '"state":"PARTIAL"' in events, events


def cli(redis_url: str, s3: MotoS3, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "submit.py", *words], cwd=ROOT, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT),
                               **BATCH_ENV, **s3.env()})


def test_the_local_folder_form_writes_outputs_and_a_manifest_and_resumes(
        worker: Worker, control: Worker, redis_url: str, s3: MotoS3,
        tmp_path: Path) -> None:
    source, target = tmp_path / "scans", tmp_path / "ocr"
    (source / "sub").mkdir(parents=True)
    for i in range(5):
        (source / ("sub" if i % 2 else "") / f"page-{i}.png").write_bytes(
            png(200, (50 + i, 40 + i)))
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + BAD)  # a PNG's first bytes
    done = cli(redis_url, s3, "batch", str(source), "--result-url", str(target), "--json",
               "--progress")
    assert done.returncode == 3, done.stderr  # PARTIAL
    summary = json.loads(done.stdout)
    assert summary["state"] == "PARTIAL" and summary["documents"]["done"] == 5, summary
    lines = [json.loads(line) for line in (target / "manifest.jsonl").read_text().splitlines()]
    assert [line["name"] for line in lines] == sorted(
        ["broken.png", "page-0.png", "page-2.png", "page-4.png", "sub/page-1.png",
         "sub/page-3.png"])
    for line in lines:
        if line["name"] == "broken.png":
            assert line["status"] == "FAILURE" and line["error"], line
            continue
        i = int(line["name"][-5])
        assert line["source_version"]["size"] > 0 and line["status"] == "SUCCESS", line
        text = (target / f"{line['name']}.txt").read_text()
        assert text.startswith(f"fake {50 + i}x{40 + i} "), text
    assert summary["id"] and f"batch {summary['id']}" in done.stderr  # --progress
    assert "5 done, 1 failed" in done.stderr and "pages/s" in done.stderr, done.stderr
    status = cli(redis_url, s3, "batch", "status", summary["id"], "--json")
    assert json.loads(status.stdout)["state"] == "PARTIAL", status.stdout
    again = cli(redis_url, s3, "batch", str(source), "--result-url", str(target), "--json")
    # the collection's state: nothing read again, and broken.png's failure remains
    assert again.returncode == 3, again.stderr
    shown = json.loads(again.stdout)
    assert shown["documents"]["skipped"] == 6 and shown["documents"]["skipped_failed"] == 1
    assert shown["state"] == "PARTIAL" and shown["id"] != summary["id"], shown
    # as text, into a pipe: progress on stderr; the summary names the failed file with
    # its code and how to read it again; --no-cache is taken and reads nothing skipped
    text = cli(redis_url, s3, "batch", str(source), "--result-url", str(target),
               "--no-cache")
    assert text.returncode == 3, text.stderr
    code = next(line["error"] for line in lines if line["name"] == "broken.png")
    assert f"\nbroken.png: FAILURE {code}\n" in text.stderr, text.stderr
    assert ("1 of the skipped had failed before; run again with --retry-failed"
            in text.stderr), text.stderr
    assert "skipped, 0 running of 6 documents" in text.stderr, text.stderr
    assert len(text.stdout.splitlines()) == 1  # the summary alone


def test_a_local_folders_batch_is_its_clients_in_the_api_and_the_console(
        worker: Worker, control: Worker, redis_url: str, s3: MotoS3, api: ApiServer,
        tmp_path: Path) -> None:
    """A batch belongs to its client whichever door sent it: submit.py's local folder too."""
    source, target = tmp_path / "scans", tmp_path / "ocr"
    source.mkdir()
    for i in range(2):
        (source / f"page-{i}.png").write_bytes(png(200, (60 + i, 40)))
    done = cli(redis_url, s3, "batch", str(source), "--result-url", str(target), "--json",
               "--client", "erin")
    assert done.returncode == 0, done.stderr
    batch_id = json.loads(done.stdout)["id"]
    token = create_token(redis_url, "erin")
    erin = session(token)
    shown = info(erin, api, batch_id)
    assert (shown["client"], shown["state"]) == ("erin", "SUCCESS"), shown
    console = requests.Session()  # the console, signed in with erin's token
    signed = console.post(f"{api.url}/console/signin", data={"token": token}, timeout=30,
                          headers={"Origin": api.url})  # as a browser posts the form
    assert signed.status_code == 200 and signed.url.endswith("/console/jobs"), signed.text
    page = console.get(f"{api.url}/console/batches/{batch_id}", timeout=30)
    assert page.status_code == 200 and batch_id in page.text, page.text
    frank = session(create_token(redis_url, "frank"))
    assert frank.get(f"{api.url}/v1/batches/{batch_id}", timeout=30).status_code == 404
    retried = erin.post(f"{api.url}/v1/batches/{batch_id}/retry", timeout=30)
    assert retried.status_code == 400, retried.text  # a local batch is retried where it runs


def test_the_command_line_starts_and_waits_for_an_s3_batch(
        worker: Worker, control: Worker, redis_url: str, s3: MotoS3) -> None:
    fill(s3, "cli/", 5)
    started = cli(redis_url, s3, "batch", "s3://src/cli/", "--result-url", "s3://out/cli/",
                  "--client", "carol", "--no-wait")
    assert started.returncode == 0, started.stderr
    batch_id = started.stdout.strip()
    waited = cli(redis_url, s3, "batch", "wait", batch_id, "--json", "--timeout", "120")
    assert waited.returncode == 0, waited.stderr
    shown = json.loads(waited.stdout)
    assert shown["state"] == "SUCCESS" and shown["documents"]["done"] == 5, shown
    assert len(manifest(s3, "cli/")) == 5
    status = cli(redis_url, s3, "batch", "status", batch_id)
    assert status.returncode == 0 and "SUCCESS" in status.stdout, status.stdout
    # without --no-wait, the command waits for the batch's end, as `submit.py FILE` does
    fill(s3, "cli-wait/", 3)
    waited = cli(redis_url, s3, "batch", "s3://src/cli-wait/", "--result-url",
                 "s3://out/cli-wait/", "--client", "carol", "--json")
    assert waited.returncode == 0, waited.stderr
    shown = json.loads(waited.stdout)
    assert shown["state"] == "SUCCESS" and shown["documents"]["done"] == 3, shown
    # as text: a failed document named with its code, from the batch's manifest
    fill(s3, "cli-bad/", 2, bad=(1,))
    partial = cli(redis_url, s3, "batch", "s3://src/cli-bad/", "--result-url",
                  "s3://out/cli-bad/")
    assert partial.returncode == 3, partial.stderr
    code = manifest(s3, "cli-bad/")["doc-001.png"]["error"]
    assert f"\ndoc-001.png: FAILURE {code}\n" in partial.stderr, partial.stderr
    assert len(partial.stdout.splitlines()) == 1  # the summary alone


# Short limits so that the killed worker's jobs come back within the test.
SHORTER = {"OCR_SOFT_TIME_LIMIT": "4", "OCR_HARD_TIME_LIMIT": "5",
           "OCR_PAGE_SOFT_TIME_LIMIT": "4", "OCR_PAGE_HARD_TIME_LIMIT": "5",
           "OCR_VISIBILITY_TIMEOUT": "7"}


def test_workers_killed_halfway_and_restarted_finish_the_batch(
        start_worker: Callable[..., Worker], worker: Worker, control: Worker,
        alice: requests.Session, api: ApiServer, s3: MotoS3, store: redis.Redis,
        tmp_path: Path) -> None:
    """Last in the module: it kills the module's workers (as when their host dies)."""
    count = 30
    fill(s3, "restart/", count)
    batch_id = start(alice, api, "restart/")
    eventually(lambda: info(alice, api, batch_id)["documents"]["done"] >= 6, 60,
               "a few documents done")
    worker.kill()
    control.kill()
    at_kill = info(alice, api, batch_id)
    assert at_kill["state"] == "RUNNING", at_kill
    env = worker_env(s3, tmp_path / "spool", **SHORTER)
    start_worker(**env)
    start_worker("control", **env)
    try:
        done = ended(alice, api, batch_id, timeout=120)
    except AssertionError:
        flight = store.hgetall(f"ocr:batch:{batch_id}:flight")
        states = {k: (store.get(b"celery-task-meta-" + k), store.hgetall(b"ocr:job:" + k))
                  for k in flight}
        raise AssertionError(f"{flight}\n{states}\nheld={list(held_items(store))}"
                             f"\nqueue={store.llen('ocr')}") from None
    assert done["state"] == "SUCCESS", done
    assert done["documents"]["done"] == count, done
    lines = manifest(s3, "restart/")
    assert len(lines) == count and all(line["status"] == "SUCCESS" for line in lines.values())
    for i in range(count):
        text = s3.client().get_object(Bucket="out", Key=f"restart/doc-{i:03d}.png.txt")
        assert text["Body"].read().startswith(f"fake {40 + i}x{30 + i} ".encode())
    sent = jobs_of(store, batch_id)
    assert count <= sent <= count + WINDOW, (sent, at_kill)
    print(f"{count} documents, {sent} jobs sent; at the kill: {at_kill['documents']}")
