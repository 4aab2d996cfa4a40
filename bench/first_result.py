"""The first result: from `git clone` to the first text of README's first example.

What a new user does: `git clone`, `make run`, and in another shell
`.venv/bin/python submit.py samples/letter.png`. Measured on this machine with an empty
pip cache (a PIP_CACHE_DIR of its own) and no pip configuration (PIP_CONFIG_FILE
/dev/null: the package index as a user has it), on free ports:

- clone: `git clone` of this checkout's HEAD (BENCH_FIRST_RESULT_REV: of that
  commit, for a before-and-after). It is a local clone; the network's share
  of a real one is the repository's pack, whose size is given.
- make run's steps, each from make's echo of its command to the next: the venv, pip's
  own upgrade, the requirements' install, the languages, then the start (the supervisor
  to its ready line).
- the first text: `submit.py samples/letter.png`, started at make run's ready line (as
  README says to), to its text on stdout.
- the download alone: `pip download -r requirements.txt` with another empty cache,
  after the run: how much of the install is the network's.

Goal: the first text within 45 s of the clone's start, on a quiet 2-core machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bench.common import BenchError, Context, Ratio, Report, Table
from devkit.harness import ROOT
from devkit.ports import free_port

GOAL_SECONDS = 45.0
README_EXAMPLE = ("samples/letter.png", "Riverside Community Library")
READY = "ready: every process is up"
# make's echo of a recipe's command -> the step it starts (the first match wins).
STEPS = (("-m venv", "venv"), ("pip install -q --upgrade pip", "pip upgrade"),
         ("-m pip install -q", "install"), ("scripts.install_langs", "languages"),
         ("scripts/supervise.py", "start"))
REVISION = "BENCH_FIRST_RESULT_REV"  # a commit to clone instead of HEAD
RUN_LIMIT = 1800.0  # seconds: a first run slower than this is a failure, not a figure


def user_env(home: Path) -> dict[str, str]:
    """A new user's environment: no venv, no Redis named, pip with nothing configured."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "OCR_", "REDIS_", "FLOWER_", "API_", "METRICS_"))
           and k not in ("VIRTUAL_ENV", "PYTHONPATH", "BROKER_URL")}
    here = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if p and Path(p).resolve() != Path(here).resolve())
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_CACHE_DIR": str(home / "pip-cache"),
                  "FLOWER_PORT": str(free_port()), "API_PORT": str(free_port()),
                  "METRICS_PORT": str(free_port())}


class Lines:
    """A process's output lines, each with the seconds since `start` it came at."""

    def __init__(self, stream: IO[str], start: float) -> None:
        self.lines: list[tuple[float, str]] = []
        self._start = start
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append((time.perf_counter() - self._start, line.rstrip("\n")))

    def first(self, text: str) -> float | None:
        return next((at for at, line in list(self.lines) if text in line), None)


def steps(lines: list[tuple[float, str]], clone_end: float,
          ready: float) -> list[tuple[str, float]]:
    """The steps of `make run`, each from its command's echo to the next step's."""
    marks = [(clone_end, "make (reads the Makefile, checks redis-server)")]
    for at, line in lines:
        step = next((name for needle, name in STEPS if needle in line), None)
        if step is not None and step not in [name for _, name in marks]:
            marks.append((at, step))
    marks.append((ready, "(ready)"))
    return [(name, round(end - at, 1)) for (at, name), (end, _) in zip(marks, marks[1:],
                                                                        strict=False)]


def run(ctx: Context) -> Report:
    if shutil.which("redis-server") is None:
        raise BenchError("redis-server is missing (make redis-server)")
    home = ctx.workdir
    env = user_env(home)
    clone = home / "clone"
    start = time.perf_counter()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=300)
    if os.environ.get(REVISION):  # an earlier tree, for a before-and-after
        subprocess.run(["git", "checkout", "-q", os.environ[REVISION]], cwd=clone, check=True)
    clone_end = time.perf_counter() - start
    make = subprocess.Popen(["make", "run"], cwd=clone, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert make.stdout is not None
    made = Lines(make.stdout, start)
    first_text = ready = None
    try:
        deadline = time.monotonic() + RUN_LIMIT
        while (ready := made.first(READY)) is None:
            if make.poll() is not None or time.monotonic() > deadline:
                raise BenchError("make run ended before it was ready: "
                                 + "\n".join(line for _, line in made.lines[-20:]))
            time.sleep(0.1)
        submit = subprocess.run([".venv/bin/python", "submit.py", README_EXAMPLE[0]],
                                cwd=clone, env=env, capture_output=True, text=True,
                                timeout=max(60.0, deadline - time.monotonic()))
        first_text = time.perf_counter() - start
        if submit.returncode != 0 or README_EXAMPLE[1] not in submit.stdout:
            raise BenchError(f"the first example failed ({submit.returncode}): "
                             f"{submit.stderr[-2000:]}")
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C, as the user stops it
            try:
                make.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait(10)
    venv_mb = sum(f.stat().st_size for f in (clone / ".venv").rglob("*")
                  if f.is_file() and not f.is_symlink()) / 2**20
    pack = subprocess.run(["git", "count-objects", "-v"], cwd=clone, capture_output=True,
                          text=True, check=True).stdout
    pack_mb = int(next(line.split()[1] for line in pack.splitlines()
                       if line.startswith("size-pack"))) / 1024
    download_start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-r", "requirements.txt",
                    "-d", str(home / "downloaded")], cwd=clone, check=True, timeout=1800,
                   env=env | {"PIP_CACHE_DIR": str(home / "pip-cache-2")})
    download = time.perf_counter() - download_start
    download_mb = sum(f.stat().st_size for f in (home / "downloaded").iterdir()) / 2**20
    breakdown = [("clone", round(clone_end, 1)), *steps(made.lines, clone_end, ready)]
    install = dict(breakdown).get("install", 0.0)
    rows: list[Sequence[Any]] = [list(step) for step in breakdown]
    table = Table("from git clone to the first text", ["step", "seconds"], rows + [
        ["first text (submit.py, after ready)", round(first_text - ready, 1)],
        ["total: clone to first text", round(first_text, 1)]])
    sizes = Table("what the first run fetches and installs", ["what", "value"], [
        ["repository pack (MB)", round(pack_mb, 1)],
        ["wheels downloaded (MB, pip download)", round(download_mb, 1)],
        ["download alone (s, empty cache)", round(download, 1)],
        ["install without its download (s, estimate)", round(install - download, 1)],
        [".venv (MB)", round(venv_mb, 1)]])
    load = os.getloadavg()[0]
    report = Report("first_result", tables=[table, sizes], ratios=[Ratio(
        "clone to first text (s)", first_text, f"<= {GOAL_SECONDS:g}",
        first_text <= GOAL_SECONDS, f"1-minute load {load:.1f} at the end")])
    report.data = {"breakdown": dict(breakdown), "first_text_s": round(first_text, 2),
                   "ready_s": round(ready, 2), "download_s": round(download, 2),
                   "download_mb": round(download_mb, 1), "venv_mb": round(venv_mb, 1),
                   "pack_mb": round(pack_mb, 2),
                   "make_output": [f"{at:7.1f} {line}" for at, line in made.lines]}
    return report
