"""`submit.py` as a new user meets it: help, names on every line, exit codes, errors.

A real worker (fake engines) on the tests' own redis-server; `submit.py` runs as a
subprocess, as a user runs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

import submit
from tasks.client import OcrClient
from tasks.errors import JobNotFound
from tasks.state.keys import JOBS_ALL_KEY
from tests.harness import (
    FAST_PAGES,
    ROOT,
    Worker,
    corpus,
    eventually,
    fake_env,
    free_port,
    make_client,
    sent_past_the_gate,
)
from tests.image_fixtures import png
from tests.pdf_fixtures import encrypted_pdf, image_pdf, plain_pages
from tests.queue.test_queue import submit_cli

ENGINES = ("fake", "flaky-on-dark")
BASE = fake_env(*ENGINES, **FAST_PAGES)


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**BASE)


# --- without a service -----------------------------------------------------------------

# What a client must not load: the worker's engines, image and PDF libraries, the hub.
HEAVY_MODULES = ("numpy", "PIL", "huggingface_hub", "fitz", "pymupdf", "tesserocr", "mlx",
                 "mlx_vlm", "tasks.pipeline", "tasks.engines", "tasks.models",
                 "tasks.queue.job_task", "tasks.queue.page_tasks", "tasks.queue.signals")


@pytest.mark.parametrize("construct", [
    "from tasks.client import OcrClient; OcrClient(Settings.from_env())",
    "import submit; from tasks.client import OcrClient; OcrClient(Settings.from_env())",
    "from tasks.api.app import create_api; create_api(Settings.from_env())",
])
def test_clients_load_no_engine_image_pdf_or_hub_module(construct: str) -> None:
    """Importing and constructing a client (Python, submit.py, the API) stays light."""
    code = ("import json, sys\nfrom tasks.settings import Settings\n" + construct + "\n"
            f"heavy = {HEAVY_MODULES!r}\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy "
            "or any(m == h or m.startswith(h + '.') for h in heavy))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_help_lists_every_command_with_an_example_and_the_exit_codes() -> None:
    done = subprocess.run([sys.executable, "submit.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for cmd in submit.COMMANDS.values():
        assert re.search(rf"^    {cmd.name}\s", done.stdout, re.M), cmd.name
        assert cmd.example in done.stdout
    for code in (0, 1, 2, 3, 4, 5, 6, 7):
        assert re.search(rf"^  {code}  \S", done.stdout, re.M), code
    assert {"submit", "wait", "status", "cancel", "retry", "models"} <= set(submit.COMMANDS)
    page = (ROOT / "docs" / "cli.md").read_text()
    assert all(line.strip() in page for line in submit.EXIT_HELP.splitlines()[1:])


@pytest.mark.parametrize(("words", "command", "json_", "rest"), [
    (["a.png", "b.pdf"], "submit", False, {"files": ["a.png", "b.pdf"]}),
    (["--json", "wait", "ID"], "wait", True, {"ids": ["ID"]}),
    (["wait", "--json", "ID"], "wait", True, {"ids": ["ID"]}),
    (["--timeout", "5", "--json", "--pages", "1", "a.pdf"], "submit", True,
     {"files": ["a.pdf"], "pages": "1", "timeout": 5.0}),
    (["--out=d", "a.png", "--json"], "submit", True, {"files": ["a.png"], "out": Path("d")}),
    (["--json", "cancel", "X", "Y"], "cancel", True, {"ids": ["X", "Y"]}),
])
def test_shared_options_before_or_after_the_command(words: list[str], command: str,
                                                    json_: bool, rest: dict[str, object]
                                                    ) -> None:
    args = submit.build_parser().parse_args(submit.with_default_command(words))
    assert args.command == command and args.json is json_
    assert {k: getattr(args, k) for k in rest} == rest


def test_usage_errors_exit_2_before_anything_is_sent() -> None:
    port = free_port()  # nothing listens: a usage error must not even try Redis
    for words in ([], ["--out", "d", "cancel", "X"], ["--output", "docx", "a.png"],
                  ["wait"], ["models", "--unload", "--prune"]):
        done = submit_cli(f"redis://127.0.0.1:{port}/0", *words)
        assert done.returncode == 2, (words, done.stderr)
        assert "Traceback" not in done.stderr


def test_a_folder_is_a_usage_error_that_names_batch(tmp_path: Path) -> None:
    """`submit.py DIR`: exit 2 with the command that reads a folder, Redis never asked."""
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "page.png").write_bytes(b"")
    for words in ([str(folder)], ["--json", str(folder / "page.png"), str(folder)]):
        done = submit_cli(f"redis://127.0.0.1:{free_port()}/0", *words)
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.splitlines()
        assert line == (f"submit.py: {folder}: a folder: use `submit.py batch {folder} "
                        "--result-url OUT/` (every image and PDF in it, each output into "
                        "OUT/); nothing was sent")


def test_a_mistyped_command_asks_did_you_mean(tmp_path: Path) -> None:
    """`submit.py stauts abc`: exit 2, "did you mean `status`", no file read or sent."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    for words, meant in ((["stauts", "abc"], "status"), (["--json", "wiat", "x"], "wait"),
                         (["bach", "in/"], "batch")):
        done = submit_cli(url, *words)
        assert done.returncode == 2, (words, done.stderr)
        [line] = done.stderr.splitlines()
        assert f"did you mean `{meant}`?" in line and "Traceback" not in line, line
    # a word that is a file is a file, however close to a command's name
    (tmp_path / "stauts").write_bytes(b"")
    done = subprocess.run([sys.executable, str(ROOT / "submit.py"), "stauts"], cwd=tmp_path,
                          env={**os.environ, "REDIS_URL": url}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 5 and "did you mean" not in done.stderr, done.stderr


def test_redis_unreachable_is_one_line_with_the_url_and_what_to_do() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    done = submit_cli(url, str(corpus("scan_linn.png")))
    assert done.returncode == 5
    [line] = done.stderr.splitlines()
    assert f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in line
    assert "make run" in line and "REDIS_URL" in line and "s3cret" not in line
    waited = submit_cli(url, "--json", "wait", "some-id")
    assert waited.returncode == 5 and len(waited.stderr.splitlines()) == 1


def test_exit_status_takes_the_most_severe_outcome() -> None:
    def status(*states: str) -> int:
        return submit.exit_status([{"status": s} for s in states])

    assert status("SUCCESS", "SUCCESS") == 0
    assert status("SUCCESS", "PARTIAL") == 3
    assert status("PARTIAL", "CANCELLED") == 4
    assert status("CANCELLED", "TIMEOUT") == 6
    assert status("TIMEOUT", "FAILURE", "PARTIAL") == 1
    assert status("FAILURE", "PENDING") == 5


def test_a_cancelled_jobs_line_says_what_it_kept_and_where() -> None:
    from tasks.cli.output import problem_lines

    result = {"id": "J", "filename": "a.pdf", "status": "CANCELLED",
              "pages": [{"number": 1}, {"number": 2}, {"number": 4}]}
    assert problem_lines(result, 14) == [
        "a.pdf: CANCELLED: 3 of 14 pages kept (pages 1-2,4; `submit.py --json wait J` "
        "prints them, `--out DIR` writes them)"]
    [line] = problem_lines(result, 14, Path("out"))
    assert line.endswith("(pages 1-2,4; written to out)")


def test_an_unknown_job_id_is_not_found_in_every_command(redis_url: str,
                                                         client: OcrClient) -> None:
    """A mistyped id is `not_found`, exit 7, never a queued job; the Python client raises."""
    unknown = "5b0c2a1e-0000-4000-8000-000000000000"
    store = redis.Redis.from_url(redis_url)
    before = door_keys(store)
    for words in (["status", unknown], ["--json", "status", unknown], ["wait", unknown],
                  ["cancel", unknown], ["retry", unknown]):
        done = submit_cli(redis_url, *words)
        assert done.returncode == 7, (words, done.stdout, done.stderr)
        [line] = done.stderr.splitlines()
        assert line.startswith("submit.py: not_found: ") and unknown in line, line
        assert done.stdout == ""
    assert door_keys(store) == before  # no cancel and no retry was sent
    for call in (client.status, client.retry, lambda job: client.cancel([job]),
                 lambda job: client.wait([job], timeout=30, must_exist=True)):
        with pytest.raises(JobNotFound) as raised:
            call(unknown)
        assert raised.value.code == "not_found" and unknown in raised.value.message


def cli_in(checkout: Path, *args: str) -> subprocess.Popen[str]:
    """`submit.py ARGS` run in `checkout` (as its own checkout), without REDIS_URL."""
    code = ("import sys; from pathlib import Path; import tasks.cli.core as core; "
            f"core.CHECKOUT = Path({str(checkout)!r}); import submit; "
            "sys.exit(submit.main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BROKER_URL")}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=checkout, text=True,
                            env={**env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_no_redis_named_is_never_a_guess(tmp_path: Path) -> None:
    """No REDIS_URL, no var/redis-url, no `make run` starting (its pid gone): exit 5."""
    (tmp_path / "var").mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "var" / "starting").write_text(f"{gone.pid}\n")  # a run that failed
    done = cli_in(tmp_path, "status", "some-id")
    _, err = done.communicate(timeout=120)
    assert done.returncode == 5, err
    [line] = err.splitlines()
    assert "no Redis named" in line and "make run" in line and "REDIS_URL" in line, line
    assert "6379" not in line and "starting" not in line


