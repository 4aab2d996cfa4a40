"""`./submit.py` and `./ocr_admin.py` as the docs run them: by whatever `python3` is on PATH.

Executable in git; started by a Python without the service's packages they run again
in the checkout's `.venv`; with no venv, or one whose packages are not installed yet
(`make run` still installing), one line says so and the exit status is 2, never a
ModuleNotFoundError traceback. The Python on PATH is a bare venv of the tests' own
(no packages), so the test holds whatever the machine's `python3` has installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

SCRIPTS = ("submit.py", "ocr_admin.py")


@pytest.fixture(scope="module")
def bare_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH whose `python3` is a Python with no package of the service's."""
    bare = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True,
                   timeout=120)
    return f"{bare / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"


def checkout(base: Path, venv: Path | None) -> Path:
    """A checkout of links to this one's files, with `venv` as its `.venv` (None: none)."""
    made = base / "checkout"
    made.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".venv", "var", ".git"):
            (made / entry.name).symlink_to(entry)
    if venv is not None:
        (made / ".venv").symlink_to(venv)
    return made


def run(where: Path, script: str, path: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([f"./{script}", "--help"], cwd=where, capture_output=True,
                          text=True, timeout=120, env={**env, "PATH": path})


def test_the_scripts_are_executable_in_git() -> None:
    staged = subprocess.run(["git", "ls-files", "-s", *SCRIPTS], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    assert [line.split()[0] for line in staged.splitlines()] == ["100755", "100755"], staged
    assert all(os.access(ROOT / script, os.X_OK) for script in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_python_without_the_packages_runs_them_in_the_venv(script: str,
                                                             bare_path: str) -> None:
    done = run(ROOT, script, bare_path)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "Traceback" not in done.stderr


def test_without_a_venv_one_line_says_what_to_do(tmp_path: Path, bare_path: str) -> None:
    done = run(checkout(tmp_path, None), "submit.py", bare_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "there is no .venv yet" in done.stderr and "make run" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_while_make_run_installs_one_line_says_so(tmp_path: Path, bare_path: str) -> None:
    # The venv exists, its packages not yet: the re-run in it says so, once.
    installing = Path(bare_path.split(os.pathsep)[0]).parent
    done = run(checkout(tmp_path, installing), "submit.py", bare_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "still being installed" in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1
