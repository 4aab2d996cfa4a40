"""Whose job is this: the client in every view, each client's job list, and rough edges.

One real worker (a gated fake engine: a test can hold its pages), the Procfile's `api`,
`flower` and `metrics` processes, all on a real redis-server. A job sent with a token
names its client in its result, its status (API and `submit.py status`), its `ocr.job`
line, Flower's task page and the metrics; `GET /v1/jobs` lists only the caller's own
jobs, newest first, filtered by status and time and paged by a cursor; `submit.py jobs`
lists every client's for operators. Also: the first event of a PDF job never says
0 of 0, `no_cache` reads afresh, `| head` ends `submit.py` quietly, and a text layer's
page starts at its text.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tasks.client import OcrClient
from tasks.records.clients import login_client
from tests.api_server import FINAL, ApiServer, create_token, session, wait_end
from tests.harness import (
    FAKE_PLUGINS,
    FAST_PAGES,
    ROOT,
    ProcfileProcess,
    Worker,
    corpus,
    eventually,
    free_port,
)
from tests.image_fixtures import png
from tests.pdf_fixtures import image_pdf, plain_pages

FLOWER_AUTH = ("ops", "owners-test")


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The gated engine's folder: open (pages pass) unless a test closes it."""
    folder = tmp_path_factory.mktemp("gate")
    (folder / "open").touch()
    yield folder
    (folder / "open").touch()


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], gate: Path) -> Worker:
    return start_worker(OCR_ENGINE="gated", OCR_CONCURRENCY="1",
                        OCR_ENGINE_PLUGINS=f"{FAKE_PLUGINS},gated=tests.gated_engine:GatedEngine",
                        FAKE_GATE_DIR=str(gate), **FAST_PAGES)


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer], worker: Worker) -> ApiServer:
    return start_api()


def _process(name: str, log: Path, env: dict[str, str], ready: Callable[[], bool],
             drop: tuple[str, ...] = ()) -> ProcfileProcess:
    process = ProcfileProcess(name, log, env, drop=drop)
    process.spawn()
    process.wait_until(ready, 60, "answering")
    return process


def _answers(url: str, **kwargs: Any) -> bool:
    try:
        return requests.get(url, timeout=5, **kwargs).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture(scope="module")