def test_a_starting_make_run_is_waited_for(tmp_path: Path, redis_url: str) -> None:
    """While `make run` starts (var/starting names a live pid) a command waits for it."""
    (tmp_path / "var").mkdir()
    make = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (tmp_path / "var" / "starting").write_text(f"{make.pid}\n")
        waiting = cli_in(tmp_path, "status", "5b0c2a1e-0000-4000-8000-000000000001")
        assert waiting.stderr is not None
        said = waiting.stderr.readline()
        assert f"`make run` (pid {make.pid}) is starting" in said, said
        assert waiting.poll() is None  # still waiting: nothing was sent anywhere
        (tmp_path / "var" / "redis-url").write_text(redis_url + "\n")
        (tmp_path / "var" / "starting").unlink()  # as the supervisor does once Redis is up
        _, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 7, err  # that Redis answered: no such job there
        assert "not_found" in err
    finally:
        make.kill()
        make.wait()


# --- with a worker ---------------------------------------------------------------------

def test_a_batch_with_bad_files_names_every_file(worker: Worker, redis_url: str,
                                                 tmp_path: Path) -> None:
    good, bad = corpus("scan_tess_phototest.tif"), corpus("bad_broken.png")
    missing = tmp_path / "not_there.png"
    done = submit_cli(redis_url, str(good), str(bad), str(missing))
    assert done.returncode == 1
    assert done.stdout.startswith("==> scan_tess_phototest.tif <==\nfake ")
    assert re.search(r"^bad_broken\.png: FAILURE corrupt_input: ", done.stderr, re.M)
    assert re.search(r"^not_there\.png: FAILURE input_not_found: ", done.stderr, re.M)
    as_json = submit_cli(redis_url, str(bad), str(good), "--json")
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["filename"], r["status"]) for r in records] == [
        ("bad_broken.png", "FAILURE"), ("scan_tess_phototest.tif", "SUCCESS")]


