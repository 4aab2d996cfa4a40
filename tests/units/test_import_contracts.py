"""The import contracts of `make lint` (pyproject.toml, `lint-imports`) hold the floors.

They hold on the tree as it is, and they break on a copy of it with one upward import
(a module of `tasks/records/`, the ground floor, importing the queue), one private
module imported from outside its package, devkit imported by the service, a task
module reaching into the broker, the broker importing Celery, or the metrics floor, the
API, the command lines or the console reading a broker module other than its reads.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True,
                          text=True, timeout=300)


def copy_of_the_tree(into: Path) -> Path:
    """The packages the contracts read, and the pyproject.toml that holds them."""
    for package in ("tasks", "scripts", "devkit"):
        shutil.copytree(ROOT / package, into / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static", "templates"))
    shutil.copy(ROOT / "pyproject.toml", into / "pyproject.toml")
    return into


def test_the_contracts_hold_on_the_tree() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("tasks/records/status.py", "import tasks.queue.routing", "The floors"),
    ("tasks/api/app.py", "import tasks.console", "The floors"),
    ("tasks/console/_views.py", "import tasks.api._service", "private to it"),
    ("tasks/state/keys.py", "import devkit", "imports nothing of devkit"),
    ("tasks/queue/job_task.py", "import tasks.broker.publishing", "Tasks are thin"),
    ("tasks/queue/page_tasks.py", "import tasks.broker.publishing", "Tasks are thin"),
    ("tasks/broker/qos.py", "import celery.worker.state", "imports nothing of Celery"),
    ("tasks/metrics/queue_depth.py", "import tasks.broker.fetching", "public reads alone"),
    ("tasks/api/tokens.py", "import tasks.broker.layout", "console see the broker"),
    ("tasks/console/_views.py", "import tasks.broker.publishing", "console see the broker"),
    ("tasks/cli/backup.py", "import tasks.broker.layout", "console see the broker"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str,
                                              broken: str) -> None:
    root = copy_of_the_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # noqa\n",
                    encoding="utf-8")
    done = lint_imports(root)
    assert done.returncode != 0, done.stdout
    verdicts = [re.sub(r" \(\d+ ignored imports?\)$", "", line)
                for line in done.stdout.splitlines()]
    verdicts = [v for v in verdicts if v.endswith((" KEPT", " BROKEN"))]
    assert [v for v in verdicts if v.endswith(" BROKEN")] == \
        [v for v in verdicts if broken in v and v.endswith(" BROKEN")] != [], verdicts
