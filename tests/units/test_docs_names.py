"""The documentation names only modules, functions, classes and files that exist.

Read in README.md, docs/*.md and bench/README.md (code spans and code blocks alike):

- dotted names under `tasks.` (`tasks.lifecycle.inputs.check_callback_url`): the
  longest prefix that imports is a module, the rest its attributes;
- a module's short name and an attribute (`lang_id.PLAIN_LETTERS`,
  `auto_lang.script_probes`), where the short name is one module's of `tasks/`;
- a class of `tasks/` and an attribute (`OcrClient.status`, `JobEnder.claim`);
- the project's own paths (`tasks/lifecycle/inputs.py`, `scripts/run_api.py`,
  `tests/clients/test_docs_examples.py`): each a file or folder of the checkout.

Also: the pages speak of the product as it is, never of the work's history: no issue
numbers, no words of the work's rounds, no commit ids (a short or long hash in
backticks, in parentheses or after "at").
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         ROOT / "bench" / "README.md"]
DOTTED = re.compile(r"\btasks(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
SPAN = re.compile(r"`([^`\n]+)`")
SHORT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_]\w*)*)"
                   r"(?:\(.*\))?$")
PATH = re.compile(r"(?<![\w./-])((?:tasks|scripts|tests|bench|clients|integrations|deploy)"
                  r"/[A-Za-z0-9_./-]*[A-Za-z0-9_])")
HISTORY = re.compile(r"\b(?:issues? \d+|this round|before this (?:round|change)|"
                     r"no longer|used to)\b", re.I)
# A commit id: 7-40 hex digits, letters and digits both, in backticks, in parentheses or
# after "at", with or without a `^` or `~` suffix.
COMMIT = re.compile(r"(?:`|\(|\bat\s+)((?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40})"
                    r"[\^~]*(?=[`)\s.,;:]|$)")
# A name ending in a file's suffix is a file (`docs/tasks.md`, `_access.py`), not code.
SUFFIXES = {"md", "py", "txt", "json", "yaml", "yml", "toml", "html", "png", "js", "log"}
# Records of a job's result, written `pdf.removed` or `vlm.image_size`: JSON, not modules.
RESULT_FIELDS = {"pdf", "vlm", "hocr", "alto", "engine", "script", "timings", "error",
                 "callback", "input_url", "result_object"}


@cache
def modules() -> dict[str, list[str]]:
    """Every module of `tasks/` by its short name: `lang_id` -> [tasks.engines.lang_id]."""
    found: dict[str, list[str]] = {}
    for path in (ROOT / "tasks").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return found


@cache
def classes() -> dict[str, str]:
    """Every top-level class of `tasks/` by name -> its module (names used once only)."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    for names in modules().values():
        for name in names:
            path = ROOT / (name.replace(".", "/") + ".py")
            if not path.exists():
                path = ROOT / name.replace(".", "/") / "__init__.py"
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef):
                    if node.name in seen:
                        found.pop(node.name, None)
                    else:
                        found[node.name] = name
                    seen.add(node.name)
    return found


def resolve(module: str, attributes: list[str]) -> Any:
    """The object `module` then `attributes` name; AttributeError/ImportError if none.

    A dataclass's field without a default is no class attribute: found among its fields.
    """
    value: Any = importlib.import_module(module)
    for attribute in attributes:
        if not hasattr(value, attribute) and dataclasses.is_dataclass(value) and \
                attribute in {f.name for f in dataclasses.fields(value)}:
            return None
        value = getattr(value, attribute)
    return value


def dotted_exists(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        value: Any = module
        for attribute in parts[cut:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return False


def git_ignores(path: str) -> bool:
    """Whether git ignores `path` in this checkout: a file the reader makes, not ours."""
    return any(subprocess.run(["git", "check-ignore", "-q", "--no-index", name], cwd=ROOT,
                              check=False).returncode == 0
               for name in (path, f"{path}/"))  # a file, or a folder


def names_in(text: str) -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """The dotted `tasks.` names, (short name, attribute) pairs and paths of a page."""
    dotted = {m.group(0) for m in DOTTED.finditer(text)
              if m.group(0).rsplit(".", 1)[-1] not in SUFFIXES}
    pairs = set()
    for span in SPAN.findall(text):
        match = SHORT.match(span.strip())
        if match and not span.startswith("tasks.") and match.group(1) not in RESULT_FIELDS \
                and match.group(2).rsplit(".", 1)[-1] not in SUFFIXES:
            pairs.add((match.group(1), match.group(2)))
    paths = {m.group(1) for m in PATH.finditer(text)}
    return dotted, pairs, paths


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_a_page_names_only_what_exists(page: Path) -> None:
    text = page.read_text()
    dotted, pairs, paths = names_in(text)
    wrong = [name for name in sorted(dotted) if not dotted_exists(name)]
    for first, rest in sorted(pairs):
        attributes = rest.split(".")
        if first in modules() and len(modules()[first]) == 1:
            where = modules()[first][0]
        elif first in classes():
            where, attributes = classes()[first], [first, *attributes]
        else:
            continue  # not one of ours: `app.send_task`, `page.get_text`, a file name
        try:
            resolve(where, attributes)
        except (ImportError, AttributeError):
            wrong.append(f"{first}.{rest} (in {where})")
    for path in sorted(paths):
        if "*" in path or "<" in path:
            continue
        if not (ROOT / path).exists() and not (ROOT / "tests" / path).exists() \
                and not git_ignores(path):
            # (testing.md names test files from tests/; a git-ignored path is one the
            # operator makes, such as a kit's secrets or certificates)
            wrong.append(path)
    assert not wrong, f"{page.name} names what does not exist: {wrong}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_a_page_speaks_of_the_product_not_its_history(page: Path) -> None:
    text = page.read_text()
    found = [match.group(0) for match in (*HISTORY.finditer(text), *COMMIT.finditer(text))]
    assert not found, f"{page.name}: {found}"


def test_the_history_check_finds_commit_ids() -> None:
    text = ("| case | before (3e99fc8) | now |\nmeasured at\n28c87ba: 901 tests; `44b391a^`\n"
            "not `deadbeef` (no digit), `0123456` (no letter), main=a1b2c3d4, a sha256 "
            f"`{'ab12' * 16}`")
    assert [m.group(1) for m in COMMIT.finditer(text)] == ["3e99fc8", "28c87ba", "44b391a"]


def test_the_checks_catch_a_wrong_name() -> None:
    dotted, pairs, paths = names_in("`tasks.pipeline.inputs.check_callback_url(url)` and "
                                    "`lang_id.no_such_thing` in tasks/lifecycle/nothing.py")
    assert dotted == {"tasks.pipeline.inputs.check_callback_url"}
    assert not dotted_exists("tasks.pipeline.inputs.check_callback_url")
    assert dotted_exists("tasks.lifecycle.inputs.check_callback_url")
    assert ("lang_id", "no_such_thing") in pairs and paths == {"tasks/lifecycle/nothing.py"}
    with pytest.raises(AttributeError):
        resolve(modules()["lang_id"][0], ["no_such_thing"])
    assert classes()["OcrClient"] == "tasks.client"
