"""The test harness itself (devkit/harness.py): `eventually()`, and who imports it.

Pure: no process is started.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.harness import ROOT, eventually
from tests.start_ups import LONGEST_FIRST, cpu_line, cpu_sample, group_rank


def test_eventually_returns_the_first_true_value() -> None:
    answers = iter([None, 0, "", {"done": 1}])
    assert eventually(lambda: next(answers), 5, "an answer", interval=0) == {"done": 1}


def test_eventually_names_what_never_came() -> None:
    told: list[str] = []

    def what() -> str:
        told.append("asked")
        return "the job's end (log tail)"

    with pytest.raises(AssertionError, match=r"not within 0\.05 s: the job's end"):
        eventually(lambda: False, 0.05, what, interval=0.01)
    assert told == ["asked"]  # the text is made once, when the wait fails


def test_eventually_stops_at_the_predicates_own_error() -> None:
    calls = []

    def exited() -> bool:
        calls.append(1)
        raise RuntimeError("worker exited early")

    with pytest.raises(RuntimeError, match="exited early"):
        eventually(exited, 60, "ready")
    assert len(calls) == 1


def test_benchmarks_import_the_harness_not_conftest() -> None:
    """bench/ and the tests' helpers import tests.harness; conftest holds fixtures.

    And the hooks of the time summary, nothing else.
    """
    importers = [p for p in [*(ROOT / "bench").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
                 if re.search(r"^\s*(from|import) tests\.conftest\b",
                              p.read_text(encoding="utf-8"), re.M)]
    assert importers == []
    lines = (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8").splitlines()
    defined = [i for i, line in enumerate(lines) if re.match(r"(class|def) ", line)]
    assert defined
    assert all(lines[i - 1].startswith("@pytest.fixture") or
               lines[i].startswith("def pytest_") for i in defined)  # fixtures and hooks


def test_benchmarks_and_the_kit_import_nothing_of_the_test_tree() -> None:
    """bench/ and devkit/ import devkit/, never tests/ (nor run a module of it)."""
    importers = [str(p.relative_to(ROOT))
                 for p in [*(ROOT / "bench").rglob("*.py"), *(ROOT / "devkit").rglob("*.py")]
                 if re.search(r"^\s*(from|import) tests\b|-m\", \"tests\.|\btests\.\w+:",
                              p.read_text(encoding="utf-8"), re.M)]
    assert importers == []
    assert re.search(r"^from devkit\.harness import", (ROOT / "bench" / "common.py").read_text(
        encoding="utf-8"), re.M)  # the rule sees a real import


def test_longest_first_names_groups_that_exist() -> None:
    """Each name of start_ups.LONGEST_FIRST is a test module, or a group conftest.py makes."""
    conftest = (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8")
    for name in LONGEST_FIRST:
        assert (ROOT / name).is_file() if "/" in name else f': "{name}",' in conftest, name
    assert group_rank(LONGEST_FIRST[0]) == 0
    assert group_rank("tests/units/test_harness.py") == len(LONGEST_FIRST)


def test_cpu_line_says_how_busy_the_machine_was() -> None:
    assert cpu_line((1000, 3000), (1300, 3100)) == (
        f"CPU busy 75% of {os.cpu_count()} cores during the run (the whole machine's: "
        "every process on it, not only the tests')")
    assert cpu_line(None, (1, 1)) is None
    busy, idle = cpu_sample() or (0, 0)
    assert busy > 0 and idle > 0