def flower(worker: Worker, redis_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("flower")
    url = f"http://127.0.0.1:{free_port()}"
    process = _process("flower", folder / "flower.log", {
        "REDIS_URL": redis_url, "FLOWER_PORT": url.rsplit(":", 1)[1],
        "FLOWER_DB": str(folder / "flower.db"), "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)},
        lambda: _answers(f"{url}/api/workers", auth=FLOWER_AUTH), drop=("FLOWER_",))
    yield url
    process.stop()


@pytest.fixture(scope="module")
def metrics(worker: Worker, redis_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    process = _process("metrics", tmp_path_factory.mktemp("metrics") / "metrics.log", {
        "REDIS_URL": redis_url, "METRICS_PORT": url.split(":")[2].split("/")[0]},
        lambda: _answers(url))
    yield url
    process.stop()


@pytest.fixture(scope="module")
def alpha(api: ApiServer, redis_url: str) -> Iterator[requests.Session]:
    http = session(create_token(redis_url, "alpha"))
    yield http
    http.close()


@pytest.fixture(scope="module")
def beta(api: ApiServer, redis_url: str) -> Iterator[requests.Session]:
    http = session(create_token(redis_url, "beta"))
    yield http
    http.close()


def send(http: requests.Session, api: ApiServer, data: bytes, name: str,
         **fields: str) -> str:
    answer = http.post(f"{api.url}/v1/jobs", files={"file": (name, data)}, data=fields,
                       timeout=30)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def status(http: requests.Session, api: ApiServer, job_id: str) -> dict[str, Any]:
    answer = http.get(f"{api.url}/v1/jobs/{job_id}", timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def listing(http: requests.Session, api: ApiServer, **params: Any) -> dict[str, Any]:
    answer = http.get(f"{api.url}/v1/jobs", params=params, timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def submit_py(redis_url: str, *words: str, timeout: float = 120
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "submit.py", *words], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "REDIS_URL": redis_url,
                               "PYTHONPATH": str(ROOT)})


def test_a_job_names_its_client_everywhere(api: ApiServer, alpha: requests.Session,
                                           worker: Worker, flower: str, metrics: str,
                                           client: OcrClient, redis_url: str) -> None:
    job = send(alpha, api, png(180), "invoice-7.png")
    ended = wait_end(alpha, api, job)
    assert (ended["status"], ended["client"]) == ("SUCCESS", "alpha")
    result = alpha.get(f"{api.url}/v1/jobs/{job}/result?format=json", timeout=10).json()
    assert result["client"] == "alpha"
    shown = submit_py(redis_url, "status", "--json", job)
    assert json.loads(shown.stdout)["client"] == "alpha", shown.stderr
    assert "client alpha" in submit_py(redis_url, "status", job).stdout
    assert worker.job_records([job])[job]["client"] == "alpha"  # the ocr.job line

    # Flower's task page: the file's name and the client, in the task's arguments.
    def info() -> dict[str, Any] | None:
        answer = requests.get(f"{flower}/api/task/info/{job}", auth=FLOWER_AUTH, timeout=10)
        found = answer.json() if answer.status_code == 200 else {}
        return found if found.get("state") == "SUCCESS" else None

    kwargs = eventually(info, 30, "Flower to see the job")["kwargs"]
    assert kwargs.startswith("{'client': 'alpha', 'filename': 'invoice-7.png'"), kwargs

    # The metrics: by the token's name; any other name is `other`, none `anonymous`.
    other = client.submit(png(181), filename="other.png")  # the login name: no token's
    anonymous = client.app.send_task("ocr.document",
                                     kwargs={"blob": client._blobs.put(png(182))}).id
    client.wait([other, anonymous], timeout=90)
    worker.job_records([other, anonymous])

    def counted() -> dict[str, float] | None:
        text = requests.get(metrics, timeout=10).text
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "ocr_client_jobs_total" and \
                        sample.labels["outcome"] == "SUCCESS":
                    label = sample.labels["client"]
                    found[label] = found.get(label, 0.0) + sample.value
        return found if {"alpha", "other", "anonymous"} <= set(found) else None

    found = eventually(counted, 30, "the client counters")
    assert found["alpha"] >= 1 and found["other"] >= 1 and found["anonymous"] >= 1
    assert set(found) <= {"alpha", "beta", "other", "anonymous"}  # bounded by the tokens


def test_a_client_lists_its_own_jobs_newest_first(api: ApiServer, alpha: requests.Session,
                                                  beta: requests.Session, gate: Path,
                                                  redis_url: str) -> None:
    (gate / "open").unlink()  # hold the pages: one job runs, the next ones wait
    try:
        running = send(alpha, api, png(150), "held.png")
        eventually(lambda: status(alpha, api, running)["status"] == "RUNNING", 60,
                   "the held job to run")
        queued = send(alpha, api, png(151), "waiting.png")
        theirs = send(beta, api, png(152), "beta.png")
        page = listing(alpha, api)
        ids = [job["id"] for job in page["jobs"]]
        assert ids[:2] == [queued, running] and theirs not in ids, page
        by_id = {job["id"]: job for job in page["jobs"]}
        assert (by_id[queued]["status"], by_id[running]["status"]) == ("QUEUED", "RUNNING")
        assert {job["client"] for job in page["jobs"]} == {"alpha"}
        assert [j["id"] for j in listing(alpha, api, status="RUNNING")["jobs"]] == [running]
        assert [j["id"] for j in listing(beta, api)["jobs"]] == [theirs]
    finally:
        (gate / "open").touch()
    for job in (running, queued):
        wait_end(alpha, api, job)
    broken = send(alpha, api, corpus("bad_broken.png").read_bytes(), "broken.png")
    ended = wait_end(alpha, api, broken)
    assert ended["status"] == "FAILURE" and ended["error"]["code"]
    everything = listing(alpha, api, limit=100)["jobs"]
    created = [job["created"] for job in everything]
    assert created == sorted(created, reverse=True)  # newest first
    assert [j["id"] for j in listing(alpha, api, status="FAILURE")["jobs"]] == [broken]
    both = listing(alpha, api, status=["FAILURE", "QUEUED,RUNNING"])["jobs"]
    assert [j["id"] for j in both] == [broken]  # the others have ended
    # Time: since and until bound `created` (inclusive).
    since = listing(alpha, api, since=by_id[queued]["created"])["jobs"]
    assert [j["id"] for j in since] == [broken, queued]
    until = listing(alpha, api, until=by_id[running]["created"])["jobs"]
    assert running in [j["id"] for j in until] and queued not in [j["id"] for j in until]
    # The cursor walks every job once, a page at a time.
    walked: list[str] = []
    cursor = None
    while True:
        page = listing(alpha, api, limit=2, **({"cursor": cursor} if cursor else {}))
        walked += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["jobs"]) == 2
    assert walked == [job["id"] for job in everything]
    for params in ({"status": "DONE"}, {"cursor": "not-one"}, {"limit": 0}):
        answer = alpha.get(f"{api.url}/v1/jobs", params=params, timeout=10)
        assert answer.status_code in (400, 422), (params, answer.text)
        assert answer.json()["error"]["code"] == "bad_request"

    # The operators' list: every client's, the same filters.
    done = submit_py(redis_url, "jobs", "--json", "--limit", "1000")
    listed = json.loads(done.stdout)
    assert {theirs, running, broken} <= {job["id"] for job in listed["jobs"]}, done.stderr
    failed = json.loads(submit_py(redis_url, "jobs", "--json", "--status", "failure",
                                  "--client", "alpha").stdout)["jobs"]
    assert [(j["id"], j["client"], j["filename"]) for j in failed] == \
        [(broken, "alpha", "broken.png")]
    assert failed[0]["error"]["code"] == ended["error"]["code"]  # as the API shows it
    failed_line = submit_py(redis_url, "jobs", "--status", "failure", "--client", "alpha").stdout
    assert failed_line.rstrip("\n").endswith(f"{broken}\t{ended['error']['code']}"), failed_line
    only_beta = submit_py(redis_url, "jobs", "--client", "beta", "--since", "1h").stdout
    assert re.search(rf"SUCCESS +1/1  beta\tbeta\.png\t{theirs}$", only_beta, re.M), only_beta
    first = submit_py(redis_url, "jobs", "--client", "alpha", "--limit", "1")
    cursor = re.search(r"--cursor (\S+)", first.stderr)
    assert cursor and len(first.stdout.splitlines()) == 1, first.stderr
    second = submit_py(redis_url, "jobs", "--client", "alpha", "--limit", "1",
                       "--cursor", cursor.group(1)).stdout
    assert second.split("\t")[-1] != first.stdout.split("\t")[-1]
    assert submit_py(redis_url, "jobs", "--status", "DONE").returncode == 2


def test_a_token_named_as_a_submit_client_sees_its_jobs(api: ApiServer, redis_url: str,
                                                        tmp_path: Path) -> None:
    """README's order: submit.py first (as the login name), then the API or console.

    The token named as submit.py's client lists and reads its jobs; another token
    neither lists nor reads them, and a job sent as another client is not listed.
    """
    me = login_client()
    if not me:
        pytest.skip("this host user has no login name a client name can be")
    mine = session(create_token(redis_url, me))
    carol = session(create_token(redis_url, "carol"))
    image = tmp_path / "mine.png"
    image.write_bytes(png(160))
    sent = submit_py(redis_url, "--no-wait", str(image))
    assert sent.returncode == 0, sent.stderr
    job = sent.stdout.split("\t")[0]
    other = submit_py(redis_url, "--no-wait", "--client", "dave", str(image))
    assert other.returncode == 0, other.stderr
    theirs = other.stdout.split("\t")[0]
    listed = [j["id"] for j in listing(mine, api, limit=100)["jobs"]]
    assert job in listed and theirs not in listed, listed
    ended = wait_end(mine, api, job)
    assert (ended["client"], ended["filename"]) == (me, "mine.png")
    result = mine.get(f"{api.url}/v1/jobs/{job}/result?format=json", timeout=10)
    assert result.status_code == 200 and result.json()["client"] == me, result.text
    # Tenant isolation: carol sees none of them, nor dave's.
    assert listing(carol, api)["jobs"] == []
    for job_id in (job, theirs):
        assert carol.get(f"{api.url}/v1/jobs/{job_id}", timeout=10).status_code == 404
    assert mine.get(f"{api.url}/v1/jobs/{theirs}", timeout=10).status_code == 404
    hers = submit_py(redis_url, "--no-wait", "--client", "carol", str(image))
    assert [j["id"] for j in listing(carol, api)["jobs"]] == [hers.stdout.split("\t")[0]]
    listed = [j["id"] for j in listing(mine, api, limit=100)["jobs"]]
    assert job in listed and hers.stdout.split("\t")[0] not in listed, listed


def test_the_first_event_of_a_pdf_job_does_not_say_none_of_none(
        api: ApiServer, alpha: requests.Session, gate: Path) -> None:
    """Until its pages are planned a job's total is null, never 0 of 0."""
    (gate / "open").unlink()
    try:
        job = send(alpha, api, image_pdf(plain_pages(2)), "two.pdf", mode="ocr")
        seen: list[dict[str, Any]] = []
        with alpha.get(f"{api.url}/v1/jobs/{job}/events", stream=True,
                       timeout=120) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if len(seen) == 1:
                        (gate / "open").touch()
    finally:
        (gate / "open").touch()
    first = seen[0]
    assert first["progress"]["total"] in (None, 2), first
    assert all(event["progress"]["total"] != 0 for event in seen), seen
    assert seen[-1]["status"] == "SUCCESS" and seen[-1]["progress"] == {"done": 2, "total": 2}


def test_no_cache_reads_a_job_afresh(api: ApiServer, alpha: requests.Session,
                                     redis_url: str, tmp_path: Path) -> None:
    data = png(190)

    def result(job: str) -> dict[str, Any]:
        wait_end(alpha, api, job)
        return dict(alpha.get(f"{api.url}/v1/jobs/{job}/result?format=json",
                              timeout=10).json())

    assert result(send(alpha, api, data, "same.png"))["cached"] is False
    assert result(send(alpha, api, data, "same.png"))["cached"] is True
    assert result(send(alpha, api, data, "same.png", no_cache="true"))["cached"] is False
    path = tmp_path / "same.png"
    path.write_bytes(data)
    submit_py(redis_url, "--json", str(path))  # cached apart from the API client's
    again = submit_py(redis_url, "--json", str(path))
    assert json.loads(again.stdout)["cached"] is True, again.stderr
    fresh = submit_py(redis_url, "--json", "--no-cache", str(path))
    assert json.loads(fresh.stdout)["cached"] is False, fresh.stderr


def test_a_reader_that_stops_ends_submit_quietly(worker: Worker, redis_url: str,
                                                 client: OcrClient) -> None:
    """`submit.py --json wait ID | head -c 600`: no BrokenPipeError traceback."""
    job = client.submit(corpus("dig_tracemonkey_14p.pdf"))  # 14 text-layer pages, 150 KB
    client.wait([job], timeout=120)
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c",
         f"{sys.executable} submit.py --json wait {job} | head -c 600"],
        cwd=ROOT, capture_output=True, timeout=120,
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)})
    assert len(done.stdout) == 600 and done.stdout.startswith(b"{")
    assert b"Traceback" not in done.stderr and b"BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141  # as a shell reports a command SIGPIPE ended


