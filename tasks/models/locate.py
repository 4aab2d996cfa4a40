"""Where the configured model lives: OCR_MODEL resolved in OCR_MODEL_DIR, offline.

OCR_MODEL is a folder name in OCR_MODEL_DIR (`Qwen2-VL-2B-Instruct-4bit`), a hub repo
id (`mlx-community/Qwen2-VL-2B-Instruct-4bit`: the snapshot `refs/main` points to in the
hub cache layout), or a repo id at a revision (`org/name@<branch, tag or commit>`).
Nothing is ever downloaded. Used by the settings (any process), the mlx-vlm engine
and the loaded-model registrations (pool children) and the audit (pool child).
"""

from __future__ import annotations

import re
from pathlib import Path

_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*\Z")


def split_model(model: str) -> tuple[str, str | None]:
    """`org/name@rev` -> (`org/name`, `rev`); a folder name or bare repo id -> (it, None)."""
    name, sep, revision = model.partition("@")
    return (name, revision) if sep and "/" in name else (model, None)


def is_repo_id(model: str) -> bool:
    return "/" in split_model(model)[0]


def model_problem(model: str) -> str | None:
    """Why an OCR_MODEL value is invalid, or None."""
    name, revision = split_model(model)
    if "/" not in name:
        if model in (".", "..") or "\\" in model:
            return "a folder name must not be . or .. or hold a path separator"
        return None
    parts = name.split("/")
    if len(parts) != 2 or not all(_PART.match(p) and ".." not in p for p in parts):
        return "a hub repo id is org/name (letters, digits, . _ -)"
    if revision is not None and (not _REVISION.match(revision) or ".." in revision):
        return "a revision after @ is a branch, tag or commit hash"
    return None


def locate(model_dir: Path, model: str) -> Path | None:
    """The folder to load for `model`, or None when the directory does not have it.

    A folder name: `<model_dir>/<model>` (links resolved), when it exists. A repo id: the
    snapshot folder its ref (default `main`) or commit names in the hub cache.
    """
    name, revision = split_model(model)
    if "/" not in name:
        path = (model_dir / model).resolve()
        return path if path.exists() else None
    from tasks.models import _hub_cache as hub_cache  # huggingface_hub only where a repo id is used

    return hub_cache.resolve(model_dir.resolve(), name, revision)


def searched(model_dir: Path, model: str) -> str:
    """The path `locate` looked at, for error messages."""
    name, revision = split_model(model)
    if "/" not in name:
        return str(model_dir / model)
    from tasks.models import _hub_cache as hub_cache

    where = model_dir / hub_cache.folder_for(name)
    return f"{where} ({'refs/main' if revision is None else revision})"
