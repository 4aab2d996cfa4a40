"""docs/architecture.md names every module of the service, and only modules that exist.

The rule the page states: the modules' table has one row per module. A module of a
folder is named, in backticks, in the module cell of a row whose floor cell names that
folder first, by its path below that folder (`holders.py` in a `tasks/broker/` row,
`vlm/base.py` in a `tasks/engines/` row). Any other module is named by its full path in
a row's module cell (`tasks/client.py`, `submit.py`). A package's `__init__.py` is its
folder's. The modules: every Python file of `tasks/` and `scripts/`, and those at the
checkout's top.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.harness import ROOT

PAGE = ROOT / "docs" / "architecture.md"
SPAN = re.compile(r"`([^`\n]+)`")
HEADER = "| floor | module | what it is |"


@dataclass(frozen=True)
class Row:
    """One row of the modules' table: its folder (None: a row of files), its names."""

    folder: str | None  # `tasks/broker/`: the floor cell's first span, when a folder
    paths: frozenset[str]  # the module cell's spans, in a row of files: `tasks/client.py`
    names: frozenset[str]  # the module cell's spans
    mentioned: frozenset[str]  # every span of the row


def rows(text: str) -> list[Row]:
    """The rows of the page's modules' table (the one under HEADER)."""
    lines = text.splitlines()
    start = lines.index(HEADER) + 2  # past the header and its rule
    found = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = line.split("|")
        first = SPAN.findall(cells[1])
        named = frozenset(SPAN.findall(cells[2]))
        folder = first[0] if first and first[0].endswith("/") else None
        found.append(Row(folder, frozenset() if folder else named, named,
                         frozenset(SPAN.findall(line))))
    return found


def modules(root: Path) -> list[str]:
    """The service's modules under `root`: tasks/, scripts/ and the top's, no `__init__`."""
    found = [*root.glob("*.py"), *(root / "tasks").rglob("*.py"),
             *(root / "scripts").rglob("*.py")]
    return sorted(str(p.relative_to(root)) for p in found
                  if p.name != "__init__.py" and "__pycache__" not in p.parts)


def unnamed(text: str, names: list[str]) -> list[str]:
    """The modules of `names` (paths from the checkout's root) the page does not name."""
    table = rows(text)
    missing = []
    for module in names:
        owners = [row for row in table if row.folder and module.startswith(row.folder)]
        if owners:  # the rows of the deepest folder that holds it
            deepest = max(len(r.folder or "") for r in owners)
            named = any(module[deepest:] in r.names for r in owners
                        if len(r.folder or "") == deepest)
        else:
            named = any(module in row.paths for row in table)
        if not named:
            missing.append(module)
    return missing


def unknown(text: str, root: Path) -> list[str]:
    """The `.py` names of the table that are no module: gone, renamed, or misplaced."""
    wrong = []
    table = rows(text)
    files = {Path(path).name for row in table for path in row.paths}
    for row in table:
        for name in sorted(n for n in row.mentioned if n.endswith(".py")):
            if row.folder:
                exists = (root / row.folder / name).is_file() or (root / name).is_file()
            else:  # a row of files may name one by its file's name
                exists = (root / name).is_file() or name in files
            if not exists:
                wrong.append(f"{name} (row {row.folder or sorted(row.paths)[0]})")
    return wrong


def test_the_page_names_every_module() -> None:
    missing = unnamed(PAGE.read_text(), modules(ROOT))
    assert not missing, ("docs/architecture.md's table does not name (by its path below "
                         f"its row's folder, in backticks): {missing}")


def test_the_page_names_only_modules_that_exist() -> None:
    wrong = unknown(PAGE.read_text(), ROOT)
    assert not wrong, f"docs/architecture.md names modules that do not exist: {wrong}"


def test_the_check_finds_a_module_missing_or_misplaced(tmp_path: Path) -> None:
    for name in ("submit.py", "tasks/client.py", "tasks/broker/lanes.py",
                 "tasks/broker/holders.py", "tasks/engines/vlm/base.py",
                 "tasks/engines/base.py", "tasks/broker/__init__.py", "scripts/run_api.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    page = "\n".join([
        "# Modules", "", HEADER, "|---|---|---|",
        "| command lines | `submit.py` | the command line |",
        "| clients | `tasks/client.py` | the client, `client.py` |",
        "| `tasks/broker/` | `lanes.py` | lanes, not `gone.py` |",
        "| `tasks/broker/` | `base.py` | another row's |",
        "| `tasks/engines/` | `base.py` | the contract |",
        "| `tasks/engines/` | `vlm/` | `base.py` in the wrong cell |",
        "", "`holders.py`, `scripts/run_api.py`: named outside the table"])
    assert modules(tmp_path) == ["scripts/run_api.py", "submit.py", "tasks/broker/holders.py",
                                 "tasks/broker/lanes.py", "tasks/client.py",
                                 "tasks/engines/base.py", "tasks/engines/vlm/base.py"]
    assert unnamed(page, modules(tmp_path)) == [
        "scripts/run_api.py", "tasks/broker/holders.py", "tasks/engines/vlm/base.py"]
    assert unknown(page, tmp_path) == ["gone.py (row tasks/broker/)", "base.py (row tasks/broker/)"]
