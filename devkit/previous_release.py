"""The previous release of the service: its commit, and its tree written out from git.

The rolling-upgrade test (tests/queue/test_rolling_upgrade.py) runs this release's
worker and client beside the checkout's own on one Redis. The release is `COMMIT`, the
one place it is recorded: a release moves it to the commit that production runs once
the new one is deployed. Its tree is read from this checkout's git history (`git
archive`, so a full clone has it; no network), into a folder of its own:

    python -m devkit.previous_release DIR    # writes the tree into DIR, prints DIR

The old tree runs with this checkout's venv (the releases share requirements.txt's
range) and from its own top, as its Procfile says.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tarfile
from pathlib import Path

from devkit.harness import ROOT

COMMIT = "53e8f2e3c6eee34988d35aa6a27a0647d2fbbc5a"
# Its subject: a history whose commit ids were rewritten (a re-seeded mirror) still
# holds the release under it, and `resolve` finds it there.
SUBJECT = ("test_readyz_answers_while_redis_is_paused: wait for a readiness snapshot with "
           "the worker before the pause, and name the last answer if none comes")


class ReleaseMissing(RuntimeError):
    """The checkout's git history does not hold COMMIT (a shallow clone, or no git)."""


def resolve(commit: str = COMMIT, subject: str = SUBJECT) -> str:
    """`commit` where the history holds it, else the newest commit titled `subject`."""
    known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT,
                           capture_output=True, timeout=60)
    if known.returncode == 0:
        return commit
    titled = subprocess.run(["git", "log", "--all", "--format=%H %s", "--fixed-strings",
                             f"--grep={subject}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    return next((line.split(" ", 1)[0] for line in titled.stdout.splitlines()
                 if line.split(" ", 1)[1:] == [subject]), commit)


def materialize(dest: Path, commit: str | None = None) -> Path:
    """The previous release's tree (or `commit`'s) written into `dest` (created; empty)."""
    commit = commit or resolve()
    try:
        archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT,
                                 capture_output=True, check=True, timeout=120).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        told = getattr(error, "stderr", b"") or b""
        raise ReleaseMissing(
            f"git cannot read the previous release {commit} in {ROOT} ({error}: "
            f"{told.decode(errors='replace').strip()}); a shallow clone needs "
            f"`git fetch --unshallow`") from error
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="the folder to write the tree into")
    parser.add_argument("--commit", help=f"default: {COMMIT} (or the commit titled "
                        f"{SUBJECT!r})")
    args = parser.parse_args()
    print(materialize(args.dest, args.commit))


if __name__ == "__main__":
    main()