def test_no_wait_then_wait_with_options_before_the_command(worker: Worker,
                                                           redis_url: str) -> None:
    sent = submit_cli(redis_url, "--no-wait", str(corpus("scan_linn.png")))
    assert sent.returncode == 0
    job_id, name = sent.stdout.strip().split("\t")
    assert name == "scan_linn.png"
    for words in (["--json", "wait", job_id], ["wait", job_id, "--json"]):
        done = submit_cli(redis_url, *words)
        assert done.returncode == 0, done.stderr
        record = json.loads(done.stdout)
        assert (record["id"], record["filename"], record["status"]) == (
            job_id, "scan_linn.png", "SUCCESS")
    status = submit_cli(redis_url, "status", job_id)
    assert status.stdout.startswith("scan_linn.png: SUCCESS") and status.returncode == 0


def test_a_short_id_of_8_or_more_characters_finds_its_job(worker: Worker,
                                                           redis_url: str) -> None:
    """As git finds a commit: a unique prefix names its job; a shared one is refused."""
    sent = submit_cli(redis_url, "--no-wait", str(corpus("scan_linn.png")))
    job_id = sent.stdout.split("\t")[0]
    for short in (job_id[:8], job_id[:13]):
        done = submit_cli(redis_url, "--json", "wait", short)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["id"] == job_id
        done = submit_cli(redis_url, "status", short)
        assert done.returncode == 0 and f"(job {job_id}," in done.stdout, done.stderr
    store = redis.Redis.from_url(redis_url)
    twins = ["0abc1234-0000-4000-8000-000000000001", "0abc1234-0000-4000-8000-000000000002"]
    store.zadd(JOBS_ALL_KEY, dict.fromkeys(twins, time.time()))
    for words in (["status", "0abc1234"], ["wait", "0abc1234-0000"]):
        done = submit_cli(redis_url, *words)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert done.stderr.startswith("submit.py: ambiguous_id: ") and twins[0] in done.stderr
    done = submit_cli(redis_url, "status", "0abc1234-0000-4000-8000-000000000001"[:7])
    assert done.returncode == 7 and "not_found" in done.stderr  # under 8: never a prefix


