"""Every example of README.md, docs/cli.md, docs/http-api.md and docs/batches.md runs as written.

The service is the one `make run` starts: its recipe's command, `scripts/supervise.py`
with the real Procfile and no process named (so every Procfile process: redis, worker,
control, beat, flower, metrics, api, vlm-server, which idles without a model), no
REDIS_URL and no OCR_* setting (its defaults), in a checkout of its own: a fresh clone
of this tree, that is a copy of the files git tracks (uncommitted edits included; a
file git does not track is not there) with the venv linked, alone in a folder of its
own (no `../shared` beside it), so that the examples read only what a clone holds
(`samples/`), and `var/` (the project's own Redis, its var/redis-url) and every file
an example writes land there and not in this checkout. What differs from a plain
`make run` is set through the environment, as a user would: the three listening
processes take free ports (`API_PORT`, `FLOWER_PORT`, `METRICS_PORT`) instead of 8000,
5555 and 9808, which another service or test may hold, and the examples read the
API's from `API`. The recipe's prerequisites are not run: they install (pip,
traineddata), which the tests' own set-up has done.

An example is a fenced block: `sh` blocks are scripts, whose first line is `set -euo
pipefail`, run with `bash` from the checkout's root as pasted into a file (they stop
at the first step that fails by themselves); `console` blocks are transcripts, whose
`$ ` lines run there the same way (without -e: a transcript may show a failure) and
whose output is compared with the lines shown (`...` alone: any lines; a line ending
in `...`: that beginning). A block marked `<!-- not run: REASON -->` is not run and
says why; any other fenced block is not a shell example (a language that is not a
shell's, no `$ ` prompt). Each document's count of examples run is exact: an example
added, dropped or left unrun fails here until the count says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymupdf
import pytest
import requests

from tests.harness import ROOT, VENV_BIN, eventually, free_port

pytestmark = pytest.mark.slow
# The examples each document runs, by kind: exact.
RUN = {"README.md": {"console": 2}, "docs/cli.md": {"console": 2},
       "docs/http-api.md": {"sh": 2, "console": 1}, "docs/batches.md": {"sh": 1}}
SCRIPT_START = "set -euo pipefail\n"  # an `sh` example's first line
SHELLS = {"sh", "console", "bash", "shell", "zsh", "shell-session"}  # only sh and console
BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^\n]*?) -->\n)?```(?P<lang>[\w-]*)\n"
                   r"(?P<body>.*?)\n```", re.DOTALL)


@dataclass(frozen=True)
class Block:
    doc: str
    lang: str
    body: str
    why: str | None  # why it is not run; None: it runs

    @property
    def runs(self) -> bool:
        return self.lang in ("sh", "console") and self.why is None


def blocks(name: str) -> list[Block]:
    """The fenced blocks of a document, in order."""
    text = (ROOT / name).read_text()
    return [Block(name, m["lang"], m["body"], m["why"]) for m in BLOCK.finditer(text)]


def run_blocks(name: str, lang: str) -> list[str]:
    return [b.body for b in blocks(name) if b.runs and b.lang == lang]


def test_every_example_runs_or_says_why() -> None:
    for name, expected in RUN.items():
        found = blocks(name)
        for block in found:
            where = f"{name}: {block.body[:60]!r}"
            assert block.lang, f"{where}: a fenced block says its language"
            assert block.lang not in SHELLS or block.lang in ("sh", "console"), (
                f"{where}: shell examples are `sh` (a script) or `console` (a transcript)")
            if block.lang not in SHELLS:
                assert block.why is None, f"{where}: only an example is marked not run"
                assert not re.search(r"^\$ ", block.body, re.M), (
                    f"{where}: a transcript with `$ ` lines is a `console` block")
            assert block.why is None or block.why.strip(), f"{where}: say why it is not run"
            if block.runs and block.lang == "sh":
                assert block.body.startswith(SCRIPT_START), (
                    f"{where}: a script starts with `set -euo pipefail`: it stops at a failure")
            assert "../" not in block.body, f"{where}: an example reads only the clone's files"
        assert Counter(b.lang for b in found if b.runs) == Counter(expected), name


def transcript(body: str) -> tuple[str, list[str]]:
    """A `console` block's commands (its `$ ` lines) and the output lines it shows."""
    lines = body.splitlines()
    return ("\n".join(line[2:] for line in lines if line.startswith("$ ")),
            [line for line in lines if not line.startswith("$ ")])


