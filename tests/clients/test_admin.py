"""The operator's commands (ocr_admin.py) apart from the user's, with submit.py's words.

`ocr_admin.py tokens ...` and `submit.py tokens ...` are one code path against a real
Redis; both command lines give the same exit statuses. `accuracy` with no history
says how to make one; `models --unload` says the control worker has no engine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable

import ocr_admin
import submit
from tests.harness import FAST_PAGES, ROOT, Worker, fake_env


def run(redis_url: str, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *words], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "REDIS_URL": redis_url})


def test_tokens_through_either_command_line(redis_url: str) -> None:
    made = run(redis_url, "ocr_admin.py", "tokens", "create", "admin-a", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["token"].startswith("ocr_")
    listed = run(redis_url, "submit.py", "tokens", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "admin-a" in {json.loads(line)["name"] for line in listed.stdout.splitlines()}
    changed = run(redis_url, "submit.py", "--redis-url", redis_url, "tokens", "set", "admin-a",
                  "--jobs-in-flight", "3", "--json")
    assert json.loads(changed.stdout)["jobs_in_flight"] == 3, changed.stderr
    assert run(redis_url, "ocr_admin.py", "tokens", "revoke", "admin-a").returncode == 0
    assert run(redis_url, "ocr_admin.py", "tokens", "revoke", "admin-a").returncode == 1


def test_models_is_the_operators_and_submit_py_keeps_its_word() -> None:
    assert submit.COMMANDS["models"].arguments is ocr_admin.models_arguments
    assert submit.COMMANDS["tokens"].arguments is ocr_admin.build_tokens_parser
    assert "models" in ocr_admin.build_parser().format_help()
    for name in ("EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_UNREACHABLE"):
        assert getattr(ocr_admin, name) == getattr(submit, name)


def test_tokens_help_says_zero_is_no_limit() -> None:
    """`--jobs-in-flight 0` means no limit, and the help says so (not "none")."""
    for words in (["tokens", "create", "--help"], ["tokens", "set", "--help"]):
        done = subprocess.run([sys.executable, "ocr_admin.py", *words], cwd=ROOT, text=True,
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        text = " ".join(done.stdout.split())  # argparse wraps the help
        assert "0: no limit" in text and "0: none" not in text, text


def test_accuracy_without_history_says_how_to_make_one(redis_url: str) -> None:
    for env, then in (({}, "set OCR_GOLDEN_SET to a folder of documents with ground truth"),
                      ({"OCR_GOLDEN_SET": "/srv/golden"},
                       "`ocr_admin.py accuracy --run` scores OCR_GOLDEN_SET now")):
        done = subprocess.run([sys.executable, "ocr_admin.py", "accuracy"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "REDIS_URL": redis_url, **env})
        assert done.returncode == 0 and done.stdout == "", done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith("ocr_admin.py: no golden-set runs recorded yet: ") and \
            then in line, line


def node(worker: Worker) -> str:
    """The worker's node name, as its `ready.` line gives it."""
    found = re.search(r"(\S+@\S+) ready\.", worker.log())
    assert found, worker.log()[-2000:]
    return found.group(1)


def test_unload_says_the_control_worker_has_no_engine(
        start_worker: Callable[..., Worker], redis_url: str) -> None:
    ocr = start_worker(**fake_env(**FAST_PAGES))
    control = start_worker("control", **fake_env(**FAST_PAGES))
    for prog in ("ocr_admin.py", "submit.py"):
        done = run(redis_url, prog, "models", "--unload")
        assert done.returncode == 0, done.stderr
        lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
        assert lines[node(control)] == "no engine (control)", done.stdout
        assert lines[node(ocr)].startswith("release requested in "), done.stdout
        assert "error" not in done.stdout
