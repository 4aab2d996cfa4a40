"""Pages over the HTTP API: lines, page images, and corrections that stay corrected.

The Procfile's `api` process, real Redis and a real worker reading with tesseract (the
corpus's small phototest scan): the page's JSON (lines with boxes, confidences and
words), its image (the preview the worker kept: WebP, `Cache-Control: private`, a
smaller copy on `?width=`), another client's 404, a line corrected and carried by
every text output (`original=true` not), its versions, its revert, a later job of the
same document carrying it, and the corrected page as ground truth. A line keeps its
last few versions however often it is corrected, and corrections count against the
client's bytes quota.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable

import pymupdf
import pytest
import redis
import requests
from PIL import Image

from tasks.state.corrections import corrected_pages
from tests.api_server import ApiServer, create_token, session, wait_end
from tests.harness import ROOT, Worker, corpus

SCAN = "scan_tess_phototest.tif"
NEW_TEXT = "Zebras quietly juggle seventeen kumquats"


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_ENGINE="tesseract", OCR_CONCURRENCY="2")


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer], worker: Worker) -> ApiServer:
    return start_api()


@pytest.fixture(scope="module")
def alice(redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "alice"))


@pytest.fixture(scope="module")
def bob(redis_url: str) -> requests.Session:
    return session(create_token(redis_url, "bob"))


def read(http: requests.Session, api: ApiServer, **fields: str) -> str:
    """A job of the scan, waited for to its end; its id."""
    answer = http.post(f"{api.url}/v1/jobs", data={"lang": "eng", **fields}, files={
        "file": (SCAN, corpus(SCAN).read_bytes())}, timeout=30)
    assert answer.status_code == 202, answer.text
    job_id = str(answer.json()["id"])
    status = wait_end(http, api, job_id, 120)
    assert status["status"] == "SUCCESS", status
    return job_id


@pytest.fixture(scope="module")
def jobs(api: ApiServer, alice: requests.Session) -> dict[str, str]:
    """One job of the scan per output, the same document each time."""
    return {output: read(alice, api, output=output)
            for output in ("text", "markdown", "json", "hocr", "alto", "pdf")}


def page(http: requests.Session, api: ApiServer, job_id: str, number: int = 1
         ) -> requests.Response:
    return http.get(f"{api.url}/v1/jobs/{job_id}/pages/{number}", timeout=10)


def result(http: requests.Session, api: ApiServer, job_id: str, fmt: str,
           original: bool = False) -> str:
    answer = http.get(f"{api.url}/v1/jobs/{job_id}/result", params={
        "format": fmt, **({"original": "true"} if original else {})}, timeout=30)
    assert answer.status_code == 200, answer.text
    if fmt == "pdf":  # the searchable PDF's text layer
        with pymupdf.open(stream=answer.content, filetype="pdf") as doc:
            return "\n".join(page.get_text() for page in doc)
    return answer.text


def words(text: str) -> str:
    return " ".join(text.split())


def test_page_json_and_image(api: ApiServer, alice: requests.Session,
                             jobs: dict[str, str]) -> None:
    job_id = jobs["text"]
    shown = page(alice, api, job_id)
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["number"] == 1 and body["engine"] == "tesseract" and body["lang"] == "eng"
    width, height = body["image_size"]
    lines = body["lines"]
    assert len(lines) >= 4, lines
    assert [line["id"] for line in lines] == [f"p1-l{i}" for i in range(1, len(lines) + 1)]
    text = words(result(alice, api, job_id, "text"))
    for line in lines:
        x0, y0, x1, y1 = line["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, line
        assert 0.0 <= line["confidence"] <= 1.0, line
        assert line["words"] and " ".join(w["text"] for w in line["words"]) == line["text"]
        assert words(line["text"]) in text, (line["text"], text)
        assert "original" not in line and "corrected" not in line
    assert page(alice, api, job_id).json() == body  # the same ids and lines on every read

    image = alice.get(f"{api.url}/v1/jobs/{job_id}/pages/1/image", timeout=10)
    assert image.status_code == 200, image.text
    assert image.headers["content-type"] == "image/webp"
    assert image.headers["cache-control"] == "private"
    with Image.open(io.BytesIO(image.content)) as decoded:
        assert abs(decoded.width - width) <= 1 and abs(decoded.height - height) <= 1
    small = alice.get(f"{api.url}/v1/jobs/{job_id}/pages/1/image", params={"width": 200},
                      timeout=10)
    assert small.status_code == 200 and small.headers["cache-control"] == "private"
    with Image.open(io.BytesIO(small.content)) as decoded:
        assert decoded.width == 200 and abs(decoded.height - 200 * height / width) <= 1

    # A job answered from the result cache shows the pages the first job read.
    cached = read(alice, api)
    assert json.loads(result(alice, api, cached, "json"))["cached"] is True
    again = alice.get(f"{api.url}/v1/jobs/{cached}/pages/1/image", timeout=10)
    assert again.status_code == 200 and again.content == image.content


def test_other_clients_and_unknown_pages_are_not_found(
        api: ApiServer, alice: requests.Session, bob: requests.Session,
        jobs: dict[str, str]) -> None:
    job_id = jobs["text"]
    base = f"{api.url}/v1/jobs/{job_id}/pages"
    for answer in (bob.get(f"{base}/1", timeout=10), bob.get(f"{base}/1/image", timeout=10),
                   bob.put(f"{base}/1/lines/p1-l1", json={"text": "x"}, timeout=10),
                   bob.delete(f"{base}/1/lines/p1-l1", timeout=10),
                   alice.get(f"{base}/9", timeout=10),
                   alice.get(f"{base}/9/image", timeout=10),
                   alice.put(f"{base}/1/lines/p1-l999", json={"text": "x"}, timeout=10),
                   alice.get(f"{api.url}/v1/jobs/no-such-job/pages/1", timeout=10)):
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "not_found"
    bad = alice.put(f"{base}/1/lines/p1-l1", json={"text": "two\nlines"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"


def _contains(document: str, text: str, fmt: str) -> bool:
    """Whether an hOCR or ALTO document carries `text` as its words, in order."""
    if fmt == "alto":
        found = re.findall(r'CONTENT="([^"]*)"', document)
    else:
        found = re.findall(r"class=['\"]ocrx_word['\"][^>]*>([^<]*)<", document)
    return text in " ".join(found)


def test_a_correction_is_carried_by_every_output_and_kept_in_versions(
        api: ApiServer, alice: requests.Session, bob: requests.Session,
        jobs: dict[str, str], redis_url: str) -> None:
    job_id = jobs["text"]
    lines = page(alice, api, job_id).json()["lines"]
    target = max(lines, key=lambda line: len(line["text"]))  # a long line: unique text
    original = target["text"]
    url = f"{api.url}/v1/jobs/{job_id}/pages/1/lines/{target['id']}"
    first = alice.put(url, json={"text": "a first try"}, timeout=10)
    assert first.status_code == 200, first.text
    assert first.json()["corrected"]["version"] == 1
    answer = alice.put(url, json={"text": NEW_TEXT}, timeout=10)
    assert answer.status_code == 200, answer.text
    line = answer.json()
    assert line["text"] == NEW_TEXT and line["original"] == original
    assert line["corrected"]["by"] == "alice" and line["corrected"]["version"] == 2
    assert [(v["version"], v["text"], v["by"]) for v in line["versions"]] == [
        (1, "a first try", "alice"), (2, NEW_TEXT, "alice")]
    assert [w["text"] for w in line["words"]] == NEW_TEXT.split()

    shown = {each["id"]: each for each in page(alice, api, job_id).json()["lines"]}
    assert shown[target["id"]]["text"] == NEW_TEXT
    assert shown[target["id"]]["original"] == original
    assert all("corrected" not in each for key, each in shown.items() if key != target["id"])

    # Every output of every job of the document carries it; original=true does not.
    for output, other in jobs.items():
        for fmt in sorted({"text", "json", output}):
            corrected = result(alice, api, other, fmt)
            engine_own = result(alice, api, other, fmt, original=True)
            if fmt in ("hocr", "alto"):
                assert _contains(corrected, NEW_TEXT, fmt), (output, fmt)
                assert not _contains(corrected, original, fmt), (output, fmt)
                assert _contains(engine_own, original, fmt), (output, fmt)
                assert NEW_TEXT.split()[0] not in engine_own
                continue
            assert NEW_TEXT in corrected, (output, fmt)
            assert original not in words(corrected), (output, fmt)
            assert NEW_TEXT not in engine_own and original in words(engine_own)
            if fmt == "json":
                data = json.loads(corrected)
                assert NEW_TEXT in data["pages"][0]["text"]
                assert data["pages"][0]["corrected_lines"] == 1
    assert NEW_TEXT in result(alice, api, jobs["markdown"], "markdown")

    truth = corrected_pages(redis.Redis.from_url(redis_url), "alice")
    assert [(p.number, p.engine, p.corrected_lines) for p in truth] == [(1, "tesseract", 1)]
    assert NEW_TEXT in truth[0].text and original not in truth[0].text

    # A later job of the same document, read afresh, carries the correction.
    again = read(alice, api, output="json", no_cache="true")
    relined = {each["id"]: each for each in page(alice, api, again).json()["lines"]}
    carried = [each for each in relined.values() if "corrected" in each]
    assert [(each["text"], each["original"]) for each in carried] == [(NEW_TEXT, original)]

    # Another client's job of the same document: its own reading, not alice's work.
    others = read(bob, api)
    assert all("corrected" not in each for each in page(bob, api, others).json()["lines"])
    assert NEW_TEXT not in result(bob, api, others, "text")
    assert corrected_pages(redis.Redis.from_url(redis_url), "bob") == []

    # Reverted: the engine's text again, the history kept.
    reverted = alice.delete(url, timeout=10)
    assert reverted.status_code == 200, reverted.text
    line = reverted.json()
    assert line["text"] == original and "original" not in line and "corrected" not in line
    assert [(v["version"], v["text"]) for v in line["versions"]] == [
        (1, "a first try"), (2, NEW_TEXT), (3, None)]
    assert NEW_TEXT not in result(alice, api, job_id, "text")
    assert NEW_TEXT not in result(alice, api, again, "json")
    assert corrected_pages(redis.Redis.from_url(redis_url), "alice") == []


def test_eval_scores_engines_on_the_corrected_pages(
        api: ApiServer, alice: requests.Session, jobs: dict[str, str],
        redis_url: str) -> None:
    """`submit.py eval --corrected alice`: the corrected page is the ground truth.

    The engine's own reading misses the corrected line, so it scores above zero; the
    same engine reading the page's preview again is scored on the same truth.
    """
    job_id = jobs["text"]
    lines = page(alice, api, job_id).json()["lines"]
    target = max(lines, key=lambda line: len(line["text"]))
    url = f"{api.url}/v1/jobs/{job_id}/pages/1/lines/{target['id']}"
    assert alice.put(url, json={"text": NEW_TEXT}, timeout=10).status_code == 200
    try:
        done = subprocess.run(
            [sys.executable, "submit.py", "eval", "--corrected", "alice", "--engine",
             "tesseract", "--json"], cwd=ROOT, env={**os.environ, "REDIS_URL": redis_url},
            capture_output=True, text=True, timeout=300)
    finally:
        assert alice.delete(url, timeout=10).status_code == 200
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    *reads, summary = records
    assert [(r["document"], r["engine"]) for r in reads] == [
        (f"{SCAN} p1", "tesseract"), (f"{SCAN} p1", "tesseract")], reads
    chars = reads[0]["chars"]
    assert chars == reads[1]["chars"] > len(NEW_TEXT)
    # the corrected line is the only difference: its edits, not more
    assert 0 < reads[0]["cer"] * chars <= len(target["text"]) + len(NEW_TEXT)
    assert 0 < reads[1]["cer"] < 0.5
    assert summary["summary"]["tesseract"]["documents"] == 2

    unknown = subprocess.run(
        [sys.executable, "submit.py", "eval", "--corrected", "nobody", "--json"], cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url}, capture_output=True, text=True,
        timeout=120)
    assert unknown.returncode == 0, unknown.stderr
    assert [json.loads(line) for line in unknown.stdout.splitlines()] == [{"summary": {}}]


LONGEST = 10_000  # characters: the longest text a line takes
VERSIONS = 5  # OCR_CORRECTION_VERSIONS's default


def test_a_line_keeps_a_few_versions_and_a_put_answers_the_line(
        api: ApiServer, redis_url: str) -> None:
    """300 PUTs of the longest text to one line: its record stays small.

    The record keeps the last few versions, and each answer is the line with them,
    never the history of every PUT.
    """
    carol = session(create_token(redis_url, "carol"))
    job_id = read(carol, api)
    digest = json.loads(result(carol, api, job_id, "json"))["sha256"]
    target = page(carol, api, job_id).json()["lines"][0]
    url = f"{api.url}/v1/jobs/{job_id}/pages/1/lines/{target['id']}"
    for n in range(1, 301):
        text = f"{n:03d}" + "x" * (LONGEST - 3)
        answer = carol.put(url, json={"text": text}, timeout=30)
        assert answer.status_code == 200, answer.text
        # the line (its text, original and words) and its versions: no more
        assert len(answer.content) < (VERSIONS + 3) * LONGEST, (n, len(answer.content))
        line = answer.json()
        assert line["text"] == text and line["corrected"]["version"] == n
        assert [v["version"] for v in line["versions"]] == list(
            range(max(1, n - VERSIONS + 1), n + 1))
    kept = redis.Redis.from_url(redis_url).hgetall(f"ocr:corrections:carol:{digest}")
    assert len(kept) == 1 and len(next(iter(kept.values()))) < (VERSIONS + 1) * LONGEST
    shown = carol.get(url, timeout=10).json()
    assert shown["text"].startswith("300") and len(shown["versions"]) == VERSIONS
    truth = corrected_pages(redis.Redis.from_url(redis_url), "carol")
    assert [p.corrected_lines for p in truth] == [1] and "300x" in truth[0].text


def test_corrections_count_against_the_clients_bytes_quota(
        api: ApiServer, redis_url: str) -> None:
    """Corrections past a client's `--max-bytes` are refused: 429 `quota_exceeded`.

    The client (200,000 bytes) corrects lines until one is refused; nothing of that
    one is kept, and its uploads share the room left.
    """
    quota = 200_000  # the scan (38 KB) fits while its job runs
    dana = session(create_token(redis_url, "dana", "--max-bytes", str(quota)))
    job_id = read(dana, api)
    lines = page(dana, api, job_id).json()["lines"]
    assert len(lines) >= 4, lines  # 4 lines of 5 versions pass the quota
    base = f"{api.url}/v1/jobs/{job_id}/pages/1/lines"
    accepted: dict[str, str] = {}
    refused = None
    for n in range(1, 6 * len(lines)):
        line = lines[n % len(lines)]
        text = f"{n:03d}" + "y" * (LONGEST - 3)
        answer = dana.put(f"{base}/{line['id']}", json={"text": text}, timeout=30)
        if answer.status_code != 200:
            refused = (answer, line["id"])
            break
        accepted[line["id"]] = text
    assert refused is not None, "every correction was kept"
    answer, refused_line = refused
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "quota_exceeded"
    assert answer.headers["Retry-After"]
    engine_read = {each["id"]: each["text"] for each in lines}
    shown = {each["id"]: each for each in page(dana, api, job_id).json()["lines"]}
    assert shown[refused_line]["text"] == accepted.get(refused_line,
                                                       engine_read[refused_line])
    # The room left is less than the scan: its upload is refused as well.
    again = dana.post(f"{api.url}/v1/jobs", data={"lang": "eng"}, files={
        "file": (SCAN, corpus(SCAN).read_bytes())}, timeout=30)
    assert again.status_code == 429 and again.json()["error"]["code"] == "quota_exceeded"