def test_partial_result_exits_3_and_names_the_page(worker: Worker, redis_url: str,
                                                   tmp_path: Path) -> None:
    pdf = tmp_path / "three.pdf"
    pdf.write_bytes(image_pdf(plain_pages(3, dark=[2])))
    done = submit_cli(redis_url, "--engine", "flaky-on-dark", str(pdf))
    assert done.returncode == 3, done.stderr
    assert re.search(r"^three\.pdf: PARTIAL: page 2 failed: engine_failed: ", done.stderr,
                     re.M)


def scans_folder(base: Path) -> Path:
    """Scans as a real folder holds them: sidecar texts, notes, an encrypted PDF."""
    folder = base / "scans"
    (folder / "drafts").mkdir(parents=True)
    (folder / "p1.png").write_bytes(png(200, (50, 40)))
    (folder / "p1.gt.txt").write_text("the page's ground truth\n")
    (folder / "p2.pdf").write_bytes(image_pdf(plain_pages(2)))
    (folder / "p2.md").write_text("# notes\n")
    (folder / "README").write_text("scanned in 2024\n")
    (folder / "locked.pdf").write_bytes(encrypted_pdf(image_pdf(plain_pages(1)), "s3cret"))
    (folder / "drafts" / "d1.png").write_bytes(png(200, (60, 40)))
    return folder