def shows(expected: list[str], actual: list[str]) -> bool:
    """Whether `actual` is what a transcript shows: `...` lines and `...` ends elided."""
    # can[i][j]: expected[i:] matches actual[j:]
    can = [[False] * (len(actual) + 1) for _ in range(len(expected) + 1)]
    can[len(expected)][len(actual)] = True
    for i in range(len(expected) - 1, -1, -1):
        shown = expected[i]
        for j in range(len(actual), -1, -1):
            if shown == "...":
                can[i][j] = can[i + 1][j] or (j < len(actual) and can[i][j + 1])
            elif j < len(actual):
                same = (actual[j].startswith(shown[:-3]) if shown.endswith("...")
                        else actual[j] == shown)
                can[i][j] = same and can[i + 1][j + 1]
    return can[0][0]


def test_transcripts_compare_as_shown() -> None:
    assert transcript("$ a\nout\n$ b\n...") == ("a\nb", ["out", "..."])
    assert shows(["x", "...", "z"], ["x", "y", "y", "z"])
    assert shows(["x", "...", "z"], ["x", "z"]) and shows(["ab..."], ["abc"])
    assert not shows(["x", "z"], ["x", "y", "z"]) and not shows(["x", "..."], ["y"])
    assert not shows(["x"], ["x", "more"]) and not shows(["ab..."], ["a"])


