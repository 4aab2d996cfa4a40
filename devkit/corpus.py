"""The real-world corpus the tests and benchmarks read, and what a test does without it.

The corpus (scans, PDFs and their ground truth, MANIFEST.tsv with each file's source and
licence) is kept beside the repository, not in it. OCR_TEST_CORPUS names its folder,
absolute or relative to the repository's root; ../shared/corpus by default. A test
reaches it through `corpus(name)`, `corpus_folder()` or `ground_truth(name)`: without
the folder the test skips with CORPUS_MISSING (tests/conftest.py counts those and
ends the run with `corpus_summary`), and under CI=true it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devkit.harness import ROOT

CORPUS_SETTING = "OCR_TEST_CORPUS"
CORPUS = Path(os.path.normpath(ROOT / (os.environ.get(CORPUS_SETTING) or "../shared/corpus")))
# The one reason a test skips without it.
CORPUS_MISSING = f"no corpus at {CORPUS} ({CORPUS_SETTING})"


def corpus_folder() -> Path:
    """The corpus' folder; without it the test skips (CORPUS_MISSING), or fails under CI=true.

    CI runs every test: there a missing corpus is a failure, never a skip.
    """
    if CORPUS.is_dir():
        return CORPUS
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CORPUS_MISSING}: CI=true runs every test; point {CORPUS_SETTING} "
                    "at the corpus")
    pytest.skip(CORPUS_MISSING)


def corpus(name: str) -> Path:
    """A file of the corpus (`corpus_folder`); one missing from a corpus fails the test."""
    path = corpus_folder() / name
    if not path.exists():
        pytest.fail(f"corpus file missing: {path}")
    return path


def corpus_addition(name: str, source: str) -> Path:
    """A file the corpus may not hold yet (`source`: where it comes from, its licence).

    Without it the test skips, also under CI=true, saying where to get it: the corpus
    is kept beside the repository, and this repository takes no copy of it.
    """
    path = corpus_folder() / name
    if not path.exists():
        pytest.skip(f"the corpus at {CORPUS} holds no {name} yet ({source})")
    return path


def ground_truth(name: str) -> str:
    """The text of corpus file `name`: its `.gt.txt`."""
    return corpus(name.rsplit(".", 1)[0] + ".gt.txt").read_text()


def corpus_summary(skipped: int) -> list[str]:
    """The run's last lines when `skipped` tests skipped for want of the corpus."""
    return [f"{skipped} tests skipped: {CORPUS_MISSING}.",
            f"They read the real-world corpus; to run them, point {CORPUS_SETTING} at its "
            "folder",
            f"(absolute, or relative to {ROOT}): {CORPUS_SETTING}=/path/to/corpus make test",
            "(docs/testing.md, \"Gathering the corpus\": where each file comes from). "
            "Under CI=true they fail instead."]
