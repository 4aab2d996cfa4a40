"""Removal from the model directory, under the audit's safety rules.

Only direct entries of the (resolved) model directory are removed; a link is removed
as a link, never its target; in a hub repo only partial blobs and unreferenced
revisions are removed unless the repo goes whole. Runs in the worker pool child that
runs `ocr.audit_models`, while it holds the prune lock.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tasks.errors import OcrError, PathNotAllowed, PruneFailed
from tasks.models import _hub_cache as hub_cache
from tasks.models.decisions import Decision


def remove_entry(model_dir: Path, name: str) -> None:
    """Remove one entry of the resolved model directory; links as links.

    Raises PathNotAllowed for a name that is not a direct entry, OSError when removal
    fails.
    """
    if name in ("", ".", "..") or "/" in name or (os.sep in name) \
            or (os.altsep is not None and os.altsep in name):
        raise PathNotAllowed(f"{name[:80]!r} is not an entry of the model directory")
    path = model_dir / name
    if Path(os.path.abspath(path)).parent != model_dir:
        raise PathNotAllowed(f"{name[:80]!r} is outside the model directory")
    mode = path.lstat().st_mode
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)  # refuses a link swapped in meanwhile; never follows links
    else:
        os.unlink(path)  # a file, or a symbolic link (its target is not touched)


def apply(decision: Decision, model_dir: Path, errors: list[dict[str, Any]]) -> Decision:
    if not decision.prune:
        return decision
    try:
        if decision.scope == "entry":
            remove_entry(model_dir, decision.folder or decision.name)
            if hub_cache.is_hub_folder(decision.folder or decision.name):
                _remove_locks(model_dir, decision.folder)
        elif decision.scope == "incomplete":
            for rel in decision.parts:
                remove_partial_blob(model_dir, rel)
        else:
            remove_revisions(model_dir, decision.folder, decision.parts)
    except (OSError, OcrError) as exc:
        message = exc.message if isinstance(exc, OcrError) else \
            f"{decision.name}: {exc.strerror or type(exc).__name__}"
        errors.append({**PruneFailed(message).to_dict(), "name": decision.name})
        return replace(decision, prune=False, reasons=("remove_failed",),
                       detail=f"removal failed: {message}")
    return decision


def remove_partial_blob(model_dir: Path, rel: str) -> None:
    """Remove `<hub repo>/blobs/<name>.incomplete` of the model directory, nothing else."""
    parts = rel.split("/")
    if len(parts) != 3 or parts[1] != "blobs" or not hub_cache.is_hub_folder(parts[0]) \
            or not parts[2].endswith(hub_cache.INCOMPLETE_SUFFIX) \
            or any(p in ("", ".", "..") for p in parts):
        raise PathNotAllowed(f"{rel[:120]!r} is not a partial blob of a hub repo")
    path = model_dir / rel
    if (model_dir / parts[0]).is_symlink() or (model_dir / parts[0] / "blobs").is_symlink():
        raise PathNotAllowed(f"{rel[:120]!r} lies behind a symbolic link")
    if not stat.S_ISREG(path.lstat().st_mode):
        raise PathNotAllowed(f"{rel[:120]!r} is not a regular file")
    os.unlink(path)


def remove_revisions(model_dir: Path, folder: str, commits: Sequence[str]) -> None:
    """Remove snapshots of one hub repo with the hub's `delete_revisions`.

    Never its last revision (that would remove the repo). OSError when a snapshot is
    still there.
    """
    repo = next((r for r in hub_cache.scan(model_dir) if r.folder == folder), None)
    if repo is None or (model_dir / folder).is_symlink():
        raise PathNotAllowed(f"{folder!r} is not a hub repo of the model directory")
    present = {r.commit for r in repo.revisions}
    gone = [c for c in commits if c in present]
    if len(gone) >= len(present):
        raise PathNotAllowed(f"{folder}: refusing to remove every revision as revisions")
    if gone:
        hub_cache.delete_revisions(model_dir, gone)
    left = [c for c in gone if (repo.path / "snapshots" / c).exists()]
    if left:
        raise OSError(13, "a snapshot could not be removed", f"{folder}/snapshots/{left[0]}")


def _remove_locks(model_dir: Path, folder: str) -> None:
    locks = model_dir / hub_cache.LOCKS_DIR / folder
    if locks.is_dir() and not locks.is_symlink():
        shutil.rmtree(locks)