def test_a_text_layer_page_starts_at_its_text(worker: Worker, client: OcrClient) -> None:
    """A born-digital two-column page's text starts at its text.

    Its word processor drew empty paragraphs as one space each: the text does not
    start with 28 lines of a space.
    """
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    for i in range(28):  # empty paragraphs above each column's text, one space each
        page.insert_text((60 + 260 * (i % 2), 60 + 12 * (i // 2)), " ", fontsize=10)
    for i in range(30):
        page.insert_text((60, 260 + 14 * i), f"Handbook chapter one, line {i + 1}.",
                         fontsize=9)
    for i in range(30):
        page.insert_text((320, 260 + 14 * i), f"Second column, line {i + 1}.", fontsize=9)
    data = doc.tobytes()
    doc.close()
    with pymupdf.open(stream=data) as check:  # what MuPDF extracts: the blank lines
        assert check[0].get_text().startswith(" \n \n")
    job = client.submit(data, filename="handbook.pdf")
    result = client.wait([job], timeout=90)[job]
    assert result["status"] == "SUCCESS" and result["pages"][0]["source"] == "text-layer"
    text = result["text"]
    assert text.startswith("Handbook chapter one, line 1."), text[:200]
    assert not re.search(r"^ +$", text, re.M) and "\n\n\n" not in text


def test_flower_shows_a_submitted_jobs_client(flower: str, client: OcrClient,
                                              redis_url: str) -> None:
    """A submit.py job names its owner too: --client, else the login name."""
    done = submit_py(redis_url, "--no-wait", "--client", "nightly-scan",
                     str(corpus("scan_tess_phototest.tif")))
    job = done.stdout.split("\t")[0]
    client.wait([job], timeout=90)

    def info() -> dict[str, Any] | None:
        answer = requests.get(f"{flower}/api/task/info/{job}", auth=FLOWER_AUTH, timeout=10)
        found = answer.json() if answer.status_code == 200 else {}
        return found if found.get("state") == "SUCCESS" else None

    kwargs = eventually(info, 30, "Flower to see the job")["kwargs"]
    assert kwargs.startswith("{'client': 'nightly-scan', 'filename': "
                             "'scan_tess_phototest.tif'"), kwargs


def test_flower_counts_each_ended_job_once(flower: str, client: OcrClient) -> None:
    """Flower's worker counters: one `task-failed` per failed job, one `task-succeeded`.

    The job's one exit sends its ending's event; Celery's own (on while Flower asks
    for events) must not add a second. Flower has turned the worker's events on once a
    job's `task-started` reaches it.
    """
    def info(job_id: str) -> dict[str, Any]:
        answer = requests.get(f"{flower}/api/task/info/{job_id}", auth=FLOWER_AUTH,
                              timeout=10)
        return dict(answer.json()) if answer.status_code == 200 else {}

    def ended(job_ids: list[str]) -> None:
        client.wait(job_ids, timeout=90)
        eventually(lambda: all(info(j).get("state") in FINAL for j in job_ids), 30,
                   "Flower to see the jobs end")

    def started_seen() -> bool:
        job_id = client.submit(png(190), filename="probe.png")
        ended([job_id])
        return bool(info(job_id).get("started"))

    eventually(started_seen, 60, "the worker's own task events, which Flower turns on")

    def counts() -> dict[str, int]:
        answer = requests.get(f"{flower}/workers", params={"json": 1}, auth=FLOWER_AUTH,
                              timeout=10)
        totals: dict[str, int] = {}
        for worker in answer.json()["data"]:
            for event in ("task-failed", "task-succeeded"):
                totals[event] = totals.get(event, 0) + int(worker.get(event, 0))
        return totals

    before = counts()
    failed = [client.submit(b"\x89PNG\r\n\x1a\nnot an image", filename=f"broken-{i}.png")
              for i in range(3)]
    succeeded = [client.submit(png(191 + i), filename=f"fine-{i}.png") for i in range(2)]
    ended(failed + succeeded)
    assert {info(j)["state"] for j in failed} == {"FAILURE"}
    last = client.submit(png(195), filename="last.png")  # its end comes after theirs
    ended([last])
    after = counts()
    assert after["task-failed"] - before["task-failed"] == len(failed), (before, after)
    assert after["task-succeeded"] - before["task-succeeded"] == len(succeeded) + 1, \
        (before, after)
