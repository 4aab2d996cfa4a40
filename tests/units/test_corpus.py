"""The corpus the tests read: found through OCR_TEST_CORPUS, its tests skip without it.

Each test runs pytest on a module of corpus tests (tests/units/test_images.py: 11 read
the corpus, 3 do not) in a process of its own, with OCR_TEST_CORPUS naming a folder
that does not exist, as in a clone with no `../shared` beside it.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

from devkit.corpus import CORPUS
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
    assert 'docs/testing.md, "Gathering the corpus": where each file comes from' in \
        " ".join(summary), summary
    assert done.stdout.rstrip().splitlines()[-1].startswith("3 passed, 11 skipped"), \
        done.stdout[-1000:]


def test_under_ci_a_missing_corpus_fails_the_run(tmp_path: Path) -> None:
    done = run_pytest(OCR_TEST_CORPUS=str(tmp_path / "no-corpus"), CI="true")
    assert done.returncode == 1, done.stdout[-3000:]
    assert "CI=true runs every test; point OCR_TEST_CORPUS at the corpus" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("11 failed, 3 passed"), \
        done.stdout[-1000:]


def documented_sources() -> dict[str, str]:
    """docs/testing.md's corpus table: each file and its row."""
    text = (ROOT / "docs" / "testing.md").read_text()
    section = text[text.index("### Gathering the corpus"):]
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `([^`]+)` \|.*$", section, re.M)}


def test_docs_list_every_corpus_file_with_its_source_and_licence() -> None:
    """Every corpus file a test or benchmark names is in docs/testing.md's table.

    And, where the corpus is here, the table is its MANIFEST.tsv: the same source,
    path, commit and licence for each file.
    """
    table = documented_sources()
    named = {m.group(1) for folder in ("tests", "bench", "devkit")
             for path in (ROOT / folder).rglob("*.py")
             for m in re.finditer(r"[\"']((?:scan|dig|mixed|bad|edge|lang)_[\w.-]+?"
                                  r"\.(?:png|jpg|tif|tiff|pdf|gif))[\"']", path.read_text())}
    additions = {"scan_unlv_8071_093.tif", "scan_tess_eurotext.tif",
                 "dig_redp5110_sampled_18p.pdf"}  # named by the table's note
    assert named - additions <= set(table), sorted(named - additions - set(table))
    section = (ROOT / "docs" / "testing.md").read_text()
    assert all(name in section for name in additions)
    if not CORPUS.is_dir():
        return
    with (CORPUS / "MANIFEST.tsv").open() as manifest:
        rows = list(csv.DictReader(manifest, delimiter="\t"))
    assert {row["filename"] for row in rows} == set(table)
    for row in rows:
        shown = table[row["filename"]]
        assert row["license"] in shown, shown
        if row["commit"]:
            assert (f"https://raw.githubusercontent.com/{row['source_repo']}/{row['commit']}/"
                    f"{row['path_in_repo']})") in shown, shown