def test_a_folders_batch_reads_its_images_and_pdfs_only(worker: Worker, redis_url: str,
                                                         tmp_path: Path) -> None:
    """Sidecar files are left out and said; globs choose; --password opens PDFs."""
    folder, out = scans_folder(tmp_path), tmp_path / "out"
    done = submit_cli(redis_url, "batch", str(folder), "--result-url", str(out), "--json")
    assert done.returncode == 3, done.stderr  # PARTIAL: locked.pdf is pdf_encrypted
    assert ("submit.py: left out 3 of 7 files: 3 no image or PDF (by their first bytes) "
            "(README, p1.gt.txt, p2.md)\n") in done.stderr, done.stderr
    shown = json.loads(done.stdout)
    assert shown["documents"]["total"] == 4 and shown["documents"]["failed"] == 1, shown
    assert shown["left_out"] == {"no_image_or_pdf": 3}
    lines = {line["name"]: line for line in map(
        json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert sorted(lines) == ["drafts/d1.png", "locked.pdf", "p1.png", "p2.pdf"]
    assert lines["locked.pdf"]["error"] == "pdf_encrypted"
    assert "unsupported_format" not in (out / "manifest.jsonl").read_text()
    # the password opens it; it is written nowhere
    again = submit_cli(redis_url, "batch", str(folder), "--result-url", str(out), "--json",
                       "--retry-failed", "--password", "s3cret")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["state"] == "SUCCESS"
    assert (out / "locked.pdf.txt").read_text().startswith("fake ")
    assert not [p for p in out.rglob("*") if p.is_file() and b"s3cret" in p.read_bytes()]
    # globs, matched on the path under the folder or the name, repeatable
    chosen = submit_cli(redis_url, "batch", str(folder), "--result-url",
                        str(tmp_path / "pngs"), "--json", "--include", "*.png",
                        "--include", "README", "--exclude", "drafts/*")
    assert chosen.returncode == 0, chosen.stderr
    summary = json.loads(chosen.stdout)
    assert summary["documents"]["total"] == 1, summary
    assert summary["left_out"] == {"not_included": 4, "excluded": 1, "no_image_or_pdf": 1}
    assert "1 matched --exclude (drafts/d1.png)" in chosen.stderr, chosen.stderr
    # a service batch takes none of these: usage error, nothing started
    remote = submit_cli(redis_url, "batch", "s3://scans/2024/", "--result-url",
                        "s3://ocr/2024/", "--exclude", "*.md", "--password", "x")
    assert remote.returncode == 2, remote.stderr
    assert "--exclude, --password: only for a local folder" in remote.stderr


def test_eval_takes_a_password(worker: Worker, redis_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "truth"
    folder.mkdir()
    (folder / "locked.pdf").write_bytes(encrypted_pdf(image_pdf(plain_pages(1)), "s3cret"))
    (folder / "locked.gt.txt").write_text("fake")
    locked = submit_cli(redis_url, "eval", str(folder), "--json")
    assert locked.returncode == 1 and "pdf_encrypted" in locked.stdout, locked.stdout
    opened = submit_cli(redis_url, "eval", str(folder), "--json", "--password", "s3cret")
    assert opened.returncode == 0, opened.stderr
    record = json.loads(opened.stdout.splitlines()[0])
    assert "error" not in record and record["chars"] == 4, record


def door_keys(store: redis.Redis) -> set[bytes]:
    """What a sent job leaves in Redis: inputs, job records, queues and their bindings."""
    return {k for pattern in ("ocr:blob:*", "ocr:job:*", "ocr-*", "_kombu.binding.ocr-*")
            for k in store.keys(pattern)}


def test_an_engine_no_worker_can_run_is_refused_at_the_door(worker: Worker,
                                                            redis_url: str) -> None:
    store = redis.Redis.from_url(redis_url)
    before = door_keys(store)
    done = submit_cli(redis_url, "--engine", "tesserakt", str(corpus("scan_linn.png")))
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert "unknown_engine" in line and "'tesserakt'" in line
    assert all(name in line for name in ("tesseract", "rapidocr", "mlx-vlm", "fake"))
    # a built-in engine no live worker runs: its make target, exit 5, nothing sent
    missing = submit_cli(redis_url, "--engine", "mlx-vlm", str(corpus("scan_linn.png")))
    assert missing.returncode == 5, missing.stderr
    assert "engine_unavailable" in missing.stderr and "make vlm" in missing.stderr
    bad = submit_cli(redis_url, "--pages", "3-1", str(corpus("scan_linn.png")))
    assert bad.returncode == 2 and "invalid_pages" in bad.stderr, bad.stderr
    assert door_keys(store) == before


def test_no_worker_on_the_queue_is_reported_not_waited_for(
        worker: Worker, redis_url: str, client: OcrClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a job on a queue no live worker consumes (sent past the door, as any Celery
    # client can): `wait` reports it instead of waiting at PENDING
    blob = client._blobs.put(corpus("scan_linn.png").read_bytes())
    job = sent_past_the_gate(client, {"blob": blob, "filename": "scan_linn.png",
                                      "engine": "nobody"})
    done = submit_cli(redis_url, "--json", "wait", job)
    assert done.returncode == 5, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "PENDING" and record["filename"] == "scan_linn.png"
    assert record["error"]["code"] == "no_worker"
    assert "'ocr-nobody'" in record["error"]["message"]
    text = submit_cli(redis_url, "wait", record["id"])
    assert text.returncode == 5
    assert re.search(r"^scan_linn\.png: no_worker: no live worker consumes queue "
                     r"'ocr-nobody' \(job \S+ stays queued\)$", text.stderr, re.M)
    assert "make run" in text.stderr.splitlines()[-1]
    status = submit_cli(redis_url, "--json", "status", job)
    assert json.loads(status.stdout)["error"]["code"] == "no_worker"
    assert status.returncode == 5  # as `wait` exits on it
    # the Python client says it too (after a grace of 1 s, not its default 6 s)
    monkeypatch.setattr(client, "no_worker_grace", 1.0)
    assert client.wait([job])[job]["error"]["code"] == "no_worker"
    # cancelled while queued: status (plain and --json, its `state` too) and `wait` say
    # CANCELLED (exit 4), never Celery's REVOKED
    cancel = submit_cli(redis_url, "cancel", record["id"])
    assert cancel.stdout.startswith(f"scan_linn.png: cancelled (job {job})"), cancel.stdout
    status = submit_cli(redis_url, "status", job)
    plain = status.stdout
    assert plain.startswith(f"scan_linn.png: CANCELLED (job {job}, "), plain
    assert status.returncode == 4, status.stderr  # as `wait` exits on it, below
    shown = json.loads(submit_cli(redis_url, "--json", "status", job).stdout)
    assert (shown["status"], shown["state"]) == ("CANCELLED", "CANCELLED"), shown
    waited = submit_cli(redis_url, "wait", record["id"])
    assert waited.returncode == 4, waited.stderr
    assert waited.stderr.strip() == "scan_linn.png: CANCELLED: no page had finished"
    assert client.status(job).state == "CANCELLED"  # the Python client's own word


def test_revoked_reads_as_the_jobs_real_ending_in_status_and_wait(
        worker: Worker, redis_url: str, client: OcrClient) -> None:
    """Celery says REVOKED both for a cancel and for a deadline that passed first.

    Its worker marks an expired message REVOKED before the job's one exit stores the
    ending, FAILURE `deadline_exceeded` (docs/tasks.md); a cancel marks the job's
    control hash before anything else. Between Celery's mark and the ending, `status`
    and `wait` both already say the ending the job gets. The jobs wait on a queue no
    worker consumes; the test makes Celery's mark itself, as its worker does.
    """
    sent = {}
    for name in ("late.png", "stopped.png"):
        blob = client._blobs.put(corpus("scan_linn.png").read_bytes())
        sent[name] = sent_past_the_gate(client, {"blob": blob, "filename": name,
                                                 "engine": "nobody"}, deadline=3600)
    client._control.cancel(sent["stopped.png"])  # what `ocr.cancel` does first
    for name, reason in (("late.png", "expired"), ("stopped.png", "cancelled")):
        client.app.backend.mark_as_revoked(sent[name], reason)
    expected = {"late.png": ("FAILURE", 1, "late.png: FAILURE deadline_exceeded: "),
                "stopped.png": ("CANCELLED", 4, "stopped.png: CANCELLED: no page had finished")}
    for name, (ending, code, line) in expected.items():
        job = sent[name]
        status = submit_cli(redis_url, "--json", "status", job)
        shown = json.loads(status.stdout)
        assert (shown["status"], shown["state"]) == (ending, ending), shown
        assert status.returncode == code, status.stderr  # as `wait` exits, below
        waited = submit_cli(redis_url, "--json", "wait", job)
        assert waited.returncode == code, waited.stderr
        assert json.loads(waited.stdout)["status"] == ending
        said = submit_cli(redis_url, "wait", job)
        assert said.returncode == code and said.stderr.startswith(line), said.stderr
    late = json.loads(submit_cli(redis_url, "--json", "wait", sent["late.png"]).stdout)
    assert late["error"]["code"] == "deadline_exceeded"


def test_a_worker_lost_while_waiting_is_reported(start_worker: Callable[..., Worker],
                                                 redis_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the shortest liveness window the settings allow (10 s; 30 s by default): a dead
    # worker drops out of the presence records that much sooner
    window = {"OCR_WORKER_LIVENESS_SECONDS": "10"}
    client = make_client(redis_url, **window)
    monkeypatch.setattr(client, "worker_recheck", 1.0)
    monkeypatch.setattr(client, "no_worker_grace", 2.0)
    solo = start_worker(**{**BASE, **window, "OCR_QUEUES": "ocr-solo",
                           "FAKE_PAGE_SECONDS": "60"})
    blob = client._blobs.put(corpus("scan_tess_phototest.tif").read_bytes())
    job = str(client.app.send_task("ocr.document", queue="ocr-solo",
                                   kwargs={"blob": blob, "filename": "solo.tif"}).id)
    client._control.remember(job, filename="solo.tif", queue="ocr-solo")
    assert solo.proc is not None
    threading.Timer(3.0, os.killpg, (solo.proc.pid, signal.SIGKILL)).start()
    # reported PENDING, not waited for until the timeout (TIMEOUT); the page takes 60 s
    try:
        result = submit.wait_for(client, [job], timeout=60)[job]
    finally:
        client.close()
    assert result["status"] == "PENDING" and result["filename"] == "solo.tif"
    assert result["error"]["code"] == "no_worker" and "'ocr-solo'" in result["error"]["message"]


def test_langs_lists_only_workers_that_read(worker: Worker, redis_url: str, client: OcrClient,
                                            start_worker: Callable[..., Worker]) -> None:
    start_worker("control", **BASE)  # node control@<host> (the Procfile's line)
    eventually(lambda: any(n.startswith("control@") for n in client.live_queues()), 30,
               "the control worker's presence")
    done = submit_cli(redis_url, "langs")
    assert done.returncode == 0, done.stderr
    nodes = [line.split("\t")[0] for line in done.stdout.splitlines()]
    assert any(n.startswith(worker.name) for n in nodes), done.stdout
    assert not any(n.startswith("control@") for n in nodes), (done.stdout, client.live_queues())


# --- the Node client: the same help, names and errors ----------------------------------

def node_client(*args: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js client is not run")
    return subprocess.run([node, str(ROOT / "clients" / "node" / "ocr_client.js"), *args],
                          capture_output=True, text=True, timeout=120)


def test_node_client_help_names_and_redis_error(worker: Worker, redis_url: str,
                                                tmp_path: Path) -> None:
    helped = node_client("--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: ")
    for option in ("--redis", "--engine", "--pages", "--no-wait", "exit status"):
        assert option in helped.stdout
    good, bad = corpus("scan_tess_phototest.tif"), corpus("bad_broken.png")
    done = node_client("--redis", redis_url, str(good), str(bad), str(tmp_path / "gone.png"))
    assert done.returncode == 1, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["filename"], r["status"]) for r in records] == [
        ("scan_tess_phototest.tif", "SUCCESS"), ("bad_broken.png", "FAILURE"),
        ("gone.png", "FAILURE")]
    assert done.stderr.splitlines() == [
        f"bad_broken.png: FAILURE corrupt_input: {records[1]['error']['message']}",
        "gone.png: FAILURE input_not_found: cannot read gone.png"]
    port = free_port()
    down = node_client("--redis", f"redis://:s3cret@127.0.0.1:{port}/0", str(good))
    assert down.returncode == 5
    [line] = down.stderr.splitlines()
    assert f"redis://:***@127.0.0.1:{port}/0" in line and "make run" in line
    assert "s3cret" not in line


# --- the lean install: the service without the VLM packages -----------------------------

LEAN_PROBE = """
import sys
sys.modules["mlx"] = sys.modules["mlx_vlm"] = None  # as if not installed
from tasks.engines.vlm.mlx_vlm_engine import MlxVlmEngine
from tasks.errors import EngineUnavailable
from tasks.settings import Settings
settings = Settings.from_env({"OCR_MODEL_DIR": sys.argv[1], "OCR_MODEL": "m"})
try:
    MlxVlmEngine.load(settings)
except EngineUnavailable as exc:
    print(exc)
import tasks.client, tasks.queue.app, tasks.engines.tesseract, tasks.pipeline.pdf  # no VLM
"""


def test_without_the_vlm_packages_the_vlm_engine_says_how_to_install(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    done = subprocess.run([sys.executable, "-c", LEAN_PROBE, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.match(r"engine_unavailable: the VLM engine's packages are not installed "
                    r"\(mlx\S* is missing\): run `make vlm`", done.stdout)


def test_requirements_split_service_and_vlm() -> None:
    service = (ROOT / "requirements.txt").read_text()
    vlm = (ROOT / "requirements-vlm.txt").read_text()
    assert "mlx" not in re.sub(r"#.*", "", service)
    assert "requirements-vlm.txt" in service  # named and explained where readers look
    assert re.search(r"^-r requirements\.txt$", vlm, re.M)
    assert re.search(r"^mlx-vlm==", vlm, re.M)
    assert re.search(r"^-r requirements-vlm\.txt$", (ROOT / "requirements-dev.txt")
                     .read_text(), re.M)  # make test installs everything


def test_make_help_lists_the_targets_a_user_runs_one_line_each() -> None:
    # Under `make test` this make is a sub-make, which prints "Entering directory".
    done = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    targets = [re.match(r"make ([\w-]+) +\S", line).group(1)  # type: ignore[union-attr]
               for line in lines]
    assert targets[:2] == ["run", "test"] and len(set(targets)) == len(lines) >= 10
    rules = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    assert set(targets) <= rules, set(targets) - rules
    assert all(len(line) <= 88 for line in lines)


@pytest.mark.parametrize(("env", "rapidocr"), [
    ({}, False), ({"OCR_LANGS": "eng deu"}, False), ({"OCR_LANGS": "eng chi_sim"}, True),
    ({"OCR_LANGS": "eng+chi_sim"}, True), ({"OCR_ENGINE": "rapidocr"}, True)])
def test_make_run_installs_the_rapidocr_engine_when_chinese_is_asked(
        env: dict[str, str], rapidocr: bool) -> None:
    """The first run installs no rapidocr (217 MiB) and no newer pip; Chinese asks for it.

    The default routing reads chi_sim with rapidocr where it is installed, with
    tesseract's chi_sim elsewhere (docs/languages.md).
    """
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OCR_MODEL", "OCR_ENGINE", "OCR_LANG_ENGINES", "OCR_LANGS")}
    done = subprocess.run(["make", "-n", "-B", "run"], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert ("-r requirements-rapidocr.txt" in done.stdout) is rapidocr
    assert "-r requirements.txt" in done.stdout
    assert "--upgrade pip" not in done.stdout  # the venv's own pip installs the first run
    assert "pip install -q --no-compile --disable-pip-version-check -r requirements.txt" \
        in done.stdout  # bytecode as it is imported; no question about pip's releases


@pytest.mark.parametrize(("target", "env", "vlm"), [
    ("run", {}, False), ("run", {"OCR_MODEL": "Qwen2-VL-2B-Instruct-4bit"}, True),
    ("run", {"OCR_ENGINE": "mlx-vlm"}, True), ("vlm", {}, True), ("test", {}, True)])
def test_make_installs_the_vlm_packages_only_when_needed(target: str, env: dict[str, str],
                                                        vlm: bool) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in ("OCR_MODEL", "OCR_ENGINE")}
    done = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert ("-r requirements-vlm.txt" in done.stdout) is vlm
    assert "-r requirements.txt" in done.stdout
