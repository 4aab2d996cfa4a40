"""No module of the service is over 400 lines: a busy module is split along its seams.

Every Python file of the checkout counts (tasks/, scripts/, integrations/, submit.py,
ocr_admin.py, worker_config.py, and any folder added later) but the tests and the
benchmarks, and what is not the project's source: virtual environments and caches
(folders starting with a dot), var/, models/, wheels/, build output.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.harness import ROOT

MAX_LINES = 400
NOT_SOURCE = {"tests", "bench", "var", "models", "wheels", "build", "__pycache__"}


def source_modules(root: Path) -> list[Path]:
    """The service's own Python files under `root`, tests and benchmarks excepted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in NOT_SOURCE and not d.startswith(".")
                   and not d.endswith(".egg-info")]
        found += [Path(folder, name) for name in files if name.endswith(".py")]
    return sorted(found)


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_is_over_400_lines() -> None:
    too_long = {str(p.relative_to(ROOT)): lines(p) for p in source_modules(ROOT)
                if lines(p) > MAX_LINES}
    assert too_long == {}, f"over {MAX_LINES} lines (split along their seams): {too_long}"


def test_every_kind_of_module_is_counted(tmp_path: Path) -> None:
    """The rule sees the service's folders and top-level scripts, and skips the rest."""
    for name in ("tasks/queue/big.py", "scripts/run.py", "integrations/x/plugin.py",
                 "submit.py", "tests/units/test_x.py", "bench/memory.py",
                 ".venv/lib/site.py", "integrations/x/build/lib/plugin.py",
                 "tasks/__pycache__/big.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n" * (MAX_LINES + 1))
    assert [str(p.relative_to(tmp_path)) for p in source_modules(tmp_path)] == [
        "integrations/x/plugin.py", "scripts/run.py", "submit.py", "tasks/queue/big.py"]
    assert all(lines(p) > MAX_LINES for p in source_modules(tmp_path))
    assert {str(p.relative_to(ROOT)) for p in source_modules(ROOT)} >= {
        "submit.py", "ocr_admin.py", "worker_config.py", "tasks/client.py",
        "scripts/supervise.py", "integrations/ocrmypdf/ocrmypdf_ocr_queue/plugin.py"}
