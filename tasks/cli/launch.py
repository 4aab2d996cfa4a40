"""`./submit.py` and `./ocr_admin.py` run by any Python: the checkout's venv, or a clear word.

Runs first in `submit.py` and `ocr_admin.py`, before they import anything of the
service, so it uses the standard library alone. Their shebang finds whichever
`python3` is on PATH; when that Python lacks the service's packages (`redis`,
`celery`, ...), the command runs again with the checkout's `.venv/bin/python` (the
one `make run` installs into), as if it had been typed. Where that venv is missing, or
is the Python already running and still lacks them (`make run` still installing),
one line says so and the command exits 2 (EXIT_USAGE: nothing was sent), never a
ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

NEEDED = ("redis", "celery", "kombu", "pydantic", "fastapi")  # a few of requirements.txt
RELAUNCHED = "OCR_CLI_RELAUNCHED"  # set on the second start: never a third
EXIT_USAGE = 2  # tasks/cli/core.py's: bad command line or settings (nothing was sent)


def missing_packages() -> list[str]:
    """Which of NEEDED this Python cannot import (found without importing them)."""
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def in_venv(venv: Path) -> bool:
    """Whether the running Python is `venv`'s."""
    try:
        return Path(sys.prefix).resolve() == venv.resolve()
    except OSError:
        return False


def ensure_packages(script: str, argv: list[str] | None = None) -> None:
    """Go on when the service's packages import; else run `script` in the venv, or say why.

    `script` is the path the command was started as (`__file__`: the venv is the one
    beside it, in the checkout it was started from), `argv` its arguments.
    """
    missing = missing_packages()
    if not missing:
        return
    venv = Path(os.path.abspath(script)).parent / ".venv"
    python = venv / "bin" / "python"
    if python.exists() and not in_venv(venv) and not os.environ.get(RELAUNCHED):
        os.environ[RELAUNCHED] = "1"
        args = sys.argv[1:] if argv is None else argv
        os.execv(python, [str(python), script, *args])
    name = Path(script).name
    where = ("its packages are still being installed into .venv, or their install "
             "failed" if python.exists() else "there is no .venv yet")
    print(f"{name}: the service's Python packages are not installed ({', '.join(missing)} "
          f"missing: {where}). `make run` installs them; once it says `ready`, run "
          f"{name} again (or `.venv/bin/python {name} ...`).", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)
