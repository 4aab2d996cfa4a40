"""The corpus the tests read: found through OCR_TEST_CORPUS, its tests skip without it.

Each test runs pytest on a module of corpus tests (tests/units/test_images.py: 11 read
the corpus, 2 do not) in a process of its own, with OCR_TEST_CORPUS naming a folder
that does not exist, as in a clone with no `../shared` beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT

MODULE = "tests/units/test_images.py"


def run_pytest(**env: str) -> subprocess.CompletedProcess[str]:
    kept = {k: v for k, v in os.environ.items()
            if k not in ("CI", "OCR_TEST_CORPUS", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:xdist", MODULE], cwd=ROOT, env={**kept, **env},
                          capture_output=True, text=True, timeout=300)


def test_without_the_corpus_its_tests_skip_and_the_run_says_so(tmp_path: Path) -> None:
    """The run passes; its last lines count the skipped tests and say how to run them.

    OCR_TEST_CORPUS is relative to the repository's root.
    """
    absent = tmp_path / "no-corpus"
    done = run_pytest(OCR_TEST_CORPUS=os.path.relpath(absent, ROOT))
    assert done.returncode == 0, done.stdout[-3000:]
    reason = f"no corpus at {absent} (OCR_TEST_CORPUS)"
    summary = done.stdout[done.stdout.index("= the corpus ="):].splitlines()
    assert summary[1] == f"11 tests skipped: {reason}.", summary
    assert "OCR_TEST_CORPUS=/path/to/corpus make test" in summary[3], summary
    assert done.stdout.rstrip().splitlines()[-1].startswith("2 passed, 11 skipped"), \
        done.stdout[-1000:]


def test_under_ci_a_missing_corpus_fails_the_run(tmp_path: Path) -> None:
    done = run_pytest(OCR_TEST_CORPUS=str(tmp_path / "no-corpus"), CI="true")
    assert done.returncode == 1, done.stdout[-3000:]
    assert "CI=true runs every test; point OCR_TEST_CORPUS at the corpus" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("11 failed, 2 passed"), \
        done.stdout[-1000:]
