"""Comments and docstrings of `tasks/`, `bench/` and `tests/` say what the code is and why.

A test's docstring says what the test holds. As the docs pages do
(tests/units/test_docs_names.py): no issue numbers (the word and a number, or a hash
and a number), no commit ids and no story of the work (its rounds, what came before a
change); what changed and when is git's. Read with `tokenize` (comments) and `ast`
(docstrings: strings standing alone as statements), so code and other strings are not.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ROOT
from tests.units.test_docs_names import COMMIT

FOLDERS = ("tasks", "bench", "tests")
# Issue numbers in any form, and the docs' words of the work's history (not "no longer"
# or "used to", which code comments use for what a running process sees).
HISTORY = re.compile(r"\b(?:issues? #?\d+|this round|before this (?:round|change))\b", re.I)
NUMBERED = re.compile(r"\(issues?\b|(?<![\w&/])#\d+\b", re.I)


def texts(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of each comment and docstring of the Python file `path`."""
    source = path.read_text()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        # A docstring, of a module, class or function, or after an assignment.
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and \
                isinstance(node.value.value, str):
            yield node.lineno, node.value.value


def history(path: Path) -> list[str]:
    """Where `path`'s comments and docstrings speak of issues or of the work's history."""
    found = []
    for line, text in texts(path):
        for match in (*HISTORY.finditer(text), *NUMBERED.finditer(text),
                      *COMMIT.finditer(text)):
            found.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0)!r}")
    return found


@pytest.mark.parametrize("folder", FOLDERS)
def test_comments_speak_of_the_code_not_its_history(folder: str) -> None:
    found = [hit for path in sorted((ROOT / folder).rglob("*.py")) for hit in history(path)]
    assert not found, "\n".join(found)


def test_the_check_finds_issue_numbers_and_history(tmp_path: Path) -> None:
    sample = ROOT / "tasks" / "__init__.py"  # a real path under ROOT for the report
    text = ('"""A module (issue 12)."""\n\nX = "#3 in a string is code"  # see #40\n\n\n'
            'def f() -> None:\n    """As it was before this change, at 3e99fc8."""\n')
    hits = [match.group(0) for _, doc in _texts_of(text, tmp_path)
            for match in (*HISTORY.finditer(doc), *NUMBERED.finditer(doc),
                          *COMMIT.finditer(doc))]
    assert hits == ["issue 12", "(issue", "#40", "before this change", "at 3e99fc8"]
    assert history(sample) == []


def _texts_of(source: str, folder: Path) -> list[tuple[int, str]]:
    path = folder / "sample.py"
    path.write_text(source)
    return sorted(texts(path))