class Service:
    """`make run` in a checkout of links: the Procfile under scripts/supervise.py."""

    def __init__(self, checkout: Path) -> None:
        self.checkout = checkout
        ports = {name: str(free_port()) for name in ("API_PORT", "FLOWER_PORT", "METRICS_PORT")}
        self.api = f"http://127.0.0.1:{ports['API_PORT']}"
        self.hook_port = free_port()  # the callback example's receiver
        self.log = checkout / "make-run.log"
        env = {k: v for k, v in os.environ.items() if k not in ("PDF", "LONG_PDF", "WORK")
               and not k.startswith(("OCR_", "REDIS_", "API_", "FLOWER_", "METRICS_"))}
        # As the callback example says to start it: its receiver's address allowed.
        env.update(PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}", **ports,
                   OCR_CALLBACK_ALLOWED_HOSTS=f"127.0.0.1:{self.hook_port}")
        self.env = env
        (checkout / "var").mkdir()  # the recipe's `mkdir -p var`
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "scripts/supervise.py"],
                cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return requests.get(f"{self.api}/readyz?queue=ocr", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def fresh_clone(checkout: Path) -> None:
    """The files git tracks, copied into `checkout` as they are now, and the venv linked."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, tracked):
        source = ROOT / name
        if source.exists() or source.is_symlink():  # a tracked file deleted here: not copied
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name, follow_symlinks=False)
    (checkout / ".venv").symlink_to((ROOT / ".venv").resolve())


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    checkout = tmp_path_factory.mktemp("user") / "checkout"
    checkout.mkdir()
    fresh_clone(checkout)
    assert list(checkout.parent.iterdir()) == [checkout]  # nothing beside it: no ../shared
    running = Service(checkout)
    try:
        eventually(running.ready, 180, lambda: "the service to be ready:\n"
                   + running.log.read_text()[-3000:])
        yield running
    finally:
        running.stop()


def run_block(service: Service, body: str, *flags: str, **extra: str
              ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in service.env.items()
           if not k.endswith("_PORT") and not k.startswith("OCR_")}
    env["API"] = service.api  # the examples' own override: API=${API:-http://127.0.0.1:8000}
    env["HOOK_PORT"] = str(service.hook_port)  # the callback example's: ${HOOK_PORT:-8765}
    env.update(extra)
    return subprocess.run(["bash", *flags, "-c", body], cwd=service.checkout, env=env,
                          capture_output=True, text=True, timeout=300)


def run_script(service: Service, body: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """An `sh` example as a script: `bash` alone, its own first line stops it at a failure."""
    done = run_block(service, body, **extra)
    assert done.returncode == 0, (body, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    return done


def run_transcript(service: Service, body: str) -> None:
    """A `console` example: its `$ ` lines run, their output (stderr too) as it shows."""
    commands, expected = transcript(body)
    done = run_block(service, "{\n" + commands + "\n} 2>&1", "-uo", "pipefail")
    assert "Traceback" not in done.stdout
    assert shows(expected, done.stdout.splitlines()), (body, done.stdout[-3000:])


def test_readme_examples_run_as_written(service: Service) -> None:
    before = left_behind(service)
    quick_start, *others = run_blocks("README.md", "console")
    # The quick start: the whole letter, and no warning (`--pages 1-2` for a PDF and a PNG).
    letter = (ROOT / "samples" / "letter.gt.txt").read_text().splitlines()
    assert quick_start.split("\n$ ")[0].splitlines()[1:] == [*letter[:2], "...", letter[-1]]
    for body in [quick_start, *others]:
        run_transcript(service, body)
    # `make run` said which Redis, in one line, and submit.py found it (var/redis-url).
    said = [line for line in service.log.read_text().splitlines() if "redis: the project's" in line]
    assert len(said) == 1, service.log.read_text()[-2000:]
    # and, once every process was up, one line said so with the three URLs.
    ready = [line for line in service.log.read_text().splitlines()
             if "ready: every process is up" in line]
    assert len(ready) == 1, service.log.read_text()[-2000:]
    assert f"API {service.api}/docs" in ready[0] and "Flower http://" in ready[0]
    assert "metrics http://" in ready[0] and ready[0].endswith("/metrics"), ready[0]
    assert left_behind(service) == before  # nothing written into the checkout


def test_command_line_examples_run_as_written(service: Service) -> None:
    """docs/cli.md: each file named on its lines, failures too; the jobs list after them."""
    before = left_behind(service)
    for body in run_blocks("docs/cli.md", "console"):
        run_transcript(service, body)
    assert left_behind(service) == before


def tokens(service: Service) -> set[str]:
    """The names of the API's clients, as an operator lists them."""
    done = run_script(service, ".venv/bin/python ocr_admin.py tokens list --json")
    return {json.loads(line)["name"] for line in done.stdout.splitlines() if line.strip()}


def left_behind(service: Service) -> tuple[set[str], str]:
    """What the checkout holds: its own entries, and `git status` of this repository."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    return {entry.name for entry in service.checkout.iterdir()}, status


def folder_of(done: subprocess.CompletedProcess[str], under: Path) -> Path:
    """The temporary folder an example named on its first line (`files in DIR`)."""
    first = done.stdout.splitlines()[0]
    assert first.startswith("files in "), done.stdout
    folder = Path(first.removeprefix("files in "))
    assert folder.is_dir() and folder.is_relative_to(under), (folder, under)
    return folder


def test_http_api_examples_run_as_written(service: Service,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """docs/http-api.md's examples, as written, leave nothing behind.

    With no WORK set: each example writes only under the temporary folder it names, and
    leaves no token behind; the cancel acts on a job still running.
    """
    before, before_tokens = left_behind(service), tokens(service)
    temp = tmp_path_factory.mktemp("tmp")  # TMPDIR: where mktemp makes their folders
    [made] = run_blocks("docs/http-api.md", "console")
    curl, callback = run_blocks("docs/http-api.md", "sh")
    run_transcript(service, made)
    done = run_script(service, curl, TMPDIR=str(temp))
    work = folder_of(done, temp)
    lines = done.stdout.splitlines()[1:]
    status = json.loads(lines[0])
    assert status["client"].startswith("docs-")  # the token's name: the job's client
    assert {k: status[k] for k in ("status", "progress", "error")} == {
        "status": "SUCCESS", "progress": {"done": 2, "total": 2}, "error": None}
    assert lines[1] == "SUCCESS report.pdf 2/2"  # the client's own job list
    assert lines[2] == "RUNNING"  # the cancel of a job that was running: 202, as asked
    cancelled = json.loads(lines[3])  # {"status": "CANCELLED", "pages": "3 of 10 kept"}
    assert cancelled["status"] == "CANCELLED", cancelled
    kept = re.fullmatch(r"(\d+) of 10 kept", cancelled["pages"])
    assert kept and 1 <= int(kept.group(1)) < 10, cancelled
    assert json.loads(lines[4]) == {"status": "ok"} and json.loads(lines[5])["ready"]
    assert len(lines) == 6, lines
    events = (work / "events.txt").read_text()
    assert events.rstrip().splitlines()[-2] == "event: end"
    report = (work / "report.txt").read_text()
    # pages=1-2: two pages, the text layer's and the scan's, read by tesseract
    assert report.count("\f") == 1, report
    assert "Annual Report" in report and "committee met on the first Tuesday" in report
    # pages=1-2 with output=pdf: the whole input (its text layer kept), as the doc says
    with pymupdf.open(work / "report.ocr.pdf") as pdf:
        assert pdf.page_count == 3
    done = run_script(service, callback, TMPDIR=str(temp))
    hooks = folder_of(done, temp)
    assert done.stdout.splitlines()[1:] == [
        "QUEUED", "SUCCESS", '{"status":"SUCCESS","filename":"letter.png","pages_done":1}']
    assert len((hooks / "callbacks.jsonl").read_text().splitlines()) == 1  # signature held
    # A receiver whose address the service does not allow: the refusal is shown, at once.
    refused = run_block(service, callback, TMPDIR=str(temp), HOOK_PORT=str(free_port()))
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert refused.stdout.splitlines()[1].startswith("refused: callback_not_allowed: "), \
        refused.stdout
    assert len(refused.stdout.splitlines()) == 2, refused.stdout  # and it stops there
    # Nothing left behind: no file outside their folders, no token.
    assert left_behind(service) == before
    assert tokens(service) == before_tokens


def test_a_failing_step_stops_the_walk_through(service: Service,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """The curl walk-through stops at its first failure, and says which, its token revoked.

    A PDF that is not there: curl's own error, the script's exit status is curl's (26:
    the file could not be read), nothing after it runs, and the token it made is gone.
    """
    before_tokens = tokens(service)
    temp = tmp_path_factory.mktemp("tmp")
    curl, _ = run_blocks("docs/http-api.md", "sh")
    done = run_block(service, curl, TMPDIR=str(temp), PDF="samples/missing.pdf")
    assert done.returncode == 26, (done.returncode, done.stdout, done.stderr)
    assert "curl: (26)" in done.stderr, done.stderr
    assert done.stdout.splitlines() == [f"files in {folder_of(done, temp)}"], done.stdout
    assert tokens(service) == before_tokens


def test_batches_examples_run_as_written(service: Service) -> None:
    """docs/batches.md's local folder: read once, every file skipped the second time."""
    [local] = run_blocks("docs/batches.md", "sh")
    done = run_script(service, local)
    lines = done.stdout.splitlines()
    first, again = (line.split("\t") for line in lines[:2])  # the second: `batch status ID`
    assert first[1] == "SUCCESS" and first[2].startswith("documents 2 done, 0 failed"), lines
    assert again[1] == "SUCCESS" and "0 done, 0 failed, 2 skipped" in again[2], lines
    assert again[0] != first[0], lines  # two batches, the second one's documents all skipped
    shown = [json.loads(line) for line in lines[2:]]  # `cat var/ocr/manifest.jsonl`
    ocr = service.checkout / "var" / "ocr"
    manifest = [json.loads(line) for line in (ocr / "manifest.jsonl").read_text().splitlines()]
    assert shown == manifest
    assert sorted((m["name"], m["status"]) for m in manifest) == [
        ("letter.png", "SUCCESS"), ("report.pdf", "SUCCESS")]
    assert {m["batch"] for m in manifest} == {first[0]}  # the lines the first run wrote
    assert all((service.checkout / out).is_file() for m in manifest for out in m["outputs"])
