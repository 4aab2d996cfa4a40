"""The operator's commands (ocr_admin.py) apart from the user's, with submit.py's words.

`ocr_admin.py tokens ...` and `submit.py tokens ...` are one code path against a real
Redis; both command lines give the same exit statuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ocr_admin
import submit
from tests.harness import ROOT


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
